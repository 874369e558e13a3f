//! Why a series is not used. A skipped series never aborts the study: its reason lands,
//! as the text [`SkipReason`] displays, in the run record, the SR and the status page, so
//! each text is part of the node's output and stays as it is.

use super::header::SliceHeaderError;

/// Largest series the model accepts (`docs/prima-inference-spec.md` §8.1): 5000 patches.
pub const MAX_PATCHES: usize = 5000;

/// Voxels of one decoded series (f64 each, for ITK parity): 4 GiB, eight times a large
/// 512×512×256 brain series, so a header claiming more is refused, not allocated.
pub const MAX_VOLUME_VALUES: usize = 1 << 29;

/// A series that cannot be used. It is skipped and reported; it never aborts the study.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesSkip {
    /// Folder name (file-name mode) or SeriesInstanceUID.
    pub key: String,
    pub series_instance_uid: Option<String>,
    /// The volume of the series this is about ("" for the whole series).
    pub volume: String,
    /// Images it holds (0 when not known).
    pub images: usize,
    /// The [`SkipReason`]'s text, as the outputs carry it.
    pub reason: String,
}

impl SeriesSkip {
    pub fn new(key: String, series_instance_uid: Option<String>, reason: &SkipReason) -> Self {
        SeriesSkip {
            key,
            series_instance_uid,
            volume: String::new(),
            images: 0,
            reason: reason.to_string(),
        }
    }

    /// About one volume of the series (`label`, `images` images): the reason names it.
    pub fn volume(mut self, label: &str, images: usize) -> Self {
        self.volume = label.to_string();
        self.images = images;
        if !label.is_empty() {
            self.reason = format!("volume {label} ({images} images): {}", self.reason);
        }
        self
    }
}

/// One variant per way a series fails to become model input, from the folder scan to
/// token selection.
#[derive(Debug, thiserror::Error)]
pub enum SkipReason {
    #[error("no DICOM image in folder")]
    NoImageInFolder,
    #[error("an instance is not readable as an image: {0}")]
    UnreadableInstance(#[source] SliceHeaderError),
    #[error("no slices")]
    NoSlices,
    #[error("colour images are not supported (SamplesPerPixel {samples_per_pixel})")]
    Colour { samples_per_pixel: u16 },
    #[error("{slices} slices give {patches} patches, more than the model's {max}", max = MAX_PATCHES)]
    TooManySlices { slices: usize, patches: usize },
    #[error("missing ImageOrientationPatient")]
    MissingOrientation,
    #[error("missing ImagePositionPatient")]
    MissingPosition,
    #[error("missing PixelSpacing")]
    MissingPixelSpacing,
    #[error("missing ImagePositionPatient on some slices")]
    PositionMissingOnSomeSlices,
    #[error("degenerate ImageOrientationPatient")]
    DegenerateOrientation,
    #[error("invalid PixelSpacing {0:?}")]
    InvalidPixelSpacing([f64; 2]),
    #[error("{w}×{h}×{n} voxels is more than a series may have ({max})", max = MAX_VOLUME_VALUES)]
    TooManyVoxels { w: usize, h: usize, n: usize },
    #[error("cannot allocate a {w}×{h}×{n} volume")]
    Allocation {
        w: usize,
        h: usize,
        n: usize,
        source: std::collections::TryReserveError,
    },
    #[error("cannot read {file}: {source}")]
    Unreadable {
        file: String,
        // Boxed: the reader's error is large, and every stage returns this type.
        source: Box<dicom_object::ReadError>,
    },
    #[error("RLE fragment header claims more than 15 segments")]
    RleSegments,
    #[error("pixel data decoder failed on malformed data ({transfer_syntax})")]
    DecoderPanicked { transfer_syntax: String },
    #[error("cannot decode pixel data ({transfer_syntax}): {source}")]
    Decode {
        transfer_syntax: String,
        source: dicom_pixeldata::Error,
    },
    #[error("decoded frame size differs from the header")]
    FrameSize,
    #[error("pixel data: {0}")]
    FrameData(#[source] dicom_pixeldata::Error),
    #[error("pixel data holds {have} bytes, {need} needed")]
    PixelDataShort { have: usize, need: usize },
    #[error("unsupported BitsAllocated {0}")]
    BitsAllocated(u16),
    #[error("{patches} patches, more than the model's {max}", max = MAX_PATCHES)]
    TooManyPatches { patches: usize },
    #[error("cancelled")]
    Cancelled,
    #[error("{0}")]
    NotUsed(super::volumes::NotUsed),
    #[error("series was not prepared")]
    NotPrepared,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The texts are output (run record, SR, status page): pinned here, word for word.
    #[test]
    fn reasons_read_as_the_outputs_carry_them() {
        let cases: Vec<(SkipReason, &str)> = vec![
            (SkipReason::NoImageInFolder, "no DICOM image in folder"),
            (SkipReason::NoSlices, "no slices"),
            (
                SkipReason::Colour {
                    samples_per_pixel: 3,
                },
                "colour images are not supported (SamplesPerPixel 3)",
            ),
            (
                SkipReason::TooManySlices {
                    slices: 400,
                    patches: 6400,
                },
                "400 slices give 6400 patches, more than the model's 5000",
            ),
            (
                SkipReason::MissingOrientation,
                "missing ImageOrientationPatient",
            ),
            (SkipReason::MissingPosition, "missing ImagePositionPatient"),
            (SkipReason::MissingPixelSpacing, "missing PixelSpacing"),
            (
                SkipReason::PositionMissingOnSomeSlices,
                "missing ImagePositionPatient on some slices",
            ),
            (
                SkipReason::DegenerateOrientation,
                "degenerate ImageOrientationPatient",
            ),
            (
                SkipReason::InvalidPixelSpacing([0.0, -1.5]),
                "invalid PixelSpacing [0.0, -1.5]",
            ),
            (
                SkipReason::TooManyVoxels {
                    w: 4096,
                    h: 4096,
                    n: 64,
                },
                "4096×4096×64 voxels is more than a series may have (536870912)",
            ),
            (
                SkipReason::RleSegments,
                "RLE fragment header claims more than 15 segments",
            ),
            (
                SkipReason::DecoderPanicked {
                    transfer_syntax: "1.2.840.10008.1.2.5".into(),
                },
                "pixel data decoder failed on malformed data (1.2.840.10008.1.2.5)",
            ),
            (
                SkipReason::FrameSize,
                "decoded frame size differs from the header",
            ),
            (
                SkipReason::PixelDataShort { have: 10, need: 32 },
                "pixel data holds 10 bytes, 32 needed",
            ),
            (
                SkipReason::BitsAllocated(12),
                "unsupported BitsAllocated 12",
            ),
            (
                SkipReason::TooManyPatches { patches: 5120 },
                "5120 patches, more than the model's 5000",
            ),
            (
                SkipReason::UnreadableInstance(SliceHeaderError::NoRows),
                "an instance is not readable as an image: no Rows (not an image)",
            ),
            (
                SkipReason::UnreadableInstance(SliceHeaderError::TooManyFrames { frames: 99999 }),
                "an instance is not readable as an image: NumberOfFrames 99999 is more than \
                 the 16384 an instance may have",
            ),
            (
                SkipReason::UnreadableInstance(SliceHeaderError::FramesExceedFile {
                    frames: 64,
                    needed: 8192,
                    file_len: 1000,
                }),
                "an instance is not readable as an image: NumberOfFrames 64 needs at least \
                 8192 bytes of pixel data; the file has 1000",
            ),
            (SkipReason::Cancelled, "cancelled"),
            (SkipReason::NotPrepared, "series was not prepared"),
        ];
        for (reason, text) in cases {
            assert_eq!(reason.to_string(), text);
        }
        let source = Vec::<u8>::new().try_reserve_exact(usize::MAX).unwrap_err();
        let r = SkipReason::Allocation {
            w: 1,
            h: 2,
            n: 3,
            source,
        };
        assert_eq!(r.to_string(), "cannot allocate a 1×2×3 volume");
    }
}
