//! A study's model input as the database knows it: the instances the model may read and
//! the hash that identifies that set. The assembler decides on it, the worker compares it
//! with what it processed, background preparation follows it.

use sha2::{Digest, Sha256};

use super::state::{State, StateError, StoredInstance};
use crate::config::{Config, MODEL_SOP_CLASSES};

/// Instances the model may read: a model SOP class and a configured modality.
pub fn eligible(instances: Vec<StoredInstance>, cfg: &Config) -> Vec<StoredInstance> {
    instances
        .into_iter()
        .filter(|i| MODEL_SOP_CLASSES.contains(&i.sop_class_uid.as_str()))
        .filter(|i| {
            cfg.assembly
                .modalities
                .iter()
                .any(|m| m.eq_ignore_ascii_case(&i.modality))
        })
        .collect()
}

/// SHA-256 over the sorted (SOP Instance UID, content hash) pairs.
pub fn input_set_hash(instances: &[StoredInstance]) -> [u8; 32] {
    let mut pairs: Vec<(&str, &str)> = instances
        .iter()
        .map(|i| (i.sop_uid.as_str(), i.content_hash.as_str()))
        .collect();
    pairs.sort();
    let mut h = Sha256::new();
    for (uid, sha) in pairs {
        h.update(uid.as_bytes());
        h.update([0u8]);
        h.update(sha.as_bytes());
        h.update([b'\n']);
    }
    h.finalize().into()
}

impl State {
    /// The study's current model inputs and their hash.
    pub fn current_input(
        &self,
        study: &str,
        cfg: &Config,
    ) -> Result<(Vec<StoredInstance>, [u8; 32]), StateError> {
        let inst = eligible(self.instances_of(study)?, cfg);
        let h = input_set_hash(&inst);
        Ok((inst, h))
    }
}
