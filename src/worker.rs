//! The inference worker: one OS thread that owns the study processor (the model is loaded
//! once, on that thread, by the factory given to [`crate::node::serve`]) and receives jobs
//! over a bounded `crossbeam-channel`, so back-pressure is explicit.
//!
//! The worker does not know the model: it calls a [`StudyProcessor`]. A failure (an `Err`
//! or a panic) marks the job failed with its reason; the node stays up.

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use tracing::{error, info, info_span, warn};

use crate::config::SharedConfig;
use crate::store::outbox::Outbox;
use crate::store::spool::valid_uid;
use crate::store::state::{OutputRow, State};

/// One instance handed to the processor.
#[derive(Debug, Clone, PartialEq)]
pub struct JobInstance {
    /// Part-10 file in the spool.
    pub path: PathBuf,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub series_instance_uid: String,
    pub modality: String,
    /// Content hash of the data set as received, from the state database: with the file's
    /// identity it keys background preparation (`crate::speculate`).
    pub content_hash: String,
}

/// An earlier output of the same study, to be referenced (Predecessor Documents).
#[derive(Debug, Clone, PartialEq)]
pub struct PredecessorRef {
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub series_instance_uid: String,
}

/// A stable study, ready for the model.
#[derive(Debug, Clone, PartialEq)]
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
}

/// One DICOM object to send back.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputObject {
    /// "sr", "kos" or "card".
    pub kind: String,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub series_instance_uid: String,
    pub study_instance_uid: String,
    /// A complete Part-10 file.
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProcessedStudy {
    pub outputs: Vec<OutputObject>,
    pub predictions_json: String,
    pub run_json: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("model could not be loaded: {0}")]
    Load(String),
    #[error("study could not be processed: {0}")]
    Failed(String),
}

/// Runs the model (and builds the result objects) for one study.
pub trait StudyProcessor: Send + 'static {
    fn process(&mut self, job: &StudyJob) -> Result<ProcessedStudy, ProcessError>;

    /// Where background preparation of studies still arriving should leave its results
    /// for this processor; `None` (the default) when it has no use for them.
    fn prepare_cache(&self) -> Option<Arc<crate::speculate::PrepareCache>> {
        None
    }
}

/// Builds the processor on the worker thread (where the model must live).
pub type ProcessorFactory =
    Box<dyn FnOnce(&crate::config::Config) -> Result<Box<dyn StudyProcessor>, ProcessError> + Send>;

/// What travels over the channel.
#[derive(Debug)]
pub struct WorkItem {
    pub job_id: i64,
    pub job: StudyJob,
}

pub struct WorkerCtx {
    pub state: Arc<State>,
    pub outbox: Outbox,
    pub config: SharedConfig,
    pub wake_sender: Sender<()>,
}

/// The running worker.
pub struct Spawned {
    pub sender: Sender<WorkItem>,
    pub handle: std::thread::JoinHandle<()>,
    /// The processor's [`StudyProcessor::prepare_cache`].
    pub prepare_cache: Option<Arc<crate::speculate::PrepareCache>>,
}

/// Start the worker thread. Returns once the processor is built (or failed to build).
pub fn spawn(
    ctx: WorkerCtx,
    factory: ProcessorFactory,
    capacity: usize,
) -> Result<Spawned, ProcessError> {
    let (tx, rx) = crossbeam_channel::bounded::<WorkItem>(capacity);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let cfg = ctx.config.get();
    let handle = std::thread::Builder::new()
        .name("prima-worker".into())
        .spawn(move || {
            let t0 = Instant::now();
            let built = std::panic::catch_unwind(AssertUnwindSafe(|| factory(cfg.as_ref())))
                .unwrap_or_else(|_| Err(ProcessError::Load("panic while loading".into())));
            match built {
                Ok(p) => {
                    info!(device = %cfg.model.device, ms = t0.elapsed().as_millis() as u64, "model loaded");
                    let _ = ready_tx.send(Ok(p.prepare_cache()));
                    run(ctx, p, rx);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })
        .map_err(|e| ProcessError::Load(format!("cannot start worker thread: {e}")))?;
    match ready_rx.recv() {
        Ok(Ok(prepare_cache)) => Ok(Spawned {
            sender: tx,
            handle,
            prepare_cache,
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ProcessError::Load(
            "worker thread died while loading".into(),
        )),
    }
}

fn run(ctx: WorkerCtx, mut processor: Box<dyn StudyProcessor>, rx: Receiver<WorkItem>) {
    for item in rx {
        let study = item.job.study_instance_uid.clone();
        let span = info_span!("study", study = %study, job = item.job_id);
        let _g = span.enter();
        // A failed write here used to skip the job, leaving it `dispatched` (never run)
        // until a restart; a full disk or a busy database passes, so wait for it.
        retry_storage("mark the job running", || {
            ctx.state.mark_job_running(item.job_id, &study)
        });
        info!(
            instances = item.job.instances.len(),
            attempt = item.job.attempt,
            forced = item.job.forced_complete,
            predecessors = item.job.predecessors.len(),
            "processing study"
        );
        let t0 = Instant::now();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| processor.process(&item.job)))
            .unwrap_or_else(|p| {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".into());
                Err(ProcessError::Failed(format!("processor panicked: {msg}")))
            });
        let ms = t0.elapsed().as_millis() as u64;
        let outcome = result.and_then(|p| {
            // Storage errors are retried with the results kept in memory: found by the
            // disk-full test, a full disk while writing the outputs marked the study
            // `failed` for good (or, when the database was full too, left it `processing`
            // until a restart), although it only needed the space to come back. Re-running
            // the model is not needed: the outputs are deterministic and every write is
            // atomic and idempotent. The worker waits meanwhile, which is the back-pressure
            // wanted when nothing can be written anyway.
            retry_storage("store the results", || match finish(&ctx, &item, &p) {
                Err(FinishError::Invalid(m)) => Ok(Err(ProcessError::Failed(m))),
                Err(FinishError::Storage(m)) => Err(m),
                Ok(n) => Ok(Ok(n)),
            })
        });
        match outcome {
            Ok(n) => info!(ms, outputs = n, "study processed"),
            Err(e) => {
                error!(ms, error = %e, "study failed");
                retry_storage("record the failure", || {
                    ctx.state
                        .finish_job_failed(item.job_id, &study, &e.to_string())
                });
            }
        }
    }
}

/// Retry `f` with backoff (1 s doubling to 30 s) until it succeeds; for writes that fail
/// only while the disk is full or the database is busy.
fn retry_storage<T, E: std::fmt::Display>(what: &str, mut f: impl FnMut() -> Result<T, E>) -> T {
    let mut delay = std::time::Duration::from_secs(1);
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) => {
                warn!(error = %e, retry_in_s = delay.as_secs(), "cannot {what} (disk full?): will retry");
                std::thread::sleep(delay);
                delay = (delay * 2).min(std::time::Duration::from_secs(30));
            }
        }
    }
}

enum FinishError {
    /// The outputs are unusable: the job fails.
    Invalid(String),
    /// Writing them failed: worth retrying.
    Storage(String),
}

fn finish(ctx: &WorkerCtx, item: &WorkItem, p: &ProcessedStudy) -> Result<usize, FinishError> {
    let study = &item.job.study_instance_uid;
    let fail = FinishError::Invalid;
    let io = FinishError::Storage;
    let mut rows = Vec::new();
    for o in &p.outputs {
        for (name, uid) in [
            ("SOP Class UID", &o.sop_class_uid),
            ("SOP Instance UID", &o.sop_instance_uid),
            ("Series Instance UID", &o.series_instance_uid),
        ] {
            if !valid_uid(uid) {
                return Err(fail(format!("output {} has an invalid {name}", o.kind)));
            }
        }
        if o.study_instance_uid != *study {
            return Err(fail(format!("output {} belongs to another study", o.kind)));
        }
        if o.bytes.len() < 132 || &o.bytes[128..132] != b"DICM" {
            return Err(fail(format!("output {} is not a Part-10 file", o.kind)));
        }
    }
    // Outputs are durable before they are queued: a crash after this point re-sends from
    // disk instead of re-running the model.
    let objects: Vec<(&str, &[u8])> = p
        .outputs
        .iter()
        .map(|o| (o.sop_instance_uid.as_str(), o.bytes.as_slice()))
        .collect();
    // The objects and the predictions/run record are independent durability steps (each
    // a round of fdatasyncs and a directory fsync); overlapped, the send waits for one
    // round instead of two, which matters when the disk is busy with reception.
    let (paths, results) = std::thread::scope(|s| {
        let results = s.spawn(|| {
            ctx.outbox
                .persist_results(study, item.job_id, &p.predictions_json, &p.run_json)
        });
        let paths = ctx.outbox.persist_objects(&objects);
        (paths, results.join())
    });
    let paths = paths.map_err(|e| io(format!("cannot persist output: {e}")))?;
    results
        .map_err(|_| io("writing the predictions panicked".into()))?
        .map_err(|e| io(format!("cannot persist predictions: {e}")))?;
    for (o, path) in p.outputs.iter().zip(paths) {
        rows.push(OutputRow {
            sop_uid: o.sop_instance_uid.clone(),
            kind: o.kind.clone(),
            sop_class_uid: o.sop_class_uid.clone(),
            series_uid: o.series_instance_uid.clone(),
            path,
        });
    }
    let cfg = ctx.config.get();
    let dests: Vec<String> = cfg.destinations.iter().map(|d| d.key()).collect();
    if dests.is_empty() {
        warn!("no [[destinations]] configured: outputs kept in the outbox directory only");
    }
    let current = crate::study::assembler::current_input(&ctx.state, study, &cfg)
        .map_err(|e| io(e.to_string()))?;
    let job_hash = hex::encode(item.job.input_set_hash);
    if hex::encode(current.1) != job_hash {
        info!("instances arrived while processing: the study will be re-run");
    }
    ctx.state
        .finish_job_ok(
            item.job_id,
            study,
            &rows,
            &dests,
            &job_hash,
            &hex::encode(current.1),
        )
        .map_err(|e| io(e.to_string()))?;
    let _ = ctx.wake_sender.try_send(());
    Ok(rows.len())
}

/// A stand-in processor for tests and demos without a model (`PRIMA_NODE_FAKE_PROCESSOR=1`):
/// one small Basic Text SR per run, with UIDs derived from the study and its input set, so
/// a re-run after a crash produces the same SOP Instance UID.
pub struct FakeProcessor;

const UID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x5a0c_31c6_6f0e_4f6e_9a53_7c1b_9d2e_0b41);

/// `2.25.<uuid v5 as decimal>`: a deterministic UID from a name.
pub fn uid_from_name(name: &str) -> String {
    format!(
        "2.25.{}",
        uuid::Uuid::new_v5(&UID_NAMESPACE, name.as_bytes()).as_u128()
    )
}

pub const BASIC_TEXT_SR: &str = "1.2.840.10008.5.1.4.1.1.88.11";

impl StudyProcessor for FakeProcessor {
    fn process(&mut self, job: &StudyJob) -> Result<ProcessedStudy, ProcessError> {
        if std::env::var_os("PRIMA_NODE_FAKE_FAIL").is_some() {
            return Err(ProcessError::Failed("fake failure requested".into()));
        }
        // Gives the crash-consistency tests a window to SIGKILL the node mid-study.
        if let Some(ms) = std::env::var("PRIMA_NODE_FAKE_DELAY_MS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        let h = hex::encode(job.input_set_hash);
        let sop = uid_from_name(&format!("fake-sr|{}|{h}", job.study_instance_uid));
        let series = uid_from_name(&format!("fake-sr-series|{}|{h}", job.study_instance_uid));
        let mut series_uids: Vec<&str> = job
            .instances
            .iter()
            .map(|i| i.series_instance_uid.as_str())
            .collect();
        series_uids.sort();
        series_uids.dedup();
        let text = format!(
            "Fake result (no model): {} instances in {} series.",
            job.instances.len(),
            series_uids.len()
        );
        let bytes = fake_sr(
            &job.study_instance_uid,
            &series,
            &sop,
            &text,
            &job.predecessors,
        )
        .map_err(|e| ProcessError::Failed(format!("cannot build fake SR: {e}")))?;
        let predictions = serde_json::json!({
            "fake": true,
            "study_instance_uid": job.study_instance_uid,
            "instances": job.instances.len(),
            "series": series_uids.len(),
            "input_set_hash": h,
        });
        Ok(ProcessedStudy {
            outputs: vec![OutputObject {
                kind: "sr".into(),
                sop_class_uid: BASIC_TEXT_SR.into(),
                sop_instance_uid: sop,
                series_instance_uid: series,
                study_instance_uid: job.study_instance_uid.clone(),
                bytes,
            }],
            predictions_json: serde_json::to_string_pretty(&predictions).unwrap_or_default(),
            run_json: serde_json::json!({"processor": "fake", "attempt": job.attempt}).to_string(),
        })
    }
}

fn fake_sr(
    study: &str,
    series: &str,
    sop: &str,
    text: &str,
    predecessors: &[PredecessorRef],
) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    use dicom_core::value::DataSetSequence;
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

    fn s(tag: dicom_core::Tag, vr: VR, v: &str) -> DataElement<InMemDicomObject> {
        DataElement::new(tag, vr, PrimitiveValue::from(v))
    }
    fn code(value: &str, scheme: &str, meaning: &str) -> InMemDicomObject {
        InMemDicomObject::from_element_iter([
            s(tags::CODE_VALUE, VR::SH, value),
            s(tags::CODING_SCHEME_DESIGNATOR, VR::SH, scheme),
            s(tags::CODE_MEANING, VR::LO, meaning),
        ])
    }
    fn seq(tag: dicom_core::Tag, items: Vec<InMemDicomObject>) -> DataElement<InMemDicomObject> {
        DataElement::new(tag, VR::SQ, DataSetSequence::from(items))
    }
    let mut o = InMemDicomObject::new_empty();
    o.put(s(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192"));
    o.put(s(tags::SOP_CLASS_UID, VR::UI, BASIC_TEXT_SR));
    o.put(s(tags::SOP_INSTANCE_UID, VR::UI, sop));
    o.put(s(tags::STUDY_INSTANCE_UID, VR::UI, study));
    o.put(s(tags::SERIES_INSTANCE_UID, VR::UI, series));
    o.put(s(tags::MODALITY, VR::CS, "SR"));
    o.put(s(tags::SERIES_NUMBER, VR::IS, "9901"));
    o.put(s(tags::INSTANCE_NUMBER, VR::IS, "1"));
    o.put(s(tags::PATIENT_NAME, VR::PN, ""));
    o.put(s(tags::PATIENT_ID, VR::LO, ""));
    o.put(s(tags::MANUFACTURER, VR::LO, "prima-node (fake processor)"));
    o.put(s(tags::VALUE_TYPE, VR::CS, "CONTAINER"));
    o.put(s(tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE"));
    o.put(s(tags::COMPLETION_FLAG, VR::CS, "COMPLETE"));
    o.put(s(tags::VERIFICATION_FLAG, VR::CS, "UNVERIFIED"));
    o.put(seq(
        tags::CONCEPT_NAME_CODE_SEQUENCE,
        vec![code("18748-4", "LN", "Diagnostic Imaging Report")],
    ));
    let mut item = InMemDicomObject::from_element_iter([
        s(tags::RELATIONSHIP_TYPE, VR::CS, "CONTAINS"),
        s(tags::VALUE_TYPE, VR::CS, "TEXT"),
        s(tags::TEXT_VALUE, VR::UT, text),
    ]);
    item.put(seq(
        tags::CONCEPT_NAME_CODE_SEQUENCE,
        vec![code("121071", "DCM", "Finding")],
    ));
    o.put(seq(tags::CONTENT_SEQUENCE, vec![item]));
    if !predecessors.is_empty() {
        let mut by_series: Vec<(String, Vec<InMemDicomObject>)> = Vec::new();
        for p in predecessors {
            let r = InMemDicomObject::from_element_iter([
                s(tags::REFERENCED_SOP_CLASS_UID, VR::UI, &p.sop_class_uid),
                s(
                    tags::REFERENCED_SOP_INSTANCE_UID,
                    VR::UI,
                    &p.sop_instance_uid,
                ),
            ]);
            match by_series
                .iter_mut()
                .find(|(s, _)| *s == p.series_instance_uid)
            {
                Some((_, v)) => v.push(r),
                None => by_series.push((p.series_instance_uid.clone(), vec![r])),
            }
        }
        let series_items = by_series
            .into_iter()
            .map(|(uid, refs)| {
                let mut it = InMemDicomObject::from_element_iter([s(
                    tags::SERIES_INSTANCE_UID,
                    VR::UI,
                    &uid,
                )]);
                it.put(seq(tags::REFERENCED_SOP_SEQUENCE, refs));
                it
            })
            .collect();
        let mut st =
            InMemDicomObject::from_element_iter([s(tags::STUDY_INSTANCE_UID, VR::UI, study)]);
        st.put(seq(tags::REFERENCED_SERIES_SEQUENCE, series_items));
        o.put(seq(tags::PREDECESSOR_DOCUMENTS_SEQUENCE, vec![st]));
    }
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(BASIC_TEXT_SR)
        .media_storage_sop_instance_uid(sop)
        .transfer_syntax("1.2.840.10008.1.2.1")
        .implementation_class_uid(crate::store::spool::IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(crate::store::spool::IMPLEMENTATION_VERSION_NAME)
        .build()?;
    let file = o.with_exact_meta(meta);
    let mut out = Vec::new();
    file.write_all(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_processor_is_deterministic() {
        let job = StudyJob {
            study_instance_uid: "1.2.3".into(),
            instances: vec![],
            input_set_hash: [7; 32],
            predecessors: vec![PredecessorRef {
                sop_class_uid: BASIC_TEXT_SR.into(),
                sop_instance_uid: "2.25.1".into(),
                series_instance_uid: "2.25.2".into(),
            }],
            forced_complete: false,
            attempt: 1,
        };
        let a = FakeProcessor.process(&job).unwrap();
        let b = FakeProcessor.process(&job).unwrap();
        assert_eq!(a.outputs[0].sop_instance_uid, b.outputs[0].sop_instance_uid);
        assert_eq!(a.outputs[0].bytes, b.outputs[0].bytes);
        assert!(valid_uid(&a.outputs[0].sop_instance_uid));
        let obj = dicom_object::from_reader(&a.outputs[0].bytes[128..]).unwrap();
        assert_eq!(
            obj.element(dicom_dictionary_std::tags::SOP_INSTANCE_UID)
                .unwrap()
                .to_str()
                .unwrap()
                .trim_end_matches('\0'),
            a.outputs[0].sop_instance_uid
        );
    }
}
