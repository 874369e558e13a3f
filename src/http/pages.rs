//! The pages: each renders one `data` value with the escaping builder.

use super::data::{Overview, StudyDetail, StudySummary};
use super::html::{page, when, Cell, Html};
use super::node_health;
use crate::job::RunRecord;
use crate::store::state::{AuditView, DeliveryView};

fn opt(s: &Option<String>) -> String {
    s.clone().unwrap_or_default()
}

fn study_link(uid: &str) -> String {
    format!("/studies/{uid}")
}

pub fn overview(o: &Overview) -> String {
    page("Overview", |h| {
        let model = match &o.model {
            Some(m) => format!(
                "{} {}{} — device {}, {}, priority classes {}",
                m.name,
                m.version,
                if m.demo {
                    " (DEMO MODEL — NOT FOR CLINICAL USE)"
                } else {
                    ""
                },
                m.device,
                m.precision,
                m.priority_classes.join("/")
            ),
            None => "manifest not readable".into(),
        };
        let disk = match o.free_disk_mb {
            Some(f) => format!("{f} MB free (floor {} MB)", o.min_free_mb),
            None => "unknown".into(),
        };
        let rows = vec![
            vec!["version".into(), format!("prima-node {}", o.version).into()],
            vec!["model".into(), model.into()],
            vec![
                "listener".into(),
                format!("{} on {}", o.ae_title, o.listen).into(),
            ],
            vec!["uptime".into(), format!("{} s", o.uptime_s).into()],
            vec!["instances".into(), o.instances.to_string().into()],
            vec!["job queue".into(), o.queue_depth.to_string().into()],
            vec!["disk".into(), disk.into()],
            vec![
                "last error".into(),
                o.last_error
                    .as_ref()
                    .map(|(t, e)| format!("{} — {e}", when(*t)))
                    .unwrap_or_else(|| "none".into())
                    .into(),
            ],
        ];
        h.table(&[], &rows);
        if let Some(c) = &o.config {
            node_health::config(h, c);
        }
        node_health::stalled(h, &o.stalled);
        h.text_el("h2", &[], "Studies by state");
        let rows: Vec<Vec<Cell>> = o
            .studies_by_state
            .iter()
            .map(|(s, n)| {
                vec![
                    Cell::Link(format!("/studies?state={s}"), s.clone()),
                    n.to_string().into(),
                ]
            })
            .collect();
        h.table(&["state", "studies"], &rows);
        node_health::storage(h, &o.storage);
        h.text_el("h2", &[], "Outbox");
        let rows: Vec<Vec<Cell>> = o
            .outbox_by_state
            .iter()
            .map(|(s, n)| vec![s.as_str().into(), n.to_string().into()])
            .collect();
        h.table(&["state", "deliveries"], &rows);
    })
}

fn summary_row(s: &StudySummary) -> Vec<Cell> {
    let who = match (&s.header.patient_name, &s.header.patient_id) {
        (Some(n), Some(i)) => format!("{n} ({i}) "),
        _ => String::new(),
    };
    vec![
        Cell::Link(
            study_link(&s.study_uid),
            format!(
                "{who}acc. {} — {}",
                if s.header.accession_number.is_empty() {
                    "none"
                } else {
                    &s.header.accession_number
                },
                s.header.study_date
            ),
        ),
        s.header.study_description.as_str().into(),
        s.state.as_str().into(),
        format!("{} / {}", s.series, s.instances).into(),
        when(s.first_instance_ms).into(),
        when(s.last_instance_ms).into(),
        opt(&s.priority).into(),
        s.top_finding
            .as_ref()
            .map(|(l, m)| format!("{l} ({m:.3})"))
            .unwrap_or_default()
            .into(),
        s.time_to_result_s
            .map(|t| format!("{t:.1} s"))
            .unwrap_or_default()
            .into(),
    ]
}

const SUMMARY_HEAD: [&str; 9] = [
    "study",
    "description",
    "state",
    "series / instances",
    "first instance",
    "last instance",
    "priority",
    "top finding (margin)",
    "time to result",
];

pub fn studies(list: &[StudySummary], filter: Option<&str>, page_no: i64, per: i64) -> String {
    page("Studies", |h| {
        h.el("form", &[("method", "get"), ("action", "/studies")], |f| {
            f.text("State: ");
            f.el("select", &[("name", "state")], |s| {
                for st in [
                    "",
                    "receiving",
                    "queued",
                    "processing",
                    "done",
                    "failed",
                    "not_qualified",
                ] {
                    let label = if st.is_empty() { "all" } else { st };
                    if filter == Some(st) {
                        s.text_el("option", &[("value", st), ("selected", "selected")], label);
                    } else {
                        s.text_el("option", &[("value", st)], label);
                    }
                }
            });
            f.void("input", &[("type", "submit"), ("value", "Filter")]);
        });
        let rows: Vec<Vec<Cell>> = list.iter().map(summary_row).collect();
        h.table(&SUMMARY_HEAD, &rows);
        let q = filter.map(|f| format!("state={f}&")).unwrap_or_default();
        if page_no > 0 {
            h.text_el(
                "a",
                &[("href", &format!("/studies?{q}page={}", page_no - 1))],
                "newer",
            );
            h.text(" ");
        }
        if list.len() as i64 == per {
            h.text_el(
                "a",
                &[("href", &format!("/studies?{q}page={}", page_no + 1))],
                "older",
            );
        }
    })
}

fn action_form(h: &mut Html, action: &str, fields: &[(&'static str, &str)], label: &str) {
    h.el("form", &[("method", "post"), ("action", action)], |f| {
        for (k, v) in fields {
            f.void("input", &[("type", "hidden"), ("name", k), ("value", v)]);
        }
        f.void(
            "input",
            &[
                ("type", "password"),
                ("name", "token"),
                ("placeholder", "token"),
                ("autocomplete", "off"),
            ],
        );
        f.void("input", &[("type", "submit"), ("value", label)]);
    });
}

/// Seconds per stage of a run record, in pipeline order, with the background's.
fn stages(run: &RunRecord) -> Vec<Vec<Cell>> {
    let t = &run.timings;
    let label = |stage: &'static str| match stage {
        "vqvae" => "VQ-VAE",
        "prima" => "HierViT + heads",
        other => other,
    };
    let row = |label: &str, s: f64| vec![label.to_string().into(), format!("{s:.3} s").into()];
    let mut rows = Vec::new();
    for (stage, s) in t.stages() {
        if stage == "prepare" {
            if let Some(bg) = t.prepare_speculative_s {
                rows.push(row("prepare (in the background, while receiving)", bg));
            }
        }
        rows.push(row(label(stage), s));
    }
    rows
}

/// The volumes the latest run read: a split series shows one row per volume used.
fn used(run: &RunRecord) -> Vec<Vec<Cell>> {
    run.series
        .iter()
        .map(|s| {
            vec![
                s.series_instance_uid.clone().into(),
                s.volume.clone().into(),
                s.name.clone().into(),
                s.instances_used.to_string().into(),
            ]
        })
        .collect()
}

fn skipped(run: &RunRecord) -> Vec<Vec<Cell>> {
    run.skipped
        .iter()
        .map(|s| {
            vec![
                s.series_instance_uid.clone().unwrap_or_default().into(),
                s.reason.clone().into(),
            ]
        })
        .collect()
}

pub fn study(d: &StudyDetail, actions: bool) -> String {
    let s = &d.summary;
    page("Study", |h| {
        h.table(&SUMMARY_HEAD, &[summary_row(s)]);
        h.text_el("p", &[], &format!("Study Instance UID {}", s.study_uid));
        if let Some(r) = &s.reason {
            h.text_el("p", &[("class", "warn")], &format!("Reason: {r}"));
        }
        if !d.results.is_empty() {
            h.text_el("h2", &[], "Results sent");
            let rows: Vec<Vec<Cell>> = d
                .results
                .iter()
                .map(|r| {
                    let status = if r.current { "current" } else { "replaced" };
                    vec![
                        r.kind.as_str().into(),
                        status.into(),
                        r.deliveries.join(", ").into(),
                        r.sop_uid.as_str().into(),
                    ]
                })
                .collect();
            h.table(
                &["object", "status", "destinations", "SOP Instance UID"],
                &rows,
            );
        }
        h.text_el("h2", &[], "Timeline");
        h.table(&["event", "time (UTC)"], &timeline(d));
        if let Some(run) = &d.run {
            h.text_el("h2", &[], "Stages of the latest run");
            h.table(&["stage", "seconds"], &stages(run));
            if let Some(why) = &run.not_analysed {
                h.text_el("p", &[("class", "warn")], &format!("Not analysed: {why}"));
            }
            let u = used(run);
            if !u.is_empty() {
                h.text_el("h2", &[], "Volumes used");
                h.table(&["series", "volume", "name", "images"], &u);
            }
            let sk = skipped(run);
            if !sk.is_empty() {
                h.text_el("h2", &[], "Series skipped");
                h.table(&["series", "reason"], &sk);
            }
        }
        if !d.evicted.is_empty() {
            h.text_el("h2", &[], "Received instances removed (retention policy)");
            let rows: Vec<Vec<Cell>> = d
                .evicted
                .iter()
                .map(|e| {
                    vec![
                        e.series_uid.as_str().into(),
                        e.instances.to_string().into(),
                        format!("{} MB", e.bytes / (1024 * 1024)).into(),
                        when(e.evicted_ms).into(),
                        e.reason.as_str().into(),
                    ]
                })
                .collect();
            h.table(
                &["series", "instances", "disk", "removed (UTC)", "reason"],
                &rows,
            );
        }
        h.text_el("h2", &[], "Series received");
        h.table(
            &["number", "modality", "description", "instances", "UID"],
            &series_rows(d),
        );
        links(h, d);
        if actions {
            action_form(
                h,
                "/actions/rerun-study",
                &[("study_uid", &s.study_uid)],
                "Re-run this study",
            );
        }
    })
}

/// The study's timeline: reception, jobs, audit events and open deliveries, in time order.
fn timeline(d: &StudyDetail) -> Vec<Vec<Cell>> {
    let s = &d.summary;
    let mut events: Vec<(i64, String)> = vec![
        (s.first_instance_ms, "first instance received".into()),
        (s.last_instance_ms, "last instance received".into()),
    ];
    for j in &d.jobs {
        let forced = if j.forced { ", forced" } else { "" };
        events.push((
            j.created_ms,
            format!("job {} queued (quiet period over{forced})", j.id),
        ));
        if let Some(t) = j.started_ms {
            events.push((t, format!("job {} started (try {})", j.id, j.attempt)));
        }
        if let Some(t) = j.finished_ms {
            let what = match &j.error {
                Some(e) => format!("job {} failed: {e}", j.id),
                None => format!("job {} done, outputs built ({})", j.id, j.state),
            };
            events.push((t, what));
        }
    }
    for e in &d.events {
        events.push((
            e.at_ms,
            match &e.peer {
                Some(p) => format!("{} ({p}): {}", e.event, opt(&e.detail)),
                None => format!("{}: {}", e.event, opt(&e.detail)),
            },
        ));
    }
    for o in d
        .deliveries
        .iter()
        .filter(|o| o.state != crate::store::state::OutboxState::Done)
    {
        let error = o
            .last_error
            .as_ref()
            .map(|e| format!(", last error: {e}"))
            .unwrap_or_default();
        events.push((
            o.next_attempt_ms,
            format!(
                "{} to {}: {} after {} attempt(s){error}, next attempt",
                o.kind, o.destination, o.state, o.attempts
            ),
        ));
    }
    // Stable: events of the same millisecond keep the order they happen in.
    events.sort_by_key(|(t, _)| *t);
    events
        .into_iter()
        .map(|(t, what)| vec![what.into(), when(t).into()])
        .collect()
}

fn series_rows(d: &StudyDetail) -> Vec<Vec<Cell>> {
    d.series
        .iter()
        .map(|x| {
            vec![
                x.series_number.as_str().into(),
                x.modality.as_str().into(),
                x.description.as_str().into(),
                x.instances.to_string().into(),
                x.series_uid.as_str().into(),
            ]
        })
        .collect()
}

/// Links to the study's JSON files and to this page as JSON.
fn links(h: &mut Html, d: &StudyDetail) {
    let s = &d.summary;
    h.el("p", &[], |p| {
        if d.has_predictions {
            p.text_el(
                "a",
                &[(
                    "href",
                    &format!("{}/predictions.json", study_link(&s.study_uid)),
                )],
                "predictions (JSON)",
            );
            p.text(" · ");
        }
        if d.run.is_some() {
            p.text_el(
                "a",
                &[("href", &format!("{}/run.json", study_link(&s.study_uid)))],
                "run record (JSON)",
            );
            p.text(" · ");
        }
        p.text_el(
            "a",
            &[("href", &format!("/api{}", study_link(&s.study_uid)))],
            "this page as JSON",
        );
    });
}

fn delivery_rows(list: &[DeliveryView]) -> Vec<Vec<Cell>> {
    list.iter()
        .map(|o| {
            vec![
                o.id.to_string().into(),
                Cell::Link(study_link(&o.study_uid), o.study_uid.clone()),
                o.kind.as_str().into(),
                o.destination.as_str().into(),
                o.state.as_str().into(),
                o.attempts.to_string().into(),
                when(o.next_attempt_ms).into(),
                opt(&o.last_error).into(),
            ]
        })
        .collect()
}

pub fn outbox(list: &[DeliveryView], actions: bool) -> String {
    page("Outbox", |h| {
        h.text_el(
            "p",
            &[],
            &format!("{} deliveries pending or failed", list.len()),
        );
        h.table(
            &[
                "id",
                "study",
                "object",
                "destination",
                "state",
                "attempts",
                "next attempt",
                "last error",
            ],
            &delivery_rows(list),
        );
        if actions {
            for o in list {
                action_form(
                    h,
                    "/actions/retry-delivery",
                    &[("id", &o.id.to_string())],
                    &format!("Retry {} now", o.id),
                );
            }
        }
    })
}

/// The cluster as the ingest node last saw it (`None`: a single node).
pub fn cluster(snap: Option<&crate::cluster::view::Snapshot>) -> String {
    page("Cluster", |h| {
        let Some(snap) = snap else {
            h.text_el(
                "p",
                &[],
                "A single node: no [cluster] section, so nothing is shared with other nodes.",
            );
            return;
        };
        if let Some(e) = &snap.error {
            h.text_el(
                "p",
                &[("class", "warn")],
                &format!("The cluster cannot be read now: {e}"),
            );
        }
        let Some(v) = &snap.view else {
            h.text_el("p", &[], "Not connected to the cluster yet.");
            return;
        };
        let counts = crate::cluster::view::counts_text;
        let rows: Vec<Vec<Cell>> = vec![
            vec![
                "this node".into(),
                format!("{} (role {})", v.node, v.role).into(),
            ],
            vec!["connected to".into(), v.server.as_str().into()],
            vec!["seen at".into(), when(snap.taken_ms).into()],
            vec!["studies".into(), counts(&v.studies).into()],
            vec!["results".into(), counts(&v.results).into()],
            vec![
                "jobs".into(),
                format!(
                    "{} waiting, {} running; {} worker(s) idle",
                    v.jobs_waiting, v.jobs_running, v.workers_idle
                )
                .into(),
            ],
        ];
        h.table(&[], &rows);
        h.text_el("h2", &[], "Latest failures");
        let failures: Vec<Vec<Cell>> = v
            .failures
            .iter()
            .map(|(study, why)| vec![study.as_str().into(), why.as_str().into()])
            .collect();
        h.table(&["study", "reason"], &failures);
    })
}

pub fn associations(list: &[AuditView]) -> String {
    page("Associations and actions (audit trail)", |h| {
        let rows: Vec<Vec<Cell>> = list
            .iter()
            .map(|a| {
                vec![
                    when(a.at_ms).into(),
                    a.event.as_str().into(),
                    opt(&a.calling_ae).into(),
                    opt(&a.peer).into(),
                    opt(&a.study_uid).into(),
                    opt(&a.detail).into(),
                ]
            })
            .collect();
        h.table(
            &[
                "time (UTC)",
                "event",
                "calling AE",
                "peer",
                "study",
                "detail",
            ],
            &rows,
        );
    })
}
