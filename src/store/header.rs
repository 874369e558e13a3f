//! What the node reads from a received instance: its data set bytes and its header.

use std::path::Path;

use dicom_dictionary_std::tags;
use dicom_object::OpenFileOptions;

use crate::store::length_guard::check_element_lengths;
use crate::uid;

/// The data set of a Part-10 file: everything after the meta group, whose length is
/// (0002,0000) UL right after "DICM".
pub fn data_set_of(file: &[u8]) -> Option<&[u8]> {
    if file.len() < 144 || &file[128..132] != b"DICM" {
        return None;
    }
    let gl = u32::from_le_bytes([file[140], file[141], file[142], file[143]]) as usize;
    file.get(144usize.checked_add(gl)?..)
}

/// What the node needs from an instance's header.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceHeader {
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub study_instance_uid: String,
    pub series_instance_uid: String,
    pub modality: String,
    pub series_number: String,
    pub series_description: String,
    pub transfer_syntax: String,
}

#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("data set does not parse: {0}")]
    Parse(String),
    #[error("{0} is missing")]
    Missing(&'static str),
    #[error("{name} is not a valid UID ({len} characters)")]
    BadUid { name: &'static str, len: usize },
}

/// Read the header (everything before Pixel Data) of a Part-10 file.
pub fn read_header(path: &Path) -> Result<InstanceHeader, HeaderError> {
    check_element_lengths(path).map_err(|e| HeaderError::Parse(e.0))?;
    let obj = OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(path)
        .map_err(|e| HeaderError::Parse(e.to_string()))?;
    let get = |tag| -> String {
        obj.element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.to_str().ok().map(|s| s.to_string()))
            .map(|s| {
                s.trim_matches(|c: char| c == '\0' || c.is_whitespace())
                    .to_string()
            })
            .unwrap_or_default()
    };
    let uid = |tag, name: &'static str| -> Result<String, HeaderError> {
        let v = get(tag);
        if v.is_empty() {
            return Err(HeaderError::Missing(name));
        }
        if !uid::is_valid(&v) {
            return Err(HeaderError::BadUid { name, len: v.len() });
        }
        Ok(v)
    };
    Ok(InstanceHeader {
        sop_class_uid: uid(tags::SOP_CLASS_UID, "SOP Class UID")?,
        sop_instance_uid: uid(tags::SOP_INSTANCE_UID, "SOP Instance UID")?,
        study_instance_uid: uid(tags::STUDY_INSTANCE_UID, "Study Instance UID")?,
        series_instance_uid: uid(tags::SERIES_INSTANCE_UID, "Series Instance UID")?,
        modality: get(tags::MODALITY),
        series_number: get(tags::SERIES_NUMBER),
        series_description: get(tags::SERIES_DESCRIPTION),
        transfer_syntax: obj
            .meta()
            .transfer_syntax()
            .trim_end_matches('\0')
            .to_string(),
    })
}
