//! The single node's assembler: applies the study policy ([`super::policy`]) to every
//! receiving study whose quiet period or deadline has passed, queues jobs in the database
//! and hands them to the worker. New inputs after a run re-open the study (see
//! `State::record_instance`); the re-run gets the earlier outputs as predecessors.

use crossbeam_channel::Sender;
use tracing::{info, info_span, warn};

use super::current_input;
use super::policy::{self, StudySnapshot, Verdict};
use crate::config::Config;
use crate::job::{JobInstance, PredecessorRef, StudyJob, WorkItem};
use crate::store::state::{now_ms, State, StateError, StudyRow, StudyState};

/// One pass: settle or queue every stable study. Returns the number of jobs created.
pub fn assemble(state: &State, cfg: &Config, now: i64) -> Result<usize, StateError> {
    let mut jobs = 0;
    for s in state.studies_in_state(StudyState::Receiving)? {
        // Not due: decided without reading the study's instances.
        if now < policy::due_ms(s.last_received_ms, s.opened_ms, cfg) {
            continue;
        }
        let span = info_span!("study", study = %s.study_uid);
        let _g = span.enter();
        if apply(state, cfg, &s, now)? {
            jobs += 1;
        }
    }
    Ok(jobs)
}

/// The policy's verdict on one due study, recorded. Returns whether a job was queued.
fn apply(state: &State, cfg: &Config, s: &StudyRow, now: i64) -> Result<bool, StateError> {
    let instances = state.instances_of(&s.study_uid)?;
    let snapshot = StudySnapshot {
        instances: &instances,
        last_arrival_ms: s.last_received_ms,
        opened_ms: s.opened_ms,
        held: false,
        last_input_hash: s.last_input_hash.as_deref(),
    };
    match policy::decide(&snapshot, cfg, now) {
        Verdict::Wait { .. } => Ok(false),
        Verdict::Settle {
            state: StudyState::NotQualified,
            reason,
        } => {
            info!(%reason, "study does not qualify for the model");
            crate::metrics::get().study("skipped");
            state.settle_study(&s.study_uid, StudyState::NotQualified, &reason)?;
            Ok(false)
        }
        Verdict::Settle { state: to, reason } => {
            info!("study re-sent with unchanged model inputs: not re-run");
            state.settle_study(&s.study_uid, to, &reason)?;
            Ok(false)
        }
        Verdict::Run(input) => {
            let id = state.create_job(&s.study_uid, input.forced)?;
            info!(
                job = id,
                series = input.series,
                instances = input.instances.len(),
                forced = input.forced,
                rerun = s.runs > 0,
                "study stable: job queued"
            );
            Ok(true)
        }
    }
}

/// Hand queued jobs to the worker while its channel has room. Only this function sends on
/// the channel, so "not full" means the send cannot block.
pub fn dispatch(state: &State, cfg: &Config, tx: &Sender<WorkItem>) -> Result<usize, StateError> {
    let mut n = 0;
    for j in state.queued_jobs()? {
        if tx.is_full() {
            break;
        }
        let (inst, hash) = current_input(state, &j.study_uid, cfg)?;
        if inst.is_empty() {
            warn!(job = j.id, "queued job has no eligible instances left");
            state.finish_job_failed(j.id, &j.study_uid, "no eligible instances left")?;
            continue;
        }
        let predecessors = state
            .outputs_of(&j.study_uid)?
            .into_iter()
            .map(|o| PredecessorRef {
                sop_class_uid: o.sop_class_uid,
                sop_instance_uid: o.sop_uid,
                series_instance_uid: o.series_uid,
            })
            .collect();
        let attempt = state.mark_job_dispatched(j.id, &hex::encode(hash))?;
        let mut set_aside = policy::set_aside(&state.instances_of(&j.study_uid)?, cfg);
        set_aside.extend(policy::evicted(&state.evicted_series_of(&j.study_uid)?));
        let job = StudyJob {
            study_instance_uid: j.study_uid.clone(),
            instances: inst
                .into_iter()
                .map(|i| JobInstance {
                    path: i.path,
                    sop_class_uid: i.sop_class_uid,
                    sop_instance_uid: i.sop_uid,
                    series_instance_uid: i.series_uid,
                    modality: i.modality,
                    content_hash: i.content_hash,
                })
                .collect(),
            input_set_hash: hash,
            predecessors,
            forced_complete: j.forced,
            attempt: attempt.max(1) as u32,
            set_aside,
        };
        if tx.send(WorkItem { job_id: j.id, job }).is_err() {
            break;
        }
        n += 1;
    }
    Ok(n)
}

/// When the next receiving study becomes stable (or is forced complete), if any is due
/// later than `now`: the assembler sleeps until then (or until an arrival or the worker
/// wakes it), so a study starts within milliseconds of its quiet period ending.
pub fn next_due_ms(state: &State, cfg: &Config, now: i64) -> Result<Option<i64>, StateError> {
    Ok(state
        .studies_in_state(StudyState::Receiving)?
        .iter()
        .map(|s| policy::due_ms(s.last_received_ms, s.opened_ms, cfg))
        .filter(|&due| due > now)
        .min())
}

/// One assembler pass: settle or queue stable studies, then dispatch.
pub fn tick(state: &State, cfg: &Config, tx: &Sender<WorkItem>) -> Result<(), StateError> {
    assemble(state, cfg, now_ms())?;
    dispatch(state, cfg, tx)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::state::InstanceRecord;

    fn cfg() -> Config {
        crate::study::policy::tests::example_config()
    }

    fn rec(series: &str, sop: &str, modality: &str) -> InstanceRecord {
        InstanceRecord {
            sop_uid: sop.into(),
            study_uid: "1.2.3".into(),
            series_uid: series.into(),
            sop_class_uid: crate::config::MR_IMAGE_STORAGE.into(),
            modality: modality.into(),
            transfer_syntax: dicom_dictionary_std::uids::EXPLICIT_VR_LITTLE_ENDIAN.into(),
            series_number: "1".into(),
            series_description: String::new(),
            path: "/x".into(),
            content_hash: format!("sha-{sop}"),
            size: 1,
            calling_ae: "A".into(),
            peer: "p".into(),
        }
    }

    #[test]
    fn stability_qualification_and_dispatch() {
        let d = tempfile::tempdir().unwrap();
        let s = State::open(d.path()).unwrap();
        let c = cfg();
        s.record_instance(&rec("1.2.3.1", "1.2.3.1.1", "MR"))
            .unwrap();
        s.record_instance(&rec("1.2.3.2", "1.2.3.2.1", "CT"))
            .unwrap();
        assert_eq!(assemble(&s, &c, now_ms()).unwrap(), 0, "not quiet yet");
        assert_eq!(assemble(&s, &c, now_ms() + 2000).unwrap(), 0);
        assert_eq!(
            s.study("1.2.3").unwrap().unwrap().state,
            StudyState::NotQualified
        );
        // A second MR series re-opens and qualifies the study.
        s.record_instance(&rec("1.2.3.3", "1.2.3.3.1", "MR"))
            .unwrap();
        assert_eq!(assemble(&s, &c, now_ms() + 2000).unwrap(), 1);
        let (tx, rx) = crossbeam_channel::bounded(1);
        assert_eq!(dispatch(&s, &c, &tx).unwrap(), 1);
        let item = rx.try_recv().unwrap();
        assert_eq!(item.job.instances.len(), 2);
        assert_eq!(item.job.attempt, 1);
        assert!(item.job.predecessors.is_empty());
    }
}
