//! What the pages and the JSON API show, gathered from the state database, the spooled
//! headers and the run records. One set of types serves both: a page renders exactly what
//! `/api/…` returns.

use std::path::Path;

use dicom_dictionary_std::tags;
use serde::Serialize;
use serde_json::Value;

use crate::job::{OutputKind, RunRecord};

use crate::config::Config;
use crate::store::state::{
    AuditView, DeliveryView, JobView, SeriesView, State, StateError, StudyRow,
};

#[derive(Debug, Serialize)]
pub struct ModelInfo {
    pub name: String,
    pub version: String,
    pub demo: bool,
    pub device: String,
    pub precision: String,
    pub priority_classes: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Overview {
    pub version: &'static str,
    pub ae_title: String,
    pub listen: String,
    pub uptime_s: u64,
    pub model: Option<ModelInfo>,
    pub studies_by_state: Vec<(String, i64)>,
    pub instances: i64,
    pub queue_depth: i64,
    pub outbox_by_state: Vec<(String, i64)>,
    pub free_disk_mb: Option<u64>,
    pub min_free_mb: u64,
    pub storage: StorageView,
    /// Stages of the pipeline that make no progress.
    pub stalled: Vec<crate::store::state::Stall>,
    /// The configuration file, and whether it says what is in force.
    pub config: Option<ConfigView>,
    pub last_error: Option<(i64, String)>,
}

/// The configuration file and how it stands against the configuration in force.
#[derive(Debug, Serialize)]
pub struct ConfigView {
    pub path: String,
    pub on_disk: crate::config::OnDisk,
}

/// Read and check the file as a reload would, and compare it with `in_force`.
pub fn config_view(path: &Path, in_force: &Config) -> Option<ConfigView> {
    let file = std::fs::read_to_string(path)
        .map_err(|e| format!("unreadable: {e}"))
        .and_then(|text| {
            Config::parse_with(path, &text, &crate::net::tls::ContextCheck)
                .map_err(|e| e.to_string())
        });
    Some(ConfigView {
        path: path.display().to_string(),
        on_disk: crate::config::on_disk(in_force, file),
    })
}

/// Disk held by received instances and the retention policy that frees it.
#[derive(Debug, Serialize)]
pub struct StorageView {
    pub usage: crate::store::retention::Usage,
    pub keep_days: f64,
    pub evict_below_free_mb: u64,
    pub evict_until_free_mb: u64,
    /// Why C-STORE will be refused soon, when free space is below `evict_below_free_mb`.
    pub pressure: Option<String>,
}

/// [`StorageView`] of a state directory (the status page and `prima-node status`).
pub fn storage_view(
    state: &State,
    cfg: &Config,
    free_disk_mb: Option<u64>,
) -> Result<StorageView, StateError> {
    let r = cfg.storage.retention();
    let window = crate::store::retention::window_ms(cfg);
    let usage = crate::store::retention::usage(
        &state.holdings()?,
        crate::store::state::now_ms(),
        r.keep_ms(),
        window,
    );
    let pressure = free_disk_mb
        .filter(|&f| f < r.evict_below_free_mb)
        .map(|f| {
            if usage.done_studies + usage.evictable_studies > 0 {
                format!(
                    "{f} MB free, below evict_below_free_mb = {}: finished studies are being evicted",
                    r.evict_below_free_mb
                )
            } else {
                format!(
                    "{f} MB free, below evict_below_free_mb = {}, and nothing can be evicted: {} studies ({} MB) are unfinished, undelivered or still arriving; C-STORE is refused below min_free_mb = {}",
                    r.evict_below_free_mb,
                    usage.pending_studies,
                    usage.pending_bytes / (1024 * 1024),
                    cfg.storage.min_free_mb
                )
            }
        });
    Ok(StorageView {
        usage,
        keep_days: r.keep_days,
        evict_below_free_mb: r.evict_below_free_mb,
        evict_until_free_mb: r.evict_until_free_mb,
        pressure,
    })
}

/// Who and what a study is, from one of its instances' headers. Patient name and ID only
/// when `[http] show_patient_identifiers` is on.
#[derive(Debug, Default, Serialize)]
pub struct StudyHeader {
    pub accession_number: String,
    pub study_date: String,
    pub study_description: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patient_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patient_id: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct StudySummary {
    pub study_uid: String,
    pub state: crate::store::state::StudyState,
    pub reason: Option<String>,
    pub header: StudyHeader,
    pub series: usize,
    pub instances: i64,
    pub first_instance_ms: i64,
    pub last_instance_ms: i64,
    pub runs: i64,
    pub priority: Option<String>,
    /// Highest positive decision margin among the diagnoses, with its label.
    pub top_finding: Option<(String, f64)>,
    /// Last instance to the first result delivered (or, before that, queued), in seconds.
    pub time_to_result_s: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct StudyDetail {
    pub summary: StudySummary,
    pub series: Vec<SeriesView>,
    pub jobs: Vec<JobView>,
    pub deliveries: Vec<DeliveryView>,
    /// Delivery attempts and operator actions, oldest first.
    pub events: Vec<AuditView>,
    /// The latest run record (stage seconds, series used and skipped with reasons).
    pub run: Option<RunRecord>,
    pub has_predictions: bool,
    /// Series whose received instances the retention policy removed.
    pub evicted: Vec<crate::store::state::EvictedSeries>,
    /// Each object sent for the study, and whether it is the current one of its kind.
    pub results: Vec<ResultView>,
}

/// One object the node sent (or is sending) for a study.
#[derive(Debug, Serialize, PartialEq)]
pub struct ResultView {
    pub kind: String,
    pub sop_uid: String,
    /// "destination: state" for each destination.
    pub deliveries: Vec<String>,
    /// From the newest run that produced this kind; earlier ones are replaced by it.
    pub current: bool,
}

/// The study's objects in the order they were queued, the newest of each kind (SR, KOS,
/// card; the newest run's key images) current: a re-run queues its objects after the earlier run's, and an identical
/// re-run keeps the same UID, which stays current.
pub fn results(deliveries: &[DeliveryView]) -> Vec<ResultView> {
    let mut out: Vec<ResultView> = Vec::new();
    for d in deliveries {
        let line = format!("{}: {}", d.destination, d.state.as_str());
        match out.iter_mut().find(|r| r.sop_uid == d.sop_uid) {
            Some(r) => r.deliveries.push(line),
            None => out.push(ResultView {
                kind: d.kind.clone(),
                sop_uid: d.sop_uid.clone(),
                deliveries: vec![line],
                current: false,
            }),
        }
    }
    let newest: Vec<(String, String)> =
        deliveries
            .iter()
            .rev()
            .fold(Vec::new(), |mut seen: Vec<(String, String)>, d| {
                if !seen.iter().any(|(k, _)| *k == d.kind) {
                    seen.push((d.kind.clone(), d.sop_uid.clone()));
                }
                seen
            });
    // Key images come several to a run, queued after the run's SR: those queued after the
    // newest SR are the newest run's.
    let last_sr = deliveries
        .iter()
        .rposition(|d| d.kind == OutputKind::Sr.as_str());
    for r in &mut out {
        r.current = if r.kind == OutputKind::KeyImage.as_str() {
            deliveries
                .iter()
                .enumerate()
                .any(|(i, d)| d.sop_uid == r.sop_uid && last_sr.is_none_or(|s| i > s))
        } else {
            newest.iter().any(|(k, u)| *k == r.kind && *u == r.sop_uid)
        };
    }
    out
}

pub fn model_info(cfg: &Config) -> Option<ModelInfo> {
    let m = crate::model::Manifest::read(&cfg.model.dir.join(crate::model::prima::MANIFEST_FILE))
        .ok()?;
    Some(ModelInfo {
        name: m.model_name,
        version: m.model_version,
        demo: m.demo,
        device: cfg.model.device.clone(),
        // The node runs the model at the default precision.
        precision: crate::model::ModelOptions::default()
            .precision
            .as_str()
            .to_string(),
        priority_classes: m.priority_classes,
    })
}

pub fn overview(
    state: &State,
    cfg: &Config,
    model: Option<ModelInfo>,
    uptime_s: u64,
) -> Result<Overview, StateError> {
    let c = state.counts()?;
    let free_disk_mb = crate::store::durable::free_mb(&cfg.node.state_dir).ok();
    Ok(Overview {
        version: env!("CARGO_PKG_VERSION"),
        ae_title: cfg.node.ae_title.clone(),
        listen: cfg.node.listen.clone(),
        uptime_s,
        model,
        studies_by_state: c.studies,
        instances: c.instances,
        queue_depth: state.queue_depth()?,
        outbox_by_state: c.outbox,
        free_disk_mb,
        min_free_mb: cfg.storage.min_free_mb,
        storage: storage_view(state, cfg, free_disk_mb)?,
        stalled: state.stalls(cfg)?,
        config: None,
        last_error: state.last_error()?,
    })
}

fn header_of(state: &State, study_uid: &str, show_ids: bool) -> (StudyHeader, i64) {
    let (n, first) = state.study_files(study_uid).unwrap_or((0, None));
    let Some(first) = first else {
        return (StudyHeader::default(), n);
    };
    // Decoded by its Specific Character Set: names in ISO 2022 or GB18030 read as the
    // patient's, not as Latin-1.
    let Ok(obj) = crate::imaging::charset::open_header(&first) else {
        return (StudyHeader::default(), n);
    };
    let get = |t| {
        obj.element(t)
            .ok()
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
            .unwrap_or_default()
    };
    let h = StudyHeader {
        accession_number: get(tags::ACCESSION_NUMBER),
        study_date: get(tags::STUDY_DATE),
        study_description: get(tags::STUDY_DESCRIPTION),
        patient_name: show_ids.then(|| get(tags::PATIENT_NAME)),
        patient_id: show_ids.then(|| get(tags::PATIENT_ID)),
    };
    (h, n)
}

fn read_json<T: serde::de::DeserializeOwned>(p: &Path) -> Option<T> {
    serde_json::from_slice(&std::fs::read(p).ok()?).ok()
}

/// Priority (argmax) and top positive finding from upstream-format predictions.
fn interpret(pred: &Value) -> (Option<String>, Option<(String, f64)>) {
    let first = |v: &Value| v.as_array().and_then(|a| a.first()).and_then(Value::as_f64);
    let best = |section: &str| -> Option<(String, f64)> {
        pred.get(section)?
            .as_object()?
            .iter()
            .filter_map(|(k, v)| first(v).map(|x| (k.clone(), x)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
    };
    let priority = best("priority").map(|(c, _)| c);
    let top = best("diagnosis").filter(|(_, m)| *m > 0.0);
    (priority, top)
}

fn summary(state: &State, row: StudyRow, state_dir: &Path, show_ids: bool) -> StudySummary {
    let (header, instances) = header_of(state, &row.study_uid, show_ids);
    let series = state
        .series_view(&row.study_uid)
        .map(|s| s.len())
        .unwrap_or(0);
    let dir = crate::store::outbox::results_dir_in(state_dir, &row.study_uid);
    let (priority, top_finding) = read_json(&dir.join("predictions.json"))
        .map(|p| interpret(&p))
        .unwrap_or((None, None));
    let deliveries = state.deliveries_of(&row.study_uid).unwrap_or_default();
    let delivered = deliveries.iter().filter_map(|d| d.delivered_ms).min();
    let finished = state
        .jobs_view(&row.study_uid)
        .unwrap_or_default()
        .iter()
        .filter(|j| j.error.is_none())
        .filter_map(|j| j.finished_ms)
        .max();
    let time_to_result_s = delivered
        .or(finished)
        .map(|t| (t - row.last_received_ms).max(0) as f64 / 1000.0);
    StudySummary {
        study_uid: row.study_uid,
        state: row.state,
        reason: row.reason,
        header,
        series,
        instances,
        first_instance_ms: row.first_received_ms,
        last_instance_ms: row.last_received_ms,
        runs: row.runs,
        priority,
        top_finding,
        time_to_result_s,
    }
}

pub fn studies(
    state: &State,
    state_dir: &Path,
    filter: Option<&str>,
    page: i64,
    per_page: i64,
    show_ids: bool,
) -> Result<Vec<StudySummary>, StateError> {
    let rows = state.studies_page(filter, per_page, page * per_page)?;
    Ok(rows
        .into_iter()
        .map(|r| summary(state, r, state_dir, show_ids))
        .collect())
}

pub fn study(
    state: &State,
    state_dir: &Path,
    study_uid: &str,
    show_ids: bool,
) -> Result<Option<StudyDetail>, StateError> {
    let Some(row) = state.study(study_uid)? else {
        return Ok(None);
    };
    let dir = crate::store::outbox::results_dir_in(state_dir, study_uid);
    let deliveries = state.deliveries_of(study_uid)?;
    Ok(Some(StudyDetail {
        summary: summary(state, row, state_dir, show_ids),
        series: state.series_view(study_uid)?,
        jobs: state.jobs_view(study_uid)?,
        results: results(&deliveries),
        deliveries,
        events: state.audit_of_study(study_uid)?,
        run: read_json(&dir.join("run.json")),
        has_predictions: dir.join("predictions.json").is_file(),
        evicted: state.evicted_series_of(study_uid)?,
    }))
}

pub fn outbox(state: &State) -> Result<Vec<DeliveryView>, StateError> {
    state.open_deliveries(500)
}

pub fn associations(state: &State) -> Result<Vec<AuditView>, StateError> {
    state.audit_view(200)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_object_of_each_kind_is_current() {
        let d = |id: i64, kind: &str, sop: &str, dest: &str| DeliveryView {
            id,
            study_uid: "s".into(),
            sop_uid: sop.into(),
            kind: kind.into(),
            destination: dest.into(),
            state: crate::store::state::OutboxState::Done,
            attempts: 1,
            next_attempt_ms: 0,
            last_error: None,
            delivered_ms: Some(1),
        };
        let list = [
            d(1, "sr", "1.1", "PACS"),
            d(2, "kos", "1.2", "PACS"),
            d(3, "sr", "1.1", "ARCHIVE"),
            // The re-run after a late series: a new SR and KOS.
            d(4, "sr", "2.1", "PACS"),
            d(5, "kos", "2.2", "PACS"),
        ];
        let r = results(&list);
        let view: Vec<(&str, bool, usize)> = r
            .iter()
            .map(|r| (r.sop_uid.as_str(), r.current, r.deliveries.len()))
            .collect();
        assert_eq!(
            view,
            [
                ("1.1", false, 2),
                ("1.2", false, 1),
                ("2.1", true, 1),
                ("2.2", true, 1)
            ]
        );
        // Key images: all of the newest run's are current, none of the earlier run's.
        let with_keys = [
            d(1, "sr", "1.1", "PACS"),
            d(2, "keyimage", "1.3", "PACS"),
            d(3, "keyimage", "1.4", "PACS"),
            d(4, "sr", "2.1", "PACS"),
            d(5, "keyimage", "2.3", "PACS"),
            d(6, "keyimage", "2.4", "PACS"),
        ];
        let current: Vec<String> = results(&with_keys)
            .into_iter()
            .filter(|r| r.current)
            .map(|r| r.sop_uid)
            .collect();
        assert_eq!(current, ["2.1", "2.3", "2.4"]);
        // A run that lowered the priority below kos_min_priority still sends a KOS
        // (report::emits_kos), so an earlier KOS is never left current by mistake.
        assert!(results(&list[..3]).iter().all(|r| r.current));
    }

    #[test]
    fn priority_is_the_argmax_and_only_positive_findings_count() {
        let p: Value = serde_json::from_str(
            r#"{"diagnosis":{"a":[-0.5],"b":[0.25],"c":[0.75]},"priority":{"none":[0.1],"low":[0.9],"high":[0.3]}}"#,
        )
        .unwrap();
        assert_eq!(
            interpret(&p),
            (Some("low".into()), Some(("c".into(), 0.75)))
        );
        let p: Value =
            serde_json::from_str(r#"{"diagnosis":{"a":[-0.5]},"priority":{"none":[1.0]}}"#)
                .unwrap();
        assert_eq!(interpret(&p), (Some("none".into()), None));
    }
}
