//! The running node's configuration and its live reload: which sections a reload applies,
//! and which wait for a restart.

use std::sync::{Arc, RwLock};

use super::sources::ResolvedSource;
use super::Config;

/// The live part of the configuration, swapped atomically on reload.
#[derive(Debug, Clone)]
pub struct LiveConfig {
    pub config: Arc<Config>,
    pub sources: Arc<Vec<ResolvedSource>>,
}

/// Shared handle: readers take a snapshot, the watcher replaces it.
#[derive(Clone)]
pub struct SharedConfig(Arc<RwLock<LiveConfig>>);

impl SharedConfig {
    pub fn new(cfg: Config) -> Self {
        let sources = Arc::new(cfg.resolved_sources());
        SharedConfig(Arc::new(RwLock::new(LiveConfig {
            config: Arc::new(cfg),
            sources,
        })))
    }

    pub fn snapshot(&self) -> LiveConfig {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn get(&self) -> Arc<Config> {
        self.snapshot().config
    }

    /// Apply the reloadable parts of `new`; returns what was ignored (restart-only keys).
    pub fn apply(&self, new: Config) -> Vec<String> {
        let mut guard = self.0.write().unwrap_or_else(|e| e.into_inner());
        let (merged, ignored) = merge(&guard.config, new);
        let sources = Arc::new(merged.resolved_sources());
        *guard = LiveConfig {
            config: Arc::new(merged),
            sources,
        };
        ignored
    }
}

/// How the configuration file on disk stands against the configuration in force.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "file", rename_all = "snake_case")]
pub enum OnDisk {
    /// The file says what is in force.
    InForce,
    /// These restart-only sections differ in the file: they apply at the next restart.
    NeedsRestart { sections: Vec<String> },
    /// Live sections differ: the watcher applies them within a second (or failed to).
    NotYetApplied,
    /// The file is refused (the previous configuration stays in force), and why.
    Refused { reason: String },
}

/// Compare the file's configuration (or why it is refused) with `in_force`.
pub fn on_disk(in_force: &Config, file: Result<Config, String>) -> OnDisk {
    match file {
        Err(reason) => OnDisk::Refused { reason },
        Ok(new) => {
            let (merged, ignored) = merge(in_force, new);
            if !ignored.is_empty() {
                OnDisk::NeedsRestart { sections: ignored }
            } else if merged != *in_force {
                OnDisk::NotYetApplied
            } else {
                OnDisk::InForce
            }
        }
    }
}

/// `new`'s live sections on `old`'s restart-only ones, and the restart-only sections that
/// differ in `new`.
fn merge(old: &Config, new: Config) -> (Config, Vec<String>) {
    let mut ignored = Vec::new();
    if new.node != old.node {
        ignored.push("[node]".to_string());
    }
    if new.model != old.model {
        ignored.push("[model]".to_string());
    }
    // The retention policy is live; the rest of [storage] is read when the listener and
    // the spool start.
    let storage = old.storage.with_retention(new.storage.retention());
    if new.storage != storage {
        ignored.push("[storage]".to_string());
    }
    if new.tls != old.tls {
        ignored.push("[tls]".to_string());
    }
    if new.http != old.http {
        ignored.push("[http]".to_string());
    }
    if new.explain != old.explain {
        ignored.push("[explain]".to_string());
    }
    if new.cluster != old.cluster {
        ignored.push("[cluster]".to_string());
    }
    let merged = Config {
        node: old.node.clone(),
        model: old.model.clone(),
        storage,
        tls: old.tls.clone(),
        http: old.http.clone(),
        explain: old.explain.clone(),
        cluster: old.cluster.clone(),
        assembly: new.assembly,
        outbox: new.outbox,
        sources: new.sources,
        destinations: new.destinations,
    };
    (merged, ignored)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::MINIMAL_FOR_TESTS;

    #[test]
    fn the_file_on_disk_against_the_configuration_in_force() {
        let c = Config::parse(Path::new("x.toml"), crate::config::tests::GOOD).unwrap();
        assert_eq!(on_disk(&c, Ok(c.clone())), OnDisk::InForce);
        let mut n = c.clone();
        n.node.listen = "127.0.0.1:1".into();
        n.outbox.max_attempts = 2;
        assert_eq!(
            on_disk(&c, Ok(n)),
            OnDisk::NeedsRestart {
                sections: vec!["[node]".into()]
            }
        );
        let mut n = c.clone();
        n.outbox.max_attempts = 2;
        assert_eq!(on_disk(&c, Ok(n)), OnDisk::NotYetApplied);
        assert_eq!(
            on_disk(&c, Err("bad".into())),
            OnDisk::Refused {
                reason: "bad".into()
            }
        );
    }

    #[test]
    fn retention_keys_are_live_and_the_rest_of_storage_is_not() {
        let c = Config::parse(Path::new("x.toml"), crate::config::tests::GOOD).unwrap();
        let shared = SharedConfig::new(c.clone());
        let mut n = c.clone();
        n.storage.keep_days = 0.5;
        n.storage.evict_below_free_mb = 5000;
        assert_eq!(shared.apply(n.clone()), Vec::<String>::new());
        assert_eq!(shared.get().storage.keep_days, 0.5);
        assert_eq!(shared.get().storage.evict_below_free_mb, 5000);
        n.storage.min_free_mb = 1;
        assert_eq!(shared.apply(n), vec!["[storage]".to_string()]);
        assert_eq!(shared.get().storage.min_free_mb, 100);
        assert_eq!(shared.get().storage.keep_days, 0.5);
    }

    #[test]
    fn reload_keeps_node_section() {
        let c = Config::parse(Path::new("x.toml"), crate::config::tests::GOOD).unwrap();
        let shared = SharedConfig::new(c.clone());
        let mut n = c.clone();
        n.node.listen = "127.0.0.1:1".into();
        n.sources.pop();
        let ignored = shared.apply(n);
        assert_eq!(ignored, vec!["[node]".to_string()]);
        assert_eq!(shared.get().node.listen, "127.0.0.1:11112");
        assert_eq!(shared.get().sources.len(), 1);
    }

    #[test]
    fn live_sections_are_applied_and_the_others_named_in_key_order() {
        let old = Config::parse(Path::new("x.toml"), MINIMAL_FOR_TESTS).unwrap();
        let text = format!(
            "{MINIMAL_FOR_TESTS}\
             [assembly]\nmin_series = 3\n\
             [outbox]\nmax_attempts = 2\n\
             [[destinations]]\nae_title = \"PACS\"\nhost = \"pacs\"\nport = 104\n\
             [storage]\nmin_free_mb = 1\n\
             [explain]\nenabled = true\n\
             [http]\nlisten = \"127.0.0.1:8080\"\n\
             [cluster]\nrole = \"all\"\nservers = [\"nats://n:4222\"]\n"
        )
        .replace("state_dir = \"/tmp/x\"", "state_dir = \"/tmp/y\"")
        .replace("dir = \"/m\"", "dir = \"/n\"");
        let mut new = Config::parse(Path::new("x.toml"), &text).unwrap();
        new.tls = Some(crate::config::TlsSection {
            certificate: "/c.pem".into(),
            private_key: "/k.pem".into(),
            client_ca: None,
            require_client_certificate: None,
        });
        let (merged, ignored) = merge(&old, new.clone());
        assert_eq!(
            ignored,
            [
                "[node]",
                "[model]",
                "[storage]",
                "[tls]",
                "[http]",
                "[explain]",
                "[cluster]"
            ]
        );
        assert_eq!(
            (&merged.node, &merged.model, &merged.storage),
            (&old.node, &old.model, &old.storage)
        );
        assert_eq!(
            (&merged.tls, &merged.http, &merged.explain, &merged.cluster),
            (&old.tls, &old.http, &old.explain, &old.cluster)
        );
        assert_eq!(
            (&merged.assembly, &merged.outbox),
            (&new.assembly, &new.outbox)
        );
        assert_eq!(
            (&merged.sources, &merged.destinations),
            (&new.sources, &new.destinations)
        );
    }
}
