//! The study job: what the assembler hands to the worker, what a processor gives back, and
//! the contract between the two. Every stage after assembly speaks these types, and a job
//! crosses a process boundary as they are (`crate::model_process::protocol`): nothing here
//! refers to the model, the database or the network.

mod record;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use record::{ExplanationRecord, RunRecord, SeriesRecord, SkipRecord, StageTimings};

/// One instance of a job, as the processor reads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobInstance {
    /// Part-10 file in the spool.
    pub path: PathBuf,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub series_instance_uid: String,
    pub modality: String,
    /// Content hash of the data set as received, from the state database: with the file's
    /// identity it keys background preparation (`crate::process::cache`).
    pub content_hash: String,
}

/// An earlier SR or KOS of the same study that this run supersedes (Predecessor
/// Documents).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PredecessorRef {
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub series_instance_uid: String,
}

/// A stable study, ready for the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudyJob {
    pub study_instance_uid: String,
    /// The instances the model may read (model SOP classes, configured modalities).
    pub instances: Vec<JobInstance>,
    /// SHA-256 over the sorted (SOP Instance UID, content hash) pairs: identifies the
    /// input set, so output UIDs derived from it are stable across a crash and re-run.
    pub input_set_hash: [u8; 32],
    pub predecessors: Vec<PredecessorRef>,
    /// The study was cut off by `force_complete_s` rather than a quiet period.
    pub forced_complete: bool,
    /// 1 for the first start of this job, more after restarts.
    pub attempt: u32,
    /// Instances of the study the model does not read, per series, with the reason.
    #[serde(default)]
    pub set_aside: Vec<SetAside>,
}

/// Instances of one series that the model does not read (not a model SOP class, not a
/// configured modality), reported with the results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetAside {
    pub series_instance_uid: String,
    pub instances: usize,
    pub reason: String,
}

/// A job as it travels to the worker: the database's job id with the job.
#[derive(Debug)]
pub struct WorkItem {
    pub job_id: i64,
    pub job: StudyJob,
}

/// Which result object an output is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    Sr,
    Kos,
    Card,
    /// One image of the derived key-image series (Secondary Capture).
    KeyImage,
}

impl OutputKind {
    /// The name recorded in the database and hashed into the output UIDs.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputKind::Sr => "sr",
            OutputKind::Kos => "kos",
            OutputKind::Card => "card",
            OutputKind::KeyImage => "keyimage",
        }
    }
}

impl std::fmt::Display for OutputKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One DICOM object to send back.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputObject {
    pub kind: OutputKind,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub series_instance_uid: String,
    pub study_instance_uid: String,
    /// Complete Part-10 file: preamble, `DICM`, meta group, data set.
    pub bytes: Vec<u8>,
}

/// What a processor returns for one job.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessedStudy {
    pub outputs: Vec<OutputObject>,
    /// Kept beside the study for audit (upstream's predictions JSON for the model).
    pub predictions_json: String,
    /// The run record: what was used, skipped, and how long each stage took.
    pub run: RunRecord,
}

impl ProcessedStudy {
    /// Whether the outputs can be sent as results of `study`: valid UIDs, the study's own,
    /// complete Part-10 files. Both the single node's and the cluster's sinks refuse results
    /// that are not.
    pub fn check(&self, study: &str) -> Result<(), InvalidOutput> {
        for o in &self.outputs {
            for (name, uid) in [
                ("SOP Class UID", &o.sop_class_uid),
                ("SOP Instance UID", &o.sop_instance_uid),
                ("Series Instance UID", &o.series_instance_uid),
            ] {
                if !crate::uid::is_valid(uid) {
                    return Err(InvalidOutput::Uid { kind: o.kind, name });
                }
            }
            if o.study_instance_uid != study {
                return Err(InvalidOutput::OtherStudy { kind: o.kind });
            }
            if o.bytes.len() < 132 || &o.bytes[128..132] != b"DICM" {
                return Err(InvalidOutput::NotPart10 { kind: o.kind });
            }
        }
        Ok(())
    }
}

/// Why a processor's outputs cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidOutput {
    #[error("output {kind} has an invalid {name}")]
    Uid {
        kind: OutputKind,
        name: &'static str,
    },
    #[error("output {kind} belongs to another study")]
    OtherStudy { kind: OutputKind },
    #[error("output {kind} is not a Part-10 file")]
    NotPart10 { kind: OutputKind },
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("model could not be loaded: {0}")]
    Load(String),
    #[error("study could not be processed: {0}")]
    Failed(String),
    /// The process running the processor died (an abort, a stack overflow, the OOM
    /// killer): worth trying again in a fresh one, a few times.
    #[error("worker process crashed: {0}")]
    Crashed(String),
}

/// Runs the model (and builds the result objects) for one study.
pub trait StudyProcessor: Send + 'static {
    fn process(&mut self, job: &StudyJob) -> Result<ProcessedStudy, ProcessError>;
}

/// Builds the processor on the worker thread (where the model must live), from the
/// configuration in force.
pub type ProcessorFactory = Box<
    dyn FnOnce(&crate::config::SharedConfig) -> Result<Box<dyn StudyProcessor>, ProcessError>
        + Send,
>;

/// The message of a caught panic.
pub fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}
