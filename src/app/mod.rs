//! `prima-node serve`: build every part of the node from the configuration, run it, and
//! drain it on SIGTERM. What runs depends on the role:
//!
//! - the single node (no `[cluster]`) and a cluster ingest node (`ingest`, `all`): the
//!   DICOM listener on a tokio runtime, the state rebuilt from SQLite and the spool, the
//!   processing ([`roles::spawn_processing`]: the worker, or the cluster thread), the
//!   assembler thread ([`assembler`]), the sender, the config watcher ([`config_watch`]) and
//!   the status page ([`listeners`]);
//! - a worker-only cluster member ([`roles::serve_cluster_worker`]): the worker only;
//! - the model process `prima-node worker` ([`roles::serve_model_process`]), which `serve`
//!   starts to run the model.
//!
//! [`status`] answers `check-config` and `status`; [`lifecycle`] speaks to systemd.

mod assembler;
pub mod config_watch;
mod descriptors;
pub mod lifecycle;
mod listeners;
mod retention;
pub mod roles;
pub mod status;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tracing::info;

use crate::config::{ClusterRole, Config, ConfigError, SharedConfig};
use crate::job::{ProcessError, ProcessorFactory, WorkItem};
use crate::net::{scu, tls::ContextCheck};
use crate::store::outbox::Outbox;
use crate::store::spool::{Spool, SpoolError};
use crate::store::state::{State, StateError};
use listeners::{HttpLinks, ListenerLinks, Listeners};
use roles::ProcessingLinks;

pub use roles::{serve_cluster_worker, serve_model_process};
pub use status::{check_config, status_report};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error(
        "the open-file limit ({limit}) is below the {need} descriptors the configured limits may need ({budget:?}): raise LimitNOFILE= (ulimit -n) or lower [node] max_associations or [http] max_connections"
    )]
    Descriptors {
        limit: u64,
        need: u64,
        budget: descriptors::Budget,
    },
}

/// Runs the node until SIGTERM/SIGINT. `make_processor` is called once, on the worker
/// thread, to build the processor (in `prima-node serve`: start the model process).
pub fn serve(config_path: &Path, make_processor: ProcessorFactory) -> Result<(), AppError> {
    let cfg = Config::load_with(config_path, &ContextCheck)?;
    descriptors::ensure(&cfg)?;
    if cfg
        .cluster
        .as_ref()
        .is_some_and(|c| c.role == ClusterRole::Worker)
    {
        return serve_cluster_worker(config_path, cfg, make_processor);
    }
    Node::build(config_path, cfg, make_processor)?.run()
}

/// An ingest node (single or clustered), built and not yet listening.
struct Node {
    config_path: std::path::PathBuf,
    cfg: Config,
    shared: SharedConfig,
    spool: Spool,
    state: Arc<State>,
    stop: Arc<AtomicBool>,
    /// Threads joined at shutdown: the assembler, the sender and retention.
    joined: Vec<JoinHandle<()>>,
    /// Threads left to end with the process (the cluster's, which stop on `stop`).
    _detached: Vec<JoinHandle<()>>,
    _watcher: Option<notify::RecommendedWatcher>,
    arrivals: crossbeam_channel::Sender<()>,
    wake_sender: crossbeam_channel::Sender<()>,
    wake_room: crossbeam_channel::Sender<()>,
    cluster_snapshot: crate::cluster::view::SharedSnapshot,
}

impl Node {
    /// Rebuilds the state and starts every thread but the listeners.
    fn build(
        config_path: &Path,
        cfg: Config,
        make_processor: ProcessorFactory,
    ) -> Result<Node, AppError> {
        let state_dir = cfg.node.state_dir.clone();
        let (spool, state, outbox) = open_state(&state_dir)?;
        let shared = SharedConfig::new(cfg.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let (wake_sender, sender_wakes) = crossbeam_channel::bounded::<()>(1);
        let (wakers, wakes) = assembler::wakes();
        let cluster_snapshot = crate::cluster::view::SharedSnapshot::default();
        // An ingest node of a cluster sends only what it holds a claim on.
        let fence = crate::net::fence::Fence::default();
        let processing = roles::spawn_processing(
            &cfg,
            make_processor,
            ProcessingLinks {
                state: state.clone(),
                outbox,
                config: shared.clone(),
                state_dir,
                wake_sender: wake_sender.clone(),
                wake_assembler: wakers.room.clone(),
                arrivals: wakes.arrivals.clone(),
                cluster_snapshot: cluster_snapshot.clone(),
                fence: fence.clone(),
            },
            &stop,
        )?;
        let sender = {
            let ctx = scu::SenderCtx {
                state: state.clone(),
                config: shared.clone(),
                fence: cfg.cluster.is_some().then_some(fence),
            };
            let stop = stop.clone();
            spawn_thread("prima-sender", "sender", move || {
                scu::run(ctx, sender_wakes, stop)
            })?
        };
        let retention = {
            let ctx = retention::RetentionCtx {
                state: state.clone(),
                spool: spool.clone(),
                state_dir: cfg.node.state_dir.clone(),
                config: shared.clone(),
            };
            let stop = stop.clone();
            spawn_thread("prima-retention", "retention", move || {
                retention::run(ctx, stop)
            })?
        };
        let assembler = {
            let (state, shared, stop) = (state.clone(), shared.clone(), stop.clone());
            let jobs: Option<crossbeam_channel::Sender<WorkItem>> = processing.jobs;
            spawn_thread("prima-assembler", "assembler", move || {
                assembler::run(&state, &shared, jobs.as_ref(), &wakes, &stop)
            })?
        };
        Ok(Node {
            _watcher: config_watch::watch_config(config_path, shared.clone()),
            config_path: config_path.to_path_buf(),
            cfg,
            shared,
            spool,
            state,
            stop,
            joined: vec![assembler, sender, retention],
            _detached: processing.threads,
            arrivals: wakers.arrivals,
            wake_sender,
            wake_room: wakers.room,
            cluster_snapshot,
        })
    }

    /// Listens until SIGTERM, then drains: no new associations, open ones finish (or are
    /// aborted after a grace period), the assembler and the sender stop.
    fn run(self) -> Result<(), AppError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("prima-net")
            .build()
            .map_err(|source| AppError::Io {
                what: "cannot start the async runtime".into(),
                source,
            })?;
        let links = ListenerLinks {
            spool: self.spool.clone(),
            state: self.state.clone(),
            config: self.shared.clone(),
            arrivals: self.arrivals.clone(),
            http: HttpLinks {
                config_path: self.config_path.clone(),
                wake_sender: self.wake_sender.clone(),
                wake_assembler: self.arrivals.clone(),
                cluster: self
                    .cfg
                    .cluster
                    .is_some()
                    .then(|| self.cluster_snapshot.clone()),
            },
        };
        let served: Result<(), AppError> = rt.block_on(async {
            let listeners = Listeners::start(&self.cfg, links).await?;
            lifecycle::notify_ready();
            lifecycle::wait_for_signal().await;
            info!("stopping: no new associations");
            lifecycle::notify_stopping();
            listeners.drain().await;
            Ok(())
        });
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.wake_sender.try_send(());
        let _ = self.wake_room.try_send(());
        for t in self.joined {
            let _ = t.join();
        }
        // The worker is not joined: a study in progress is re-run after the restart.
        rt.shutdown_timeout(Duration::from_secs(1));
        served?;
        info!("prima-node stopped");
        Ok(())
    }
}

/// The state directory opened and reconciled: stale temporary files removed, spool files
/// the database does not know indexed (or quarantined when they cannot be:
/// `crate::store::recover`) once interrupted evictions are finished
/// (`crate::store::retention`), unfinished jobs and outbox entries queued again.
fn open_state(state_dir: &Path) -> Result<(Spool, Arc<State>, Outbox), AppError> {
    lifecycle::prepare_state_dir(state_dir)?;
    let spool = Spool::open(state_dir)?;
    let state = Arc::new(State::open(state_dir)?);
    let outbox = Outbox::open(state_dir)?;
    let stale = spool.clean_tmp() + outbox.clean_tmp();
    // Before the rescan, which would read an interrupted eviction's rows as lost instances.
    let evictions = crate::store::retention::finish_pending(&spool, &state)?;
    let rescan = crate::store::recover::rescan(&spool, &state, state_dir)?;
    let (jobs, pending) = state.requeue_unfinished()?;
    info!(
        state_dir = %state_dir.display(),
        stale_temp_files_removed = stale,
        interrupted_evictions_finished = evictions,
        missing_instances_forgotten = rescan.forgotten,
        unindexed_instances_recovered = rescan.indexed,
        replaced_instances_reindexed = rescan.reindexed,
        unreadable_files_quarantined = rescan.quarantined,
        unreadable_files_left_in_place = rescan.left_in_place,
        jobs_requeued = jobs,
        outbox_pending = pending,
        "state rebuilt"
    );
    Ok((spool, state, outbox))
}

fn spawn_thread(
    name: &str,
    what: &str,
    f: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>, AppError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|source| AppError::Io {
            what: format!("cannot start the {what} thread"),
            source,
        })
}
