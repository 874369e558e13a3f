//! What runs the model in each role: the single node's worker, a cluster ingest node's
//! replication (with a cluster worker beside it in role `all`), a worker-only cluster member
//! ([`serve_cluster_worker`]), and the model process itself ([`serve_model_process`]).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use tracing::info;

use super::config_watch::watch_config;
use super::lifecycle::{self, Watchdog};
use super::AppError;
use crate::config::{Config, SharedConfig};
use crate::job::{ProcessorFactory, WorkItem};
use crate::process::background::{self, BackgroundCtx};
use crate::process::marker::Marker;
use crate::process::PrepareCache;
use crate::store::outbox::Outbox;
use crate::store::state::{now_ms, State};
use crate::worker::local::{LocalOutbox, LocalQueue};

/// Jobs waiting in the channel in front of the worker (the rest wait in SQLite).
const WORKER_QUEUE: usize = 2;

/// What an ingest node's processing is made of.
pub struct Processing {
    /// The single node's job channel, fed by the assembler (none in a cluster).
    pub jobs: Option<crossbeam_channel::Sender<WorkItem>>,
    pub threads: Vec<JoinHandle<()>>,
}

/// What the processing threads share with the rest of the node.
pub struct ProcessingLinks {
    pub state: Arc<State>,
    pub outbox: Outbox,
    pub config: SharedConfig,
    pub state_dir: std::path::PathBuf,
    pub wake_sender: crossbeam_channel::Sender<()>,
    pub wake_assembler: crossbeam_channel::Sender<()>,
    /// Told after each instance is recorded (cluster ingest replicates then).
    pub arrivals: crossbeam_channel::Receiver<()>,
    pub cluster_snapshot: crate::cluster::view::SharedSnapshot,
    /// The claims the cluster thread holds, which the sender obeys.
    pub fence: crate::net::fence::Fence,
}

/// Starts the processing of an ingest node: without `[cluster]`, the worker on the local
/// queue; with it, the cluster thread (and a cluster worker in role `all`).
pub fn spawn_processing(
    cfg: &Config,
    make_processor: ProcessorFactory,
    links: ProcessingLinks,
    stop: &Arc<AtomicBool>,
) -> Result<Processing, AppError> {
    let Some(c) = &cfg.cluster else {
        let (tx, rx) = crossbeam_channel::bounded::<WorkItem>(WORKER_QUEUE);
        let source = LocalQueue {
            jobs: rx,
            state: links.state.clone(),
            wake_assembler: links.wake_assembler.clone(),
        };
        let sink = LocalOutbox {
            state: links.state,
            outbox: links.outbox,
            config: links.config.clone(),
            wake_sender: links.wake_sender,
            wake_assembler: links.wake_assembler,
        };
        // Not joined at shutdown: a study in progress is re-run after the restart (its job
        // is still `running` in the database), cheaper than delaying shutdown by minutes.
        let _worker = crate::worker::spawn("prima-worker", links.config, make_processor, || {
            Some((source, sink))
        })?;
        return Ok(Processing {
            jobs: Some(tx),
            threads: Vec::new(),
        });
    };
    let mut threads = Vec::new();
    if c.role.works() {
        threads.push(crate::cluster::worker::spawn(
            crate::cluster::worker::WorkerCtx {
                config: links.config.clone(),
                scratch: links.state_dir.join("cluster-scratch"),
                heartbeat: Default::default(),
            },
            make_processor,
            stop.clone(),
        )?);
    }
    threads.push(
        crate::cluster::ingest::spawn(
            crate::cluster::ingest::IngestCtx {
                state: links.state,
                outbox: links.outbox,
                config: links.config,
                wake_sender: links.wake_sender,
                arrivals: links.arrivals,
                snapshot: links.cluster_snapshot,
                fence: links.fence,
            },
            stop.clone(),
        )
        .map_err(|source| AppError::Io {
            what: "cannot start the cluster thread".into(),
            source,
        })?,
    );
    Ok(Processing {
        jobs: None,
        threads,
    })
}

/// `serve` with `[cluster] role = "worker"`: no DICOM listener and no spool; the model
/// takes jobs from the cluster until SIGTERM.
pub fn serve_cluster_worker(
    config_path: &Path,
    cfg: Config,
    make_processor: ProcessorFactory,
) -> Result<(), AppError> {
    let state_dir = cfg.node.state_dir.clone();
    lifecycle::prepare_state_dir(&state_dir)?;
    // The model process reads a state database for background preparation; a worker
    // node's stays empty.
    drop(State::open(&state_dir)?);
    let shared = SharedConfig::new(cfg.clone());
    let _watcher = watch_config(config_path, shared.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let heartbeat = Arc::new(AtomicI64::new(now_ms()));
    let _worker = crate::cluster::worker::spawn(
        crate::cluster::worker::WorkerCtx {
            config: shared,
            scratch: state_dir.join("cluster-scratch"),
            heartbeat: heartbeat.clone(),
        },
        make_processor,
        stop.clone(),
    )?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| AppError::Io {
            what: "cannot start the async runtime".into(),
            source,
        })?;
    info!(role = "worker", "prima-node ready");
    lifecycle::notify_ready();
    if let Some(watchdog) = Watchdog::from_systemd() {
        // Fed only while the worker thread shows life (it waits for jobs in 2 s polls and
        // reports progress on a job every third of ack_wait_s): a hung worker is restarted.
        let stale_ms =
            ((cfg.cluster.as_ref().map_or(30.0, |c| c.ack_wait_s) * 2000.0) as i64).max(10_000);
        rt.spawn(feed_while_alive(watchdog, heartbeat, stale_ms));
    }
    rt.block_on(lifecycle::wait_for_signal());
    lifecycle::notify_stopping();
    // A job in progress is not waited for: unacknowledged, it goes to another worker.
    stop.store(true, Ordering::SeqCst);
    info!("prima-node stopped");
    Ok(())
}

/// Pets the watchdog while `heartbeat` is younger than `stale_ms`.
async fn feed_while_alive(mut watchdog: Watchdog, heartbeat: Arc<AtomicI64>, stale_ms: i64) {
    let every = watchdog.every();
    loop {
        tokio::time::sleep(every).await;
        if now_ms() - heartbeat.load(Ordering::Relaxed) < stale_ms {
            watchdog.pet();
        }
    }
}

/// The study processor the model process runs, and the cache its background preparation
/// fills. With the `stand-in` feature (tests, benchmarks), `PRIMA_NODE_FAKE_PROCESSOR=1`
/// selects the model-free stand-in instead.
fn model_processor() -> (ProcessorFactory, Option<Arc<PrepareCache>>) {
    #[cfg(feature = "stand-in")]
    if std::env::var("PRIMA_NODE_FAKE_PROCESSOR").is_ok_and(|v| v == "1") {
        tracing::warn!(
            "using the FAKE study processor: outputs are placeholders, not model results"
        );
        return (
            Box::new(|_| Ok(Box::new(crate::stand_in::FakeProcessor))),
            None,
        );
    }
    let cache = Arc::new(PrepareCache::new());
    let for_worker = cache.clone();
    (
        Box::new(move |shared| {
            Ok(Box::new(crate::process::PrimaProcessor::new(
                shared, for_worker,
            )?))
        }),
        Some(cache),
    )
}

/// `prima-node worker`, the model process: runs the study processor for the node that
/// started this process, over the socket on [`crate::model_process::WORKER_FD`], and
/// background preparation beside it. The configuration is the node's, sent over the socket
/// (the file on disk, `_config_path`, may hold an edit the node refused or has not applied).
/// Returns when the node is gone.
pub fn serve_model_process(_config_path: &Path) -> Result<(), AppError> {
    use std::os::fd::FromRawFd;
    let (make_processor, prepare_cache) = model_processor();
    // SAFETY: the node passes our end of the socket on this descriptor and nothing else in
    // this process owns it.
    let mut sock =
        unsafe { std::os::unix::net::UnixStream::from_raw_fd(crate::model_process::WORKER_FD) };
    let link = |source| AppError::Io {
        what: "worker connection to the node".into(),
        source,
    };
    let Some(cfg) = crate::model_process::child::receive_config(&mut sock).map_err(link)? else {
        return Ok(());
    };
    let shared = SharedConfig::new(cfg.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let _background = match prepare_cache {
        Some(cache) => Some(
            background::spawn(
                BackgroundCtx {
                    state: Arc::new(State::open_read_only(&cfg.node.state_dir)?),
                    config: shared.clone(),
                    cache,
                    marker: Some(Marker::in_state_dir(&cfg.node.state_dir)),
                },
                stop.clone(),
            )
            .map_err(|source| AppError::Io {
                what: "cannot start the background preparation thread".into(),
                source,
            })?,
        ),
        None => None,
    };
    let served = crate::model_process::child::serve(sock, make_processor, &shared);
    stop.store(true, Ordering::SeqCst);
    served.map_err(link)
}
