//! The overview's sections about the node itself rather than its studies: whether the
//! configuration file is what runs, stalled stages of the pipeline, and the disk held by
//! received instances with the retention policy.

use super::data::{ConfigView, StorageView};
use super::html::{when, Html};
use crate::config::OnDisk;
use crate::store::state::Stall;

/// The configuration file against the configuration in force.
pub(super) fn config(h: &mut Html, c: &ConfigView) {
    let (warn, text) = match &c.on_disk {
        OnDisk::InForce => (false, format!("Configuration {}: in force.", c.path)),
        OnDisk::NeedsRestart { sections } => (
            true,
            format!(
                "Configuration {}: the file differs in {} — applied at the next restart; the running node uses what it started with.",
                c.path,
                sections.join(", ")
            ),
        ),
        OnDisk::NotYetApplied => (
            true,
            format!("Configuration {}: the file's live sections are being applied.", c.path),
        ),
        OnDisk::Refused { reason } => (
            true,
            format!(
                "Configuration {}: the file is refused ({reason}); the previous configuration stays in force.",
                c.path
            ),
        ),
    };
    let attrs: &[(&str, &str)] = if warn { &[("class", "warn")] } else { &[] };
    h.text_el("p", attrs, &text);
}

/// One warning line per stalled stage.
pub(super) fn stalled(h: &mut Html, stalled: &[Stall]) {
    for s in stalled {
        h.text_el(
            "p",
            &[("class", "warn")],
            &format!("Stalled: {} — {}", s.stage, s.detail),
        );
    }
}

/// Disk held by received instances, by where their studies stand, and the policy.
pub(super) fn storage(h: &mut Html, v: &StorageView) {
    let mb = |b: u64| format!("{} MB", b / (1024 * 1024));
    let u = &v.usage;
    h.text_el("h2", &[], "Storage");
    if let Some(p) = &v.pressure {
        h.text_el("p", &[("class", "warn")], p);
    }
    let rows = vec![
        vec![
            "pending (unfinished, undelivered or still arriving; never evicted)".into(),
            u.pending_studies.to_string().into(),
            mb(u.pending_bytes).into(),
        ],
        vec![
            format!(
                "done (kept {} days; evicted earlier under disk pressure)",
                v.keep_days
            )
            .into(),
            u.done_studies.to_string().into(),
            mb(u.done_bytes).into(),
        ],
        vec![
            "evictable (past keep_days)".into(),
            u.evictable_studies.to_string().into(),
            mb(u.evictable_bytes).into(),
        ],
    ];
    h.table(&["received instances", "studies", "disk"], &rows);
    let rows = vec![
        vec![
            "oldest study held".into(),
            u.oldest_held_ms.map_or("none".into(), when).into(),
        ],
        vec![
            "next eviction by age".into(),
            u.next_eviction_ms.map_or("none due".into(), when).into(),
        ],
        vec![
            "disk pressure eviction".into(),
            format!(
                "below {} MB free, until {} MB",
                v.evict_below_free_mb, v.evict_until_free_mb
            )
            .into(),
        ],
    ];
    h.table(&[], &rows);
}
