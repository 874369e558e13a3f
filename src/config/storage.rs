//! `[storage]`: the SOP classes accepted, the free space kept on the state directory, and
//! the retention policy that keeps it free (`crate::store::retention` applies it).

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
    /// A finished study's received instances are removed this many days after its last
    /// activity (instance received, run finished, result delivered). Live.
    #[serde(default = "default_keep_days")]
    pub keep_days: f64,
    /// Free space (MB) below which finished studies are evicted before their time, oldest
    /// first, ... Live.
    #[serde(default = "default_evict_below_free_mb")]
    pub evict_below_free_mb: u64,
    /// ... until this much is free again (MB). Live.
    #[serde(default = "default_evict_until_free_mb")]
    pub evict_until_free_mb: u64,
    /// A study whose instances were removed keeps its records (run record, predictions,
    /// the SR/KOS sent, its timeline) this many days more after its last activity. Live.
    #[serde(default = "default_keep_records_days")]
    pub keep_records_days: f64,
    /// Audit rows older than this many days are folded into per-day counts. Live.
    #[serde(default = "default_keep_audit_days")]
    pub keep_audit_days: f64,
}

fn default_min_free_mb() -> u64 {
    1024
}
fn default_keep_days() -> f64 {
    14.0
}
fn default_evict_below_free_mb() -> u64 {
    10 * 1024
}
fn default_evict_until_free_mb() -> u64 {
    20 * 1024
}
fn default_keep_records_days() -> f64 {
    365.0
}
fn default_keep_audit_days() -> f64 {
    365.0
}

impl Default for StorageSection {
    fn default() -> Self {
        StorageSection {
            min_free_mb: default_min_free_mb(),
            extra_sop_classes: Vec::new(),
            keep_days: default_keep_days(),
            evict_below_free_mb: default_evict_below_free_mb(),
            evict_until_free_mb: default_evict_until_free_mb(),
            keep_records_days: default_keep_records_days(),
            keep_audit_days: default_keep_audit_days(),
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
        for (key, days) in [
            ("keep_days", self.keep_days),
            ("keep_records_days", self.keep_records_days),
            ("keep_audit_days", self.keep_audit_days),
        ] {
            if !(0.0..=36_500.0).contains(&days) {
                p.push(format!(
                    "[storage] {key}: {days} must be a number of days from 0 to 36500"
                ));
            }
        }
        // Eviction must start before reception refuses, and stop above where it started,
        // or it would run for every instance received.
        if self.evict_below_free_mb <= self.min_free_mb {
            p.push(format!(
                "[storage] evict_below_free_mb: {} must be above min_free_mb ({}): eviction starts before C-STORE is refused",
                self.evict_below_free_mb, self.min_free_mb
            ));
        }
        if self.evict_until_free_mb < self.evict_below_free_mb {
            p.push(format!(
                "[storage] evict_until_free_mb: {} must be at least evict_below_free_mb ({})",
                self.evict_until_free_mb, self.evict_below_free_mb
            ));
        }
        p
    }

    /// The retention policy alone: what a live reload may change in this section.
    pub fn retention(&self) -> Retention {
        Retention {
            keep_days: self.keep_days,
            evict_below_free_mb: self.evict_below_free_mb,
            evict_until_free_mb: self.evict_until_free_mb,
            keep_records_days: self.keep_records_days,
            keep_audit_days: self.keep_audit_days,
        }
    }

    /// This section with `r` as its retention policy.
    pub fn with_retention(&self, r: Retention) -> StorageSection {
        StorageSection {
            keep_days: r.keep_days,
            evict_below_free_mb: r.evict_below_free_mb,
            evict_until_free_mb: r.evict_until_free_mb,
            keep_records_days: r.keep_records_days,
            keep_audit_days: r.keep_audit_days,
            ..self.clone()
        }
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

/// The retention keys of `[storage]` (see [`StorageSection`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retention {
    pub keep_days: f64,
    pub evict_below_free_mb: u64,
    pub evict_until_free_mb: u64,
    pub keep_records_days: f64,
    pub keep_audit_days: f64,
}

const DAY_MS: f64 = 86_400_000.0;

impl Retention {
    pub fn keep_ms(&self) -> i64 {
        (self.keep_days * DAY_MS) as i64
    }
    pub fn keep_records_ms(&self) -> i64 {
        (self.keep_records_days * DAY_MS) as i64
    }
    pub fn keep_audit_ms(&self) -> i64 {
        (self.keep_audit_days * DAY_MS) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_keys_are_checked() {
        let s: StorageSection = toml::from_str(
            "min_free_mb = 100\nevict_below_free_mb = 100\nevict_until_free_mb = 50\nkeep_days = -1\nkeep_records_days = nan\n",
        )
        .unwrap();
        assert_eq!(
            s.problems(),
            vec![
                "[storage] keep_days: -1 must be a number of days from 0 to 36500",
                "[storage] keep_records_days: NaN must be a number of days from 0 to 36500",
                "[storage] evict_below_free_mb: 100 must be above min_free_mb (100): eviction starts before C-STORE is refused",
                "[storage] evict_until_free_mb: 50 must be at least evict_below_free_mb (100)",
            ]
        );
        let ok: StorageSection =
            toml::from_str("min_free_mb = 10\nevict_below_free_mb = 20\nevict_until_free_mb = 20\nkeep_days = 0.5\n").unwrap();
        assert!(ok.problems().is_empty());
        assert_eq!(ok.retention().keep_ms(), 43_200_000);
        let changed = ok.with_retention(Retention {
            keep_days: 2.0,
            ..ok.retention()
        });
        assert_eq!((changed.keep_days, changed.min_free_mb), (2.0, 10));
    }

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
