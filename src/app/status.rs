//! `prima-node check-config` and `prima-node status`: read-only views of a configuration
//! and of a node's state.

use std::path::Path;
use std::time::Duration;

use super::AppError;
use crate::config::{Config, ConfigError};
use crate::net::tls::ContextCheck;
use crate::store::state::{self, State};

/// `prima-node check-config`: the parsed configuration or every problem found.
pub fn check_config(path: &Path) -> Result<(Config, Vec<String>), ConfigError> {
    let cfg = Config::load_with(path, &ContextCheck)?;
    let mut notes = Vec::new();
    if !cfg.model.dir.exists() {
        notes.push(format!(
            "note: [model] dir {} does not exist (yet)",
            cfg.model.dir.display()
        ));
    }
    if let Some(h) = &cfg.http {
        if h.open_reads {
            notes.push(format!(
                "warning: [http] open_reads: anyone who can reach {} (any local account) reads the studies, patient data included",
                h.listen
            ));
        } else if h.token_file.is_none() {
            notes.push(
                "note: [http] has no token_file: the status pages and API answer 401 to everyone"
                    .into(),
            );
        }
    }
    if cfg.destinations.is_empty() {
        notes
            .push("note: no [[destinations]]: results are kept in the state directory only".into());
    }
    Ok((cfg, notes))
}

/// The cluster's view for `status`, or why there is none.
fn cluster_status(c: &crate::config::ClusterSection, ae_title: &str) -> String {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return format!("cluster: cannot start a runtime: {e}\n"),
    };
    rt.block_on(async {
        let got = tokio::time::timeout(Duration::from_secs(10), async {
            let cl = crate::cluster::connect(c, ae_title).await?;
            crate::cluster::view::view(&cl).await
        })
        .await;
        match got {
            Ok(Ok(v)) => v.text(),
            Ok(Err(e)) => format!("cluster: unreachable: {e}\n"),
            Err(_) => "cluster: unreachable: timed out after 10 s\n".into(),
        }
    })
}

/// `prima-node status`: studies by state and the outbox, as text.
pub fn status_report(config_path: &Path) -> Result<String, AppError> {
    use std::fmt::Write;
    let cfg = Config::load_with(config_path, &ContextCheck)?;
    let state = State::open_read_only(&cfg.node.state_dir)?;
    let c = state.counts()?;
    let mut out = String::new();
    if let Some(cl) = &cfg.cluster {
        out.push_str(&cluster_status(cl, &cfg.node.ae_title));
    }
    let _ = writeln!(out, "state: {}", cfg.node.state_dir.display());
    let _ = writeln!(out, "instances: {}", c.instances);
    let _ = writeln!(
        out,
        "quarantined files: {} (in {})",
        crate::store::recover::quarantined_count(&cfg.node.state_dir),
        crate::store::recover::quarantine_dir(&cfg.node.state_dir).display()
    );
    let free = crate::store::durable::free_mb(&cfg.node.state_dir).ok();
    let v = crate::http::data::storage_view(&state, &cfg, free)?;
    let (u, mb) = (&v.usage, |b: u64| b / (1024 * 1024));
    let _ = writeln!(
        out,
        "disk: {} MB free (refused below {} MB; evicting below {} MB until {} MB)",
        free.map_or("?".into(), |f| f.to_string()),
        cfg.storage.min_free_mb,
        v.evict_below_free_mb,
        v.evict_until_free_mb
    );
    let _ = writeln!(
        out,
        "received instances held: pending {} studies {} MB, done {} studies {} MB (kept {} days), evictable {} studies {} MB",
        u.pending_studies,
        mb(u.pending_bytes),
        u.done_studies,
        mb(u.done_bytes),
        v.keep_days,
        u.evictable_studies,
        mb(u.evictable_bytes)
    );
    let _ = writeln!(
        out,
        "oldest study held: {}; next eviction by age: {}",
        u.oldest_held_ms.map_or("none".into(), state::utc_text),
        u.next_eviction_ms
            .map_or("none due".into(), state::utc_text)
    );
    if let Some(p) = &v.pressure {
        let _ = writeln!(out, "disk pressure: {p}");
    }
    let _ = writeln!(out, "studies by state:");
    if c.studies.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for (s, n) in &c.studies {
        let _ = writeln!(out, "  {s:<14} {n}");
    }
    let _ = writeln!(out, "studies:");
    for s in state.all_studies()? {
        let _ = writeln!(
            out,
            "  {:<64} {:<14} runs={}{}",
            s.study_uid,
            s.state,
            s.runs,
            s.reason.map(|r| format!(" ({r})")).unwrap_or_default()
        );
    }
    let _ = writeln!(out, "outbox by state:");
    if c.outbox.is_empty() {
        let _ = writeln!(out, "  (empty)");
    }
    for (s, n) in &c.outbox {
        let _ = writeln!(out, "  {s:<14} {n}");
    }
    let _ = writeln!(out, "outbox:");
    let now = state::now_ms();
    for r in state.all_outbox()? {
        let next = if r.state == state::OutboxState::Pending {
            format!(
                " next attempt in {:.1}s",
                ((r.next_attempt_ms - now).max(0)) as f64 / 1000.0
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "  {:<64} -> {} {} attempts={}{}{}",
            r.sop_uid,
            r.destination,
            r.state,
            r.attempts,
            next,
            r.last_error
                .map(|e| format!(" last_error: {e}"))
                .unwrap_or_default()
        );
    }
    Ok(out)
}
