//! A job's results made durable and queued: checked, written to the outbox directory
//! (objects, predictions, run record), then recorded with the study's destinations in one
//! database transaction.

use tracing::{info, warn};

use super::WorkerCtx;
use crate::job::{ProcessedStudy, WorkItem};
use crate::store::state::OutputRow;
use crate::uid::is_valid as valid_uid;

pub(super) enum FinishError {
    /// The outputs are unusable: the job fails.
    Invalid(String),
    /// Writing them failed: worth retrying.
    Storage(String),
}

pub(super) fn finish(
    ctx: &WorkerCtx,
    item: &WorkItem,
    p: &ProcessedStudy,
) -> Result<usize, FinishError> {
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
            kind: o.kind.as_str().to_string(),
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
    let current = ctx
        .state
        .current_input(study, &cfg)
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
    observe(ctx, study, &p.run_json);
    Ok(rows.len())
}

/// Stage seconds from the run record, and the time from the study's last instance to its
/// results being queued, into the metrics.
fn observe(ctx: &WorkerCtx, study: &str, run_json: &str) {
    let m = crate::metrics::get();
    if let Ok(run) = serde_json::from_str::<serde_json::Value>(run_json) {
        if let Some(t) = run.get("timings").and_then(|t| t.as_object()) {
            for (k, v) in t {
                if let (Some(stage), Some(s)) = (k.strip_suffix("_s"), v.as_f64()) {
                    if k != "prepare_speculative_s" {
                        m.stage(stage, s);
                    }
                }
            }
        }
    }
    if let Ok(Some(row)) = ctx.state.study(study) {
        let s = (crate::store::state::now_ms() - row.last_received_ms) as f64 / 1000.0;
        m.result_latency_seconds.observe(s.max(0.0));
    }
}
