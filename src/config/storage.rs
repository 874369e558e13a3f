//! `[storage]`: the SOP classes accepted, and the free space kept on the state directory.

use dicom_dictionary_std::uids;
use serde::{Deserialize, Serialize};

use super::checks::is_uid;

/// MR Image Storage and Enhanced MR Image Storage: the classes Prima reads.
pub const MR_IMAGE_STORAGE: &str = uids::MR_IMAGE_STORAGE;
pub const ENHANCED_MR_IMAGE_STORAGE: &str = uids::ENHANCED_MR_IMAGE_STORAGE;
/// Legacy Converted Enhanced MR: classic images a PACS or archive re-packed as one
/// multi-frame instance; read like Enhanced MR, frame by frame.
pub const LEGACY_CONVERTED_ENHANCED_MR_IMAGE_STORAGE: &str =
    uids::LEGACY_CONVERTED_ENHANCED_MR_IMAGE_STORAGE;
pub const MODEL_SOP_CLASSES: [&str; 3] = [
    MR_IMAGE_STORAGE,
    ENHANCED_MR_IMAGE_STORAGE,
    LEGACY_CONVERTED_ENHANCED_MR_IMAGE_STORAGE,
];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StorageSection {
    #[serde(default = "default_min_free_mb")]
    pub min_free_mb: u64,
    /// Storage SOP classes accepted and stored but not given to the model.
    #[serde(default)]
    pub extra_sop_classes: Vec<String>,
}

fn default_min_free_mb() -> u64 {
    1024
}

impl Default for StorageSection {
    fn default() -> Self {
        StorageSection {
            min_free_mb: default_min_free_mb(),
            extra_sop_classes: Vec::new(),
        }
    }
}

impl StorageSection {
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        for (i, uid) in self.extra_sop_classes.iter().enumerate() {
            if !is_uid(uid) {
                p.push(format!(
                    "[storage] extra_sop_classes[{i}]: {uid:?} is not a UID (digits and dots, at most 64)"
                ));
            }
        }
        p
    }

    /// All storage SOP classes accepted (model classes first).
    pub fn sop_classes(&self) -> Vec<String> {
        let mut v: Vec<String> = MODEL_SOP_CLASSES.iter().map(|s| s.to_string()).collect();
        for s in &self.extra_sop_classes {
            if !v.contains(s) {
                v.push(s.clone());
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_section_is_the_default_and_passes() {
        let s: StorageSection = toml::from_str("").unwrap();
        assert_eq!(s, StorageSection::default());
        assert_eq!(s.problems(), Vec::<String>::new());
        assert_eq!(s.sop_classes(), MODEL_SOP_CLASSES.to_vec());
    }

    #[test]
    fn each_bad_uid_is_named_by_its_index() {
        let s: StorageSection =
            toml::from_str("extra_sop_classes = [\"1.2.3\", \"CT\", \"1..2\"]").unwrap();
        assert_eq!(
            s.problems(),
            vec![
                "[storage] extra_sop_classes[1]: \"CT\" is not a UID (digits and dots, at most 64)",
                "[storage] extra_sop_classes[2]: \"1..2\" is not a UID (digits and dots, at most 64)",
            ]
        );
    }

    #[test]
    fn extra_classes_follow_the_model_classes_once() {
        let s = StorageSection {
            extra_sop_classes: vec!["1.2.3".into(), MR_IMAGE_STORAGE.into(), "1.2.3".into()],
            ..StorageSection::default()
        };
        assert_eq!(
            s.sop_classes(),
            vec![
                MR_IMAGE_STORAGE,
                ENHANCED_MR_IMAGE_STORAGE,
                LEGACY_CONVERTED_ENHANCED_MR_IMAGE_STORAGE,
                "1.2.3"
            ]
        );
    }
}
