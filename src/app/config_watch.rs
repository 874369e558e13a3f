//! Live reload: the configuration file is watched; a valid change is applied to the
//! sections that may change under a running node, an invalid one is refused and the
//! previous configuration stays in force.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::{error, info, warn};

use crate::config::{Config, SharedConfig};
use crate::net::tls::ContextCheck;

/// Watches the config file; apply valid changes, refuse invalid ones (the old stays).
pub fn watch_config(path: &Path, shared: SharedConfig) -> Option<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let dir = path
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("."));
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let file_name = path.file_name().map(|s| s.to_owned());
    let mut watcher = match notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            if ev
                .paths
                .iter()
                .any(|p| p.file_name() == file_name.as_deref())
            {
                let _ = tx.send(());
            }
        }
    }) {
        Ok(w) => w,
        Err(e) => {
            warn!(error = %e, "cannot watch the configuration file: live reload disabled");
            return None;
        }
    };
    // The directory, not the file: editors and config management replace files by rename.
    if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
        warn!(error = %e, "cannot watch the configuration directory: live reload disabled");
        return None;
    }
    let mut last_text = std::fs::read_to_string(&path).ok();
    std::thread::Builder::new()
        .name("prima-config".into())
        .spawn(move || {
            while rx.recv().is_ok() {
                // Let a burst of events (truncate + write + rename) settle.
                std::thread::sleep(Duration::from_millis(300));
                while rx.try_recv().is_ok() {}
                let text = match std::fs::read_to_string(&path) {
                    Ok(t) => t,
                    Err(e) => {
                        error!(error = %e, "configuration file unreadable: change refused, previous configuration stays");
                        continue;
                    }
                };
                if last_text.as_deref() == Some(text.as_str()) {
                    continue;
                }
                last_text = Some(text.clone());
                match Config::parse_with(&path, &text, &ContextCheck) {
                    Ok(new) => {
                        let ignored = shared.apply(new);
                        let c = shared.get();
                        info!(
                            sources = c.sources.len(),
                            destinations = c.destinations.len(),
                            "configuration reloaded"
                        );
                        if !ignored.is_empty() {
                            warn!(sections = ?ignored, "changes to these sections need a restart and were not applied");
                        }
                    }
                    Err(e) => {
                        error!(error = %e, "configuration change refused: previous configuration stays in force");
                    }
                }
            }
        })
        .ok()?;
    Some(watcher)
}
