//! From DICOM instances to Prima's VQ-VAE input tokens, exactly as the upstream
//! pipeline computes them (docs/prima-inference-spec.md §1–§7). Pure Rust; no libtorch.
//!
//! - [`natsort`]: natsort's default key (§1.2), for upstream's file-name slice order.
//! - [`pixel`]: ITK pixel type chosen from rescale + bits stored (§1.6), cast-back (§3.5).
//! - [`charset`]: text decoded as its Specific Character Set (ISO 2022 code extensions,
//!   GB18030, ISO 8859, UTF-8); headers opened with their text so decoded.
//! - [`acquisition`], [`csa`]: what tells a series' volumes apart (b-value, echo, image
//!   type, time, dimension indices, mosaic tiling; Siemens' CSA header).
//! - [`stack`]: slice order along the normal, and the slices a Siemens mosaic holds.
//! - [`volumes`]: one series → its volumes, as dcm2niix separates them, and which of them
//!   the model reads.
//! - [`header`]: one instance's header → one [`header::SliceMeta`] per image (file or
//!   frame), with the header values that size buffers checked against the file.
//! - [`series`]: grouping instances into series, slice order, geometry (§1.7), series
//!   names (§1.8), pixel data → volume.
//! - [`frames`]: one slice's stored values from its file (a frame, or a mosaic's tile),
//!   decoded behind the guards fuzzing showed the codecs need; also the key images' source.
//! - [`skip`]: why a series is not used ([`skip::SkipReason`]), in the words the outputs
//!   carry.
//! - [`itk`]: LINPACK dsvdc-based 3×3 inverse as VXL computes it (§3.1).
//! - [`resample`]: in-plane resample to 256×256 bit-exactly as ITK 5.4 (§2–§3).
//! - [`orient`]: DICOMOrient('LPS') (§4).
//! - [`tokens`]: padding, mask, scaling, patches, otsu values, 4→8 (§5, §7).
//! - [`otsu`]: bins, hole filling, token selection with fallback (§6).
//! - [`text`]: `chartovec` (§9.4).
pub mod acquisition;
pub mod charset;
pub mod csa;
mod elements;
pub mod frames;
pub mod header;
pub mod itk;
pub mod natsort;
pub mod orient;
pub mod otsu;
pub mod pixel;
pub mod resample;
pub mod series;
pub mod skip;
pub mod stack;
pub mod text;
pub mod tokens;
pub mod volume;
pub mod volumes;

pub use pixel::PixelType;
pub use volume::{Array3, Geometry, Volume};
