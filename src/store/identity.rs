//! Instance identity: the hash that tells a re-sent instance from a replacement, whatever
//! transfer syntax it came in.
//!
//! The identity is BLAKE3 over a canonical form of the decoded data set:
//!
//! - every attribute except the ones that describe the *encoding* rather than the image
//!   ([`encoding_attribute`]), in tag order, as its decoded value written little endian
//!   (text as decoded by dicom-rs, multiple values joined with `\`), nested sequences
//!   item by item. Explicit or implicit VR, big or little endian, defined or undefined
//!   lengths do not show; every other attribute does, so a corrected PatientName, a
//!   changed SeriesDescription or window are a new identity (a replacement);
//! - the pixel data decoded (native, RLE, JPEG lossless, J2K, …), each sample little
//!   endian in its Bits Allocated, its bits above Bits Stored cleared (J2K keeps only the
//!   stored bits; native files may carry anything there), colour samples interleaved;
//! - whether the image went through lossy compression ([`lossy`]): a lossy transfer
//!   syntax, or Lossy Image Compression "01". Lossy re-encodings almost always change the
//!   pixels too, but a flat image or a lucky quantiser could round-trip exactly: the
//!   marker makes "lossy" a change by itself, so an image that was lossy-compressed once
//!   is never taken for its lossless original.
//!
//! A transfer syntax that *may* be lossy (J2K 4.91, HTJ2K 4.203, …) counts as lossy even
//! if the sender happened to encode it losslessly: a needless re-run is the safe mistake.
//! Private elements read from implicit VR have no VR: dicom-rs keeps their bytes, which
//! equal the explicit encoding's value except for non-ASCII text in a non-UTF-8 character
//! set; such an instance re-sent in the other VR encoding counts as replaced (re-run).
//!
//! Decoding runs third-party codecs on a peer's bytes inside the node, so it is fenced:
//! the sizes a codestream claims are checked against Rows/Columns before a decoder
//! allocates from them, RLE segment counts are bounded, the decoded size is capped, and a
//! panicking decoder is caught. When the identity cannot be computed
//! ([`IdentityError`]) the caller records the byte hash instead: such an instance is
//! "unchanged" only when re-sent byte for byte.

use std::borrow::Cow;
use std::fs::File;
use std::os::unix::fs::FileExt;

use dicom_core::value::{PrimitiveValue, Value};
use dicom_core::Tag;
use dicom_dictionary_std::{tags, uids};
use dicom_object::file::ReadPreamble;
use dicom_object::{InMemDicomObject, OpenFileOptions};
use dicom_pixeldata::{PixelDecoder, PlanarConfiguration};
use tracing::warn;

/// How an identity is tagged among recorded content hashes (next to
/// [`crate::store::hash::CONTENT_HASH_PREFIX`], the byte hash); the number is the
/// canonical form's version: changing the form needs a new one.
pub const IDENTITY_PREFIX: &str = "identity1:";

/// Larger files are not parsed at reception (their byte hash is recorded): the whole
/// file is held in memory to parse it. 40× a 512×512 16-bit slice; an Enhanced MR of 200
/// such frames is 100 MiB.
pub const MAX_IDENTITY_FILE_BYTES: u64 = 256 * 1024 * 1024;

/// Decoded pixel data larger than this is not decoded at reception.
pub const MAX_DECODED_BYTES: u64 = 512 * 1024 * 1024;

/// Why an instance's identity could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("file of {0} bytes is larger than the {MAX_IDENTITY_FILE_BYTES} parsed at reception")]
    FileTooLarge(u64),
    #[error("cannot read the file: {0}")]
    Read(#[source] std::io::Error),
    #[error("data set does not parse: {0}")]
    Parse(String),
    #[error(
        "pixel data would decode to {0} bytes, over the {MAX_DECODED_BYTES} decoded at reception"
    )]
    DecodedTooLarge(u64),
    #[error("an RLE fragment declares more than 15 segments")]
    RleSegments,
    #[error("a {codec} codestream claims {width}x{height}x{components}, not the {columns}x{rows}x{samples} of the data set")]
    CodestreamSize {
        codec: &'static str,
        width: u32,
        height: u32,
        components: u32,
        columns: u32,
        rows: u32,
        samples: u32,
    },
    #[error("pixel data decoder failed ({transfer_syntax}): {message}")]
    Decode {
        transfer_syntax: String,
        message: String,
    },
    #[error("pixel data decoder panicked ({transfer_syntax})")]
    DecoderPanicked { transfer_syntax: String },
    #[error("Bits Allocated {0} is not 1, 8, 16 or 32")]
    BitsAllocated(u16),
}

/// The identity of a Part-10 file (preamble, meta group, data set) held in memory.
///
/// Only for files the length guard passed
/// ([`crate::store::length_guard::check_element_lengths`], run by `read_header`): the
/// parser allocates what element lengths claim.
pub fn identity(file: &[u8]) -> Result<String, IdentityError> {
    let obj = OpenFileOptions::new()
        .read_preamble(ReadPreamble::Always)
        .from_reader(file)
        .map_err(|e| IdentityError::Parse(e.to_string()))?;
    let ts = obj
        .meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .to_string();
    let mut h = Canonical::default();
    h.bytes(b"prima-node instance identity 1\0");
    h.bytes(&[u8::from(lossy(&ts, &obj))]);
    h.item(&obj, true);
    if obj.element_opt(tags::PIXEL_DATA).ok().flatten().is_some() {
        let pixels = decoded_pixels(&obj, &ts)?;
        h.bytes(b"\x01PX");
        h.value(pixels.photometric.as_bytes());
        h.value(&pixels.samples);
    }
    Ok(format!("{IDENTITY_PREFIX}{}", h.0.finalize().to_hex()))
}

/// [`identity`] of a file read through its descriptor (position-independent reads, so
/// the file may be renamed meanwhile).
pub fn identity_of_file(file: &File) -> Result<String, IdentityError> {
    let len = file.metadata().map_err(IdentityError::Read)?.len();
    if len > MAX_IDENTITY_FILE_BYTES {
        return Err(IdentityError::FileTooLarge(len));
    }
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, 0)
        .map_err(IdentityError::Read)?;
    identity(&buf)
}

/// The content hash to record for a received file: its identity, or where that cannot
/// be computed its byte hash (`byte_hash`, [`crate::store::hash::content_hash`] of the data
/// set), with the reason logged.
pub fn identity_or_bytes(
    identity: Result<String, IdentityError>,
    byte_hash: impl FnOnce() -> String,
) -> String {
    identity.unwrap_or_else(|reason| {
        warn!(%reason, "instance identity not computed: recording its byte hash (a re-send will count as unchanged only byte for byte)");
        byte_hash()
    })
}

/// [`identity`] of a file already in memory, within the size parsed at reception.
pub fn identity_of_bytes(file: &[u8]) -> Result<String, IdentityError> {
    if file.len() as u64 > MAX_IDENTITY_FILE_BYTES {
        return Err(IdentityError::FileTooLarge(file.len() as u64));
    }
    identity(file)
}

/// Transfer syntaxes whose encoding loses nothing. Any other, unknown ones included,
/// counts as lossy: a transfer syntax that only *allows* loss cannot be told from one
/// that used it without decoding and comparing with an original the node does not have.
const LOSSLESS_TRANSFER_SYNTAXES: [&str; 16] = [
    uids::IMPLICIT_VR_LITTLE_ENDIAN,
    uids::EXPLICIT_VR_LITTLE_ENDIAN,
    uids::ENCAPSULATED_UNCOMPRESSED_EXPLICIT_VR_LITTLE_ENDIAN,
    uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    // Retired ones by number (their constants are deprecated): Explicit VR Big Endian,
    // JPEG lossless processes 15, 28 and 29.
    "1.2.840.10008.1.2.2",
    uids::JPEG_LOSSLESS,
    "1.2.840.10008.1.2.4.58",
    "1.2.840.10008.1.2.4.65",
    "1.2.840.10008.1.2.4.66",
    uids::JPEG_LOSSLESS_SV1,
    uids::JPEGLS_LOSSLESS,
    uids::JPEG2000_LOSSLESS,
    uids::JPEG2000MC_LOSSLESS,
    uids::HTJ2K_LOSSLESS,
    uids::HTJ2K_LOSSLESS_RPCL,
    uids::RLE_LOSSLESS,
];

/// Whether the image went through lossy compression: its transfer syntax may lose, or
/// Lossy Image Compression (0028,2110) says "01" (which must stay once set, PS3.3
/// C.7.6.1.1.5, also after decompression).
pub fn lossy(transfer_syntax: &str, obj: &InMemDicomObject) -> bool {
    let marked = obj
        .element_opt(tags::LOSSY_IMAGE_COMPRESSION)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok().map(|s| s.trim().to_string()))
        .is_some_and(|s| s == "01");
    marked || !LOSSLESS_TRANSFER_SYNTAXES.contains(&transfer_syntax)
}

/// Attributes that describe how the data set was encoded, not what it says: left out of
/// the identity. `top`: in the data set itself, not in a sequence item.
pub fn encoding_attribute(tag: Tag, top: bool) -> bool {
    // Group lengths (their values depend on explicit/implicit VR), the meta group, the
    // trailing padding, digital signatures (they sign one encoding's bytes).
    if tag.element() == 0x0000
        || tag.group() == 0x0002
        || tag == Tag(0xFFFC, 0xFFFC)
        || tag == Tag(0xFFFA, 0xFFFA)
    {
        return true;
    }
    top && [
        // Hashed decoded, separately.
        tags::PIXEL_DATA,
        // Offsets into one encapsulation.
        tags::EXTENDED_OFFSET_TABLE,
        tags::EXTENDED_OFFSET_TABLE_LENGTHS,
        Tag(0x7FE0, 0x0003),
        // The decoded samples are hashed interleaved, and with the photometric
        // interpretation the decoder produced (J2K's YBR_RCT decodes to RGB).
        tags::PLANAR_CONFIGURATION,
        tags::PHOTOMETRIC_INTERPRETATION,
        // DCMTK's compressors note the compression here, lossless ones too.
        tags::DERIVATION_DESCRIPTION,
    ]
    .contains(&tag)
}

/// BLAKE3 over an unambiguous stream: every variable-length piece carries its length.
#[derive(Default)]
struct Canonical(blake3::Hasher);

impl Canonical {
    fn bytes(&mut self, b: &[u8]) {
        self.0.update(b);
    }

    fn value(&mut self, b: &[u8]) {
        self.0.update(&(b.len() as u64).to_le_bytes());
        self.0.update(b);
    }

    fn item(&mut self, obj: &InMemDicomObject, top: bool) {
        for e in obj.iter() {
            let tag = e.header().tag;
            if encoding_attribute(tag, top) {
                continue;
            }
            self.bytes(&tag.group().to_le_bytes());
            self.bytes(&tag.element().to_le_bytes());
            match e.value() {
                Value::Primitive(v) => {
                    self.bytes(b"P");
                    self.value(&le_bytes(v));
                }
                Value::Sequence(s) => {
                    self.bytes(b"S");
                    self.bytes(&(s.items().len() as u64).to_le_bytes());
                    for i in s.items() {
                        self.bytes(b"I");
                        self.item(i, false);
                        self.bytes(b"E");
                    }
                }
                // Encapsulated data outside Pixel Data: only its fragments mean anything.
                Value::PixelSequence(p) => {
                    self.bytes(b"F");
                    self.bytes(&(p.fragments().len() as u64).to_le_bytes());
                    for f in p.fragments() {
                        self.value(f);
                    }
                }
            }
        }
        self.bytes(b"\0END");
    }
}

/// A value as written little endian: what explicit and implicit VR little endian both
/// carry, and what big endian decodes to.
fn le_bytes(v: &PrimitiveValue) -> Cow<'_, [u8]> {
    fn le<T: Copy, const N: usize>(v: &[T], f: impl Fn(T) -> [u8; N]) -> Cow<'static, [u8]> {
        Cow::Owned(v.iter().flat_map(|x| f(*x)).collect())
    }
    match v {
        PrimitiveValue::Empty => Cow::Borrowed(&[]),
        PrimitiveValue::U8(b) => Cow::Borrowed(b),
        PrimitiveValue::Str(s) => Cow::Borrowed(s.as_bytes()),
        PrimitiveValue::Strs(s) => Cow::Owned(s.join("\\").into_bytes()),
        PrimitiveValue::Tags(t) => le(t, |t| {
            let [a, b] = t.group().to_le_bytes();
            let [c, d] = t.element().to_le_bytes();
            [a, b, c, d]
        }),
        PrimitiveValue::I16(x) => le(x, i16::to_le_bytes),
        PrimitiveValue::U16(x) => le(x, u16::to_le_bytes),
        PrimitiveValue::I32(x) => le(x, i32::to_le_bytes),
        PrimitiveValue::U32(x) => le(x, u32::to_le_bytes),
        PrimitiveValue::I64(x) => le(x, i64::to_le_bytes),
        PrimitiveValue::U64(x) => le(x, u64::to_le_bytes),
        PrimitiveValue::F32(x) => le(x, f32::to_le_bytes),
        PrimitiveValue::F64(x) => le(x, f64::to_le_bytes),
        // The parser keeps dates and times as text; built objects may not.
        PrimitiveValue::Date(_) | PrimitiveValue::Time(_) | PrimitiveValue::DateTime(_) => {
            Cow::Owned(v.to_str().into_owned().into_bytes())
        }
    }
}

/// Pixel data in canonical form.
struct CanonicalPixels {
    photometric: String,
    samples: Vec<u8>,
}

fn u32_of(obj: &InMemDicomObject, tag: Tag) -> Option<u32> {
    obj.element_opt(tag).ok().flatten()?.to_int::<u32>().ok()
}

fn decoded_pixels(
    obj: &dicom_object::DefaultDicomObject,
    ts: &str,
) -> Result<CanonicalPixels, IdentityError> {
    let rows = u32_of(obj, tags::ROWS).unwrap_or(0);
    let columns = u32_of(obj, tags::COLUMNS).unwrap_or(0);
    let samples = u32_of(obj, tags::SAMPLES_PER_PIXEL).unwrap_or(1);
    let frames = obj
        .element_opt(tags::NUMBER_OF_FRAMES)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()))
        .unwrap_or(1);
    let bits = u32_of(obj, tags::BITS_ALLOCATED).unwrap_or(0);
    let decoded_size = u64::from(rows)
        .saturating_mul(u64::from(columns))
        .saturating_mul(u64::from(samples))
        .saturating_mul(frames)
        .saturating_mul(u64::from(bits.div_ceil(8).max(1)));
    if decoded_size > MAX_DECODED_BYTES {
        return Err(IdentityError::DecodedTooLarge(decoded_size));
    }
    if let Some(fragments) = obj
        .element_opt(tags::PIXEL_DATA)
        .ok()
        .flatten()
        .and_then(|e| e.value().fragments())
    {
        check_fragments(ts, fragments, [columns, rows, samples])?;
    }
    let decoded =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| obj.decode_pixel_data()))
            .map_err(|_| IdentityError::DecoderPanicked {
                transfer_syntax: ts.to_string(),
            })?
            .map_err(|e| IdentityError::Decode {
                transfer_syntax: ts.to_string(),
                message: e.to_string(),
            })?;
    let planar = decoded.planar_configuration() == PlanarConfiguration::PixelFirst;
    let samples_per_pixel = usize::from(decoded.samples_per_pixel());
    let pixels_per_frame = decoded.rows() as usize * decoded.columns() as usize;
    let bits_allocated = decoded.bits_allocated();
    let bits_stored = decoded.bits_stored();
    let photometric = decoded.photometric_interpretation().as_str().to_string();
    let data = decoded.data();
    let expected = (decoded_size as usize).min(data.len());
    let mut out = data[..expected].to_vec();
    clear_unstored_bits(&mut out, bits_allocated, bits_stored)?;
    if planar && samples_per_pixel > 1 {
        let bytes = usize::from(bits_allocated.div_ceil(8).max(1));
        out = interleave(&out, pixels_per_frame, samples_per_pixel, bytes);
    }
    Ok(CanonicalPixels {
        photometric,
        samples: out,
    })
}

/// Clear the bits above Bits Stored in each little-endian sample.
pub fn clear_unstored_bits(
    data: &mut [u8],
    bits_allocated: u16,
    bits_stored: u16,
) -> Result<(), IdentityError> {
    if bits_allocated == 1 {
        return Ok(());
    }
    if ![8, 16, 32].contains(&bits_allocated) {
        return Err(IdentityError::BitsAllocated(bits_allocated));
    }
    if bits_stored == 0 || bits_stored >= bits_allocated {
        return Ok(());
    }
    let mask = (1u64 << bits_stored) - 1;
    let width = usize::from(bits_allocated / 8);
    for s in data.chunks_exact_mut(width) {
        for (i, b) in s.iter_mut().enumerate() {
            *b &= (mask >> (8 * i)) as u8;
        }
    }
    Ok(())
}

/// Planar (RRR…GGG…BBB…) frames to interleaved (RGBRGB…).
fn interleave(data: &[u8], pixels: usize, samples: usize, bytes: usize) -> Vec<u8> {
    let frame = pixels * samples * bytes;
    if frame == 0 {
        return data.to_vec();
    }
    let mut out = Vec::with_capacity(data.len());
    for f in data.chunks(frame) {
        if f.len() < frame {
            out.extend_from_slice(f);
            break;
        }
        for p in 0..pixels {
            for s in 0..samples {
                let at = (s * pixels + p) * bytes;
                out.extend_from_slice(&f[at..at + bytes]);
            }
        }
    }
    out
}

/// Refuse fragments a decoder would allocate for beyond what the data set declares.
///
/// The RLE decoder allocates its segment table from the header's count before checking
/// it (PS3.5 G.3.1 allows 15); the JPEG and J2K decoders allocate the image their
/// codestream header claims, which a 1 KiB fragment can make gigabytes. dicom-rs checks
/// its own output buffer against Rows/Columns, but only after the codec allocated.
pub fn check_fragments(
    ts: &str,
    fragments: &[Vec<u8>],
    [columns, rows, samples]: [u32; 3],
) -> Result<(), IdentityError> {
    let size_error =
        |codec, (width, height, components): (u32, u32, u32)| IdentityError::CodestreamSize {
            codec,
            width,
            height,
            components,
            columns,
            rows,
            samples,
        };
    let fits = |(w, h, c): (u32, u32, u32)| w <= columns && h <= rows && c <= samples.max(1);
    let j2k = J2K_TRANSFER_SYNTAXES.contains(&ts);
    let jpeg = !j2k && ts.starts_with("1.2.840.10008.1.2.4.");
    for f in fragments {
        if ts == uids::RLE_LOSSLESS {
            if f.len() >= 4 && u32::from_le_bytes([f[0], f[1], f[2], f[3]]) > 15 {
                return Err(IdentityError::RleSegments);
            }
        } else if let Some(size) = j2k.then(|| j2k_size(f)).flatten() {
            if !fits(size) {
                return Err(size_error("JPEG 2000", size));
            }
        } else if let Some(size) = jpeg.then(|| jpeg_size(f)).flatten() {
            if !fits(size) {
                return Err(size_error("JPEG", size));
            }
        }
    }
    Ok(())
}

const J2K_TRANSFER_SYNTAXES: [&str; 7] = [
    uids::JPEG2000_LOSSLESS,
    uids::JPEG2000,
    uids::JPEG2000MC_LOSSLESS,
    uids::JPEG2000MC,
    uids::HTJ2K_LOSSLESS,
    uids::HTJ2K_LOSSLESS_RPCL,
    uids::HTJ2K,
];

/// (width, height, components) of a J2K codestream starting in this fragment (SOC, SIZ).
fn j2k_size(f: &[u8]) -> Option<(u32, u32, u32)> {
    let at = f
        .windows(4)
        .take(1024)
        .position(|w| w == [0xFF, 0x4F, 0xFF, 0x51])?;
    let siz = f.get(at + 4..at + 4 + 38)?;
    let u = |i: usize| u32::from_be_bytes([siz[i], siz[i + 1], siz[i + 2], siz[i + 3]]);
    // Lsiz(2) Rsiz(2) Xsiz Ysiz XOsiz YOsiz XTsiz YTsiz XTOsiz YTOsiz Csiz(2)
    let (x, y, xo, yo) = (u(4), u(8), u(12), u(16));
    let c = u32::from(u16::from_be_bytes([siz[36], siz[37]]));
    Some((x.saturating_sub(xo), y.saturating_sub(yo), c))
}

/// (width, height, components) of a JPEG (or JPEG-LS) frame header in this fragment.
fn jpeg_size(f: &[u8]) -> Option<(u32, u32, u32)> {
    if f.get(..2)? != [0xFF, 0xD8] {
        return None;
    }
    let mut at = 2;
    while at + 4 <= f.len() {
        if f[at] != 0xFF {
            return None;
        }
        let marker = f[at + 1];
        if marker == 0xFF {
            at += 1;
            continue;
        }
        let len = usize::from(u16::from_be_bytes([f[at + 2], f[at + 3]]));
        let sof = matches!(marker, 0xC0..=0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF | 0xF7);
        if sof {
            let h = f.get(at + 4..at + 10)?;
            let height = u32::from(u16::from_be_bytes([h[1], h[2]]));
            let width = u32::from(u16::from_be_bytes([h[3], h[4]]));
            return Some((width, height, u32::from(h[5])));
        }
        // Entropy-coded data follows SOS: no frame header after it.
        if marker == 0xDA {
            return None;
        }
        at += 2 + len;
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use dicom_core::value::PixelFragmentSequence;
    use dicom_core::{DataElement, VR};
    use dicom_object::FileMetaTableBuilder;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    pub(crate) const SOP: &str = "1.2.826.0.1.3680043.2.1143.77.1";

    /// An MR image: `rows`×`cols`, 16 bits allocated, 12 stored, a private block.
    pub(crate) fn mr(rows: u16, cols: u16, pixels: Vec<u16>) -> InMemDicomObject {
        let mut o = InMemDicomObject::new_empty();
        let mut s = |tag, vr, v: &str| o.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
        s(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 100");
        s(tags::SOP_CLASS_UID, VR::UI, uids::MR_IMAGE_STORAGE);
        s(tags::SOP_INSTANCE_UID, VR::UI, SOP);
        s(
            tags::STUDY_INSTANCE_UID,
            VR::UI,
            "1.2.826.0.1.3680043.2.1143.77",
        );
        s(
            tags::SERIES_INSTANCE_UID,
            VR::UI,
            "1.2.826.0.1.3680043.2.1143.77.0",
        );
        s(tags::MODALITY, VR::CS, "MR");
        s(tags::PATIENT_NAME, VR::PN, "MÜLLER^ANNA");
        s(tags::SERIES_DESCRIPTION, VR::LO, "AX T1");
        s(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2");
        s(Tag(0x0029, 0x0010), VR::LO, "ACME 1.0");
        s(Tag(0x0029, 0x1010), VR::LO, "PRIVATE ");
        s(tags::IMAGE_POSITION_PATIENT, VR::DS, "-115\\-115.5\\30");
        let mut u = |tag, vr, v: u16| o.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
        u(Tag(0x0029, 0x1011), VR::US, 5);
        u(tags::SAMPLES_PER_PIXEL, VR::US, 1);
        u(tags::ROWS, VR::US, rows);
        u(tags::COLUMNS, VR::US, cols);
        u(tags::BITS_ALLOCATED, VR::US, 16);
        u(tags::BITS_STORED, VR::US, 12);
        u(tags::HIGH_BIT, VR::US, 11);
        u(tags::PIXEL_REPRESENTATION, VR::US, 0);
        o.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16(pixels.into()),
        ));
        o
    }

    /// A smooth image with texture (what J2K and JPEG see in MR), values < 4096.
    pub(crate) fn phantom(rows: u16, cols: u16) -> Vec<u16> {
        (0..rows as u32 * cols as u32)
            .map(|i| {
                let (y, x) = (i / cols as u32, i % cols as u32);
                ((x * 7 + y * 3) % 1024 + (i.wrapping_mul(2_654_435_761) >> 24)) as u16
            })
            .collect()
    }

    pub(crate) fn write(obj: &InMemDicomObject, ts: &str, path: &Path) {
        let meta = FileMetaTableBuilder::new()
            .transfer_syntax(ts)
            .media_storage_sop_class_uid(uids::MR_IMAGE_STORAGE)
            .media_storage_sop_instance_uid(SOP);
        obj.clone()
            .with_meta(meta)
            .unwrap()
            .write_to_file(path)
            .unwrap();
    }

    /// Run a DCMTK or GDCM tool `tool args… in out`.
    pub(crate) fn convert(tool: &str, args: &[&str], from: &Path, to: &Path) {
        let out = Command::new(tool)
            .args(args)
            .arg(from)
            .arg(to)
            .output()
            .unwrap_or_else(|e| panic!("{tool}: {e}"));
        assert!(out.status.success(), "{tool} {args:?}: {out:?}");
    }

    fn id(p: &Path) -> String {
        identity(&std::fs::read(p).unwrap()).unwrap_or_else(|e| panic!("{p:?}: {e}"))
    }

    fn ts_of(p: &Path) -> String {
        dicom_object::open_file(p)
            .unwrap()
            .meta()
            .transfer_syntax()
            .trim_end_matches('\0')
            .to_string()
    }

    /// The base instance as Explicit VR LE, and in every lossless encoding the tools make.
    fn encodings(d: &Path, obj: &InMemDicomObject) -> Vec<(&'static str, PathBuf)> {
        let e = d.join("explicit.dcm");
        write(obj, uids::EXPLICIT_VR_LITTLE_ENDIAN, &e);
        let mut out = vec![("explicit", e.clone())];
        let mut add = |name, f: &dyn Fn(&Path)| {
            let p = d.join(format!("{name}.dcm"));
            f(&p);
            out.push((name, p));
        };
        add("implicit (dicom-rs)", &|p| {
            write(obj, uids::IMPLICIT_VR_LITTLE_ENDIAN, p)
        });
        add("big endian (dicom-rs)", &|p| {
            write(obj, "1.2.840.10008.1.2.2", p)
        });
        add("implicit (dcmconv)", &|p| {
            convert("dcmconv", &["+ti"], &e, p)
        });
        add("rle (dcmcrle)", &|p| convert("dcmcrle", &[], &e, p));
        add("rle (gdcmconv)", &|p| {
            convert("gdcmconv", &["--rle"], &e, p)
        });
        add("j2k lossless", &|p| convert("gdcmconv", &["--j2k"], &e, p));
        add("jpeg lossless (dcmcjpeg)", &|p| {
            convert("dcmcjpeg", &["+e1", "+un"], &e, p)
        });
        out
    }

    #[test]
    fn identity_does_not_depend_on_the_encoding() {
        let d = tempfile::tempdir().unwrap();
        let obj = mr(64, 48, phantom(64, 48));
        let all = encodings(d.path(), &obj);
        let want = id(&all[0].1);
        assert!(want.starts_with(IDENTITY_PREFIX));
        let mut transfer_syntaxes = std::collections::BTreeSet::new();
        for (name, p) in &all {
            transfer_syntaxes.insert(ts_of(p));
            assert_eq!(id(p), want, "{name}");
        }
        // Every encoding was really another one.
        assert_eq!(transfer_syntaxes.len(), 6, "{transfer_syntaxes:?}");
        // Bits above Bits Stored are not part of a sample (J2K drops them).
        let mut high = phantom(64, 48);
        high.iter_mut().step_by(3).for_each(|v| *v |= 0xF000);
        let p = d.path().join("high.dcm");
        write(&mr(64, 48, high), uids::EXPLICIT_VR_LITTLE_ENDIAN, &p);
        assert_eq!(id(&p), want);
    }

    #[test]
    fn identity_changes_with_the_image_or_its_attributes() {
        let d = tempfile::tempdir().unwrap();
        let base = mr(64, 48, phantom(64, 48));
        let e = d.path().join("e.dcm");
        write(&base, uids::EXPLICIT_VR_LITTLE_ENDIAN, &e);
        let want = id(&e);
        let changed = |name: &str, obj: InMemDicomObject| {
            let p = d.path().join(format!("{name}.dcm"));
            write(&obj, uids::EXPLICIT_VR_LITTLE_ENDIAN, &p);
            assert_ne!(id(&p), want, "{name}");
            // And in another encoding as well.
            let r = d.path().join(format!("{name}-rle.dcm"));
            convert("dcmcrle", &[], &p, &r);
            assert_ne!(id(&r), want, "{name} as RLE");
        };
        let mut px = phantom(64, 48);
        px[1000] ^= 1;
        changed("one pixel", mr(64, 48, px));
        let mut o = base.clone();
        o.put(DataElement::new(
            tags::PATIENT_NAME,
            VR::PN,
            PrimitiveValue::from("MÜLLER^ANNE"),
        ));
        changed("patient name", o);
        let mut o = base.clone();
        o.put(DataElement::new(
            Tag(0x0029, 0x1011),
            VR::US,
            PrimitiveValue::from(6u16),
        ));
        changed("private value", o);
        let mut o = base.clone();
        o.put(DataElement::new(
            tags::LOSSY_IMAGE_COMPRESSION,
            VR::CS,
            PrimitiveValue::from("01"),
        ));
        changed("lossy marker", o);
        // Lossy re-encodings, SOP Instance UID kept. dicom-rs cannot decode 12-bit
        // JPEG (process 4): that identity is an error, and the node records the byte
        // hash instead, which differs as well.
        let jpeg = d.path().join("jpeg.dcm");
        convert("dcmcjpeg", &["+ee", "+un"], &e, &jpeg);
        assert!(identity(&std::fs::read(&jpeg).unwrap()).is_err());
        let j2k = d.path().join("j2k.dcm");
        convert("gdcmconv", &["--j2k", "--lossy", "-q", "40"], &e, &j2k);
        let out = Command::new("dcmodify")
            .args(["-nb", "-m", &format!("(0008,0018)={SOP}")])
            .arg(&j2k)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(ts_of(&j2k), uids::JPEG2000);
        assert_ne!(id(&j2k), want, "j2k lossy");
    }

    /// A lossy transfer syntax counts even where the decoded pixels and every attribute
    /// are the original's: an 8-bit image of flat 8×8 blocks survives JPEG baseline
    /// exactly.
    #[test]
    fn a_lossy_transfer_syntax_alone_is_a_change() {
        let d = tempfile::tempdir().unwrap();
        let mut o = mr(32, 32, vec![]);
        for (tag, v) in [
            (tags::BITS_ALLOCATED, 8u16),
            (tags::BITS_STORED, 8),
            (tags::HIGH_BIT, 7),
        ] {
            o.put(DataElement::new(tag, VR::US, PrimitiveValue::from(v)));
        }
        o.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OB,
            PrimitiveValue::U8(
                (0..32 * 32)
                    .map(|i| if i < 512 { 0 } else { 255 })
                    .collect(),
            ),
        ));
        let e = d.path().join("e.dcm");
        write(&o, uids::EXPLICIT_VR_LITTLE_ENDIAN, &e);
        let jpeg = d.path().join("jpeg.dcm");
        convert("dcmcjpeg", &["+eb", "+un"], &e, &jpeg);
        // Without the attributes the compressor added: only the transfer syntax tells.
        let out = Command::new("dcmodify")
            .args([
                "-nb",
                "-ea",
                "(0028,2110)",
                "-ea",
                "(0028,2112)",
                "-ea",
                "(0028,2114)",
            ])
            .args([
                "-ea",
                "(0008,2111)",
                "-ea",
                "(0008,9215)",
                "-ea",
                "(0008,0008)",
            ])
            .arg(&jpeg)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(ts_of(&jpeg), uids::JPEG_BASELINE8_BIT);
        let decoded = |p: &Path| {
            dicom_object::open_file(p)
                .unwrap()
                .decode_pixel_data()
                .unwrap()
                .data()
                .to_vec()
        };
        assert!(decoded(&jpeg) == decoded(&e), "pixels survived exactly");
        assert_ne!(id(&jpeg), id(&e));
    }

    fn encapsulated(ts: &str, fragment: Vec<u8>, rows: u16, cols: u16) -> Vec<u8> {
        let mut o = mr(rows, cols, vec![]);
        o.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OB,
            Value::PixelSequence(PixelFragmentSequence::new(vec![], vec![fragment])),
        ));
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.dcm");
        write(&o, ts, &p);
        std::fs::read(p).unwrap()
    }

    #[test]
    fn hostile_pixel_data_is_refused_before_decoding() {
        // An RLE header asking for 2^32-1 segments.
        let mut rle = vec![0xFF; 4];
        rle.extend_from_slice(&[0; 60]);
        let f = encapsulated(uids::RLE_LOSSLESS, rle, 16, 16);
        assert!(matches!(identity(&f), Err(IdentityError::RleSegments)));
        // A J2K header claiming 60000×60000 in a 16×16 data set.
        let mut j2k = vec![0xFF, 0x4F, 0xFF, 0x51, 0, 41, 0, 0];
        for v in [60_000u32, 60_000, 0, 0, 60_000, 60_000, 0, 0] {
            j2k.extend_from_slice(&v.to_be_bytes());
        }
        j2k.extend_from_slice(&[0, 1, 15, 1, 1, 0xFF, 0xD9, 0]);
        let f = encapsulated(uids::JPEG2000_LOSSLESS, j2k, 16, 16);
        let e = identity(&f).unwrap_err();
        assert!(
            matches!(e, IdentityError::CodestreamSize { width: 60_000, .. }),
            "{e}"
        );
        // A JPEG frame header claiming 65535×65535.
        let jpeg = vec![
            0xFF, 0xD8, 0xFF, 0xC3, 0, 11, 16, 0xFF, 0xFF, 0xFF, 0xFF, 1, 1, 0x11, 0, 0xFF, 0xD9,
        ];
        let f = encapsulated(uids::JPEG_LOSSLESS_SV1, jpeg, 16, 16);
        assert!(matches!(
            identity(&f),
            Err(IdentityError::CodestreamSize { codec: "JPEG", .. })
        ));
        // Garbage where a codestream should be: an error, not a panic.
        for ts in [
            uids::JPEG2000_LOSSLESS,
            uids::JPEG_LOSSLESS_SV1,
            uids::RLE_LOSSLESS,
            uids::JPEGLS_LOSSLESS,
        ] {
            let f = encapsulated(ts, vec![0x5A; 64], 16, 16);
            assert!(identity(&f).is_err(), "{ts}");
        }
        assert!(matches!(
            identity(b"not dicom"),
            Err(IdentityError::Parse(_))
        ));
    }

    #[test]
    fn unstored_bits_are_cleared() {
        let mut d = vec![0xFF, 0xFF, 0x34, 0x12];
        clear_unstored_bits(&mut d, 16, 12).unwrap();
        assert_eq!(d, [0xFF, 0x0F, 0x34, 0x02]);
        let mut d = vec![0xFF, 0xFF, 0xFF, 0xFF];
        clear_unstored_bits(&mut d, 32, 20).unwrap();
        assert_eq!(d, [0xFF, 0xFF, 0x0F, 0x00]);
        assert!(matches!(
            clear_unstored_bits(&mut d, 12, 12),
            Err(IdentityError::BitsAllocated(12))
        ));
        assert_eq!(interleave(&[1, 2, 3, 4, 5, 6], 2, 3, 1), [1, 3, 5, 2, 4, 6]);
    }
}

/// `cargo test --features stand-in --lib store::identity::cost -- --ignored --nocapture`:
/// the time to compute an identity per instance, by size and encoding.
#[cfg(test)]
mod cost {
    use super::tests::{convert, mr, phantom, write};
    use super::*;
    use std::time::Instant;

    fn per_call(f: impl Fn()) -> f64 {
        f();
        let n = 20;
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        t.elapsed().as_secs_f64() * 1000.0 / n as f64
    }

    #[test]
    #[ignore]
    fn identity_cost() {
        let d = tempfile::tempdir().unwrap();
        for size in [256u16, 512] {
            let e = d.path().join(format!("{size}.dcm"));
            write(
                &mr(size, size, phantom(size, size)),
                uids::EXPLICIT_VR_LITTLE_ENDIAN,
                &e,
            );
            let mut files = vec![("explicit LE", e.clone())];
            for (name, tool, args) in [
                ("implicit LE", "dcmconv", &["+ti"][..]),
                ("RLE", "dcmcrle", &[][..]),
                ("J2K lossless", "gdcmconv", &["--j2k"][..]),
                ("JPEG lossless", "dcmcjpeg", &["+e1"][..]),
            ] {
                let p = d.path().join(format!("{size}-{name}.dcm"));
                convert(tool, args, &e, &p);
                files.push((name, p));
            }
            for (name, p) in files {
                let bytes = std::fs::read(&p).unwrap();
                let ms = per_call(|| {
                    identity(&bytes).unwrap();
                });
                let bytes_ms = per_call(|| {
                    crate::store::hash::content_hash(&bytes);
                });
                println!(
                    "{size}x{size} 16-bit {name:>14}: {:>8} bytes, identity {ms:7.3} ms, byte hash {bytes_ms:6.3} ms",
                    bytes.len()
                );
            }
        }
    }
}
