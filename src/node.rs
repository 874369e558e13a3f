//! `prima-node serve`: wires the pieces together and runs them until SIGTERM; and
//! `prima-node worker`, the process that runs the model for it.
//!
//! Threads of `serve`: a tokio multi-thread runtime for the DICOM service; one assembler
//! thread (stability checks, job dispatch, systemd status and watchdog), woken by each
//! recorded arrival and by the worker taking or finishing a job; the inference worker
//! (hands each job to the processor, in `prima-node` as the worker process); the sender;
//! the config watcher. On start, state is rebuilt from SQLite and the spool: stale
//! temporary files are removed, spool files the database does not know are indexed (or
//! quarantined when they cannot be: `crate::store::recover`),
//! unfinished jobs and outbox entries are queued again.
//!
//! The worker process ([`serve_worker`]) runs the processor and, when the processor takes
//! prepared series from a cache, background preparation of studies still arriving
//! (`crate::process::background`), reading the state database: everything that parses a
//! peer's pixel data runs there, so nothing it does can end the node.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use crate::config::{Config, ConfigError, SharedConfig};
use crate::job::{ProcessError, ProcessorFactory, WorkItem};
use crate::net::{scp, scu};
use crate::process::background::{self, BackgroundCtx};
use crate::process::PrepareCache;
use crate::store::durable::create_durable_dir;
use crate::store::outbox::Outbox;
use crate::store::spool::{Spool, SpoolError};
use crate::store::state::{self, State, StateError};
use crate::study::assembler;
use crate::worker::{self, WorkerCtx};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
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
}

/// How long in-flight associations may take to finish after SIGTERM before they are aborted.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// `prima-node worker`: the processor `make_processor` builds, serving the node that started
/// this process over the socket on [`worker::isolated::WORKER_FD`]; with `prepare_cache`,
/// background preparation fills it. Returns when the node is gone.
pub fn serve_worker(
    config_path: &Path,
    make_processor: ProcessorFactory,
    prepare_cache: Option<Arc<PrepareCache>>,
) -> Result<(), NodeError> {
    use std::os::fd::FromRawFd;
    let cfg = Config::load(config_path)?;
    // SAFETY: the node passes our end of the socket on this descriptor and nothing else in
    // this process owns it.
    let sock = unsafe { std::os::unix::net::UnixStream::from_raw_fd(worker::isolated::WORKER_FD) };
    let shared = SharedConfig::new(cfg.clone());
    let _watcher = watch_config(config_path, shared.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let _background = match prepare_cache {
        Some(cache) => Some(
            background::spawn(
                BackgroundCtx {
                    state: Arc::new(State::open_read_only(&cfg.node.state_dir)?),
                    config: shared,
                    cache,
                    marker: Some(worker::marker::Marker::in_state_dir(&cfg.node.state_dir)),
                },
                stop.clone(),
            )
            .map_err(|source| NodeError::Io {
                what: "cannot start the background preparation thread".into(),
                source,
            })?,
        ),
        None => None,
    };
    let served = worker::child::serve(sock, make_processor, &cfg);
    stop.store(true, Ordering::SeqCst);
    served.map_err(|source| NodeError::Io {
        what: "worker connection to the node".into(),
        source,
    })
}

/// Longest the assembler sleeps without being woken: for the watchdog, the status line, and
/// changes nothing announces (a configuration reload).
const MAX_NAP: Duration = Duration::from_secs(1);
/// Jobs waiting in the channel in front of the worker (the rest wait in SQLite).
const WORKER_QUEUE: usize = 2;

/// Run the node until SIGTERM/SIGINT. `make_processor` is called once, on the worker
/// thread, to build the processor (in `prima-node serve`: start the worker process).
pub fn serve(config_path: &Path, make_processor: ProcessorFactory) -> Result<(), NodeError> {
    let cfg = Config::load_with(config_path, &crate::net::tls::ContextCheck)?;
    if cfg
        .cluster
        .as_ref()
        .is_some_and(|c| c.role == crate::config::ClusterRole::Worker)
    {
        return serve_cluster_worker(config_path, cfg, make_processor);
    }
    let state_dir = cfg.node.state_dir.clone();
    create_durable_dir(&state_dir).map_err(|source| NodeError::Io {
        what: format!("cannot create state directory {}", state_dir.display()),
        source,
    })?;
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&state_dir, std::fs::Permissions::from_mode(0o700));
    }
    let spool = Spool::open(&state_dir)?;
    let state = Arc::new(State::open(&state_dir)?);
    let outbox = Outbox::open(&state_dir)?;
    let stale = spool.clean_tmp() + outbox.clean_tmp();
    let rescan = crate::store::recover::rescan(&spool, &state, &state_dir)?;
    let (jobs, pending) = state.requeue_unfinished()?;
    info!(
        state_dir = %state_dir.display(),
        stale_temp_files_removed = stale,
        missing_instances_forgotten = rescan.forgotten,
        unindexed_instances_recovered = rescan.indexed,
        replaced_instances_reindexed = rescan.reindexed,
        unreadable_files_quarantined = rescan.quarantined,
        unreadable_files_left_in_place = rescan.left_in_place,
        jobs_requeued = jobs,
        outbox_pending = pending,
        "state rebuilt"
    );

    let shared = SharedConfig::new(cfg.clone());
    let (wake_tx, wake_rx) = crossbeam_channel::bounded::<()>(1);
    let (arrivals_tx, arrivals_rx) = crossbeam_channel::bounded::<()>(1);
    let (room_tx, room_rx) = crossbeam_channel::bounded::<()>(1);
    let stop = Arc::new(AtomicBool::new(false));
    let cluster_snapshot = crate::cluster::view::SharedSnapshot::default();
    // Single node: the assembler feeds the local worker. Cluster ingest: the cluster thread
    // replicates, decides and delivers instead (and with role "all" a cluster worker runs
    // the model); the assembler thread only keeps the watchdog and status line.
    let (job_tx, _cluster_threads) = match &cfg.cluster {
        None => {
            let spawned = worker::spawn(
                WorkerCtx {
                    state: state.clone(),
                    outbox,
                    config: shared.clone(),
                    wake_sender: wake_tx.clone(),
                    wake_assembler: room_tx.clone(),
                },
                make_processor,
                WORKER_QUEUE,
            )?;
            (Some(spawned.sender), Vec::new())
        }
        Some(c) => {
            let mut threads = Vec::new();
            if c.role.works() {
                threads.push(crate::cluster::worker::spawn(
                    crate::cluster::worker::WorkerCtx {
                        config: shared.clone(),
                        scratch: state_dir.join("cluster-scratch"),
                        heartbeat: Default::default(),
                    },
                    make_processor,
                    stop.clone(),
                )?);
            }
            threads.push(
                crate::cluster::ingest::spawn(
                    crate::cluster::ingest::IngestCtx {
                        state: state.clone(),
                        outbox,
                        config: shared.clone(),
                        wake_sender: wake_tx.clone(),
                        arrivals: arrivals_rx.clone(),
                        snapshot: cluster_snapshot.clone(),
                    },
                    stop.clone(),
                )
                .map_err(|source| NodeError::Io {
                    what: "cannot start the cluster thread".into(),
                    source,
                })?,
            );
            (None, threads)
        }
    };

    let sender = {
        let ctx = scu::SenderCtx {
            state: state.clone(),
            config: shared.clone(),
        };
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("prima-sender".into())
            .spawn(move || scu::run(ctx, wake_rx, stop))
            .map_err(|source| NodeError::Io {
                what: "cannot start the sender thread".into(),
                source,
            })?
    };
    let assembler_thread = {
        let state = state.clone();
        let shared = shared.clone();
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("prima-assembler".into())
            .spawn(move || {
                assembler_loop(
                    &state,
                    &shared,
                    job_tx.as_ref(),
                    &arrivals_rx,
                    &room_rx,
                    &stop,
                )
            })
            .map_err(|source| NodeError::Io {
                what: "cannot start the assembler thread".into(),
                source,
            })?
    };
    let _watcher = watch_config(config_path, shared.clone());

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("prima-net")
        .build()
        .map_err(|source| NodeError::Io {
            what: "cannot start the async runtime".into(),
            source,
        })?;
    let max_assoc = cfg.node.max_associations;
    // Validated with the config; built again here because the files may have changed.
    let tls = match &cfg.tls {
        Some(t) => Some(
            crate::net::tls::server_config(t).map_err(|e| NodeError::Io {
                what: "cannot set up DICOM TLS".into(),
                source: std::io::Error::other(e),
            })?,
        ),
        None => None,
    };
    let result: Result<(), NodeError> = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(cfg.listen_addr())
            .await
            .map_err(|source| NodeError::Bind {
                addr: cfg.node.listen.clone(),
                source,
            })?;
        let limit = Arc::new(tokio::sync::Semaphore::new(max_assoc));
        let ctx = Arc::new(scp::ScpCtx {
            config: shared.clone(),
            spool: spool.clone(),
            state: state.clone(),
            limit: limit.clone(),
            transfer_syntaxes: scp::decodable_transfer_syntaxes(),
            tls: tls.clone(),
            arrivals: arrivals_tx.clone(),
        });
        let (shut_tx, shut_rx) = tokio::sync::watch::channel(false);
        let (abort_tx, abort_rx) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(scp::run(listener, ctx, shut_rx.clone(), abort_rx));
        let http = match &cfg.http {
            Some(h) => Some(
                start_http(
                    h,
                    &state,
                    &shared,
                    &state_dir,
                    HttpLinks {
                        wake_sender: wake_tx.clone(),
                        wake_assembler: arrivals_tx.clone(),
                        cluster: cfg.cluster.is_some().then(|| cluster_snapshot.clone()),
                    },
                    shut_rx,
                )
                .await?,
            ),
            None => None,
        };
        info!(
            ae_title = %cfg.node.ae_title,
            listen = %cfg.node.listen,
            tls = tls.is_some(),
            transfer_syntaxes = ?scp::decodable_transfer_syntaxes(),
            "prima-node ready"
        );
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);

        wait_for_signal().await;
        info!("stopping: no new associations");
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        let _ = shut_tx.send(true);
        let _ = server.await;
        if let Some(h) = http {
            let _ = h.await;
        }
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        while limit.available_permits() < max_assoc && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if limit.available_permits() < max_assoc {
            warn!(
                in_flight = max_assoc - limit.available_permits(),
                "associations still open after the grace period: aborting them"
            );
            let _ = abort_tx.send(true);
            let deadline = Instant::now() + Duration::from_secs(2);
            while limit.available_permits() < max_assoc && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    });
    stop.store(true, Ordering::SeqCst);
    let _ = wake_tx.try_send(());
    let _ = room_tx.try_send(());
    let _ = assembler_thread.join();
    let _ = sender.join();
    // The worker is not joined: a study in progress is re-run after the restart (its job is
    // still `running` in the database), which is cheaper than delaying shutdown by minutes.
    rt.shutdown_timeout(Duration::from_secs(1));
    result?;
    info!("prima-node stopped");
    Ok(())
}

/// `serve` with `[cluster] role = "worker"`: no DICOM listener and no spool; the model
/// takes jobs from the cluster until SIGTERM.
fn serve_cluster_worker(
    config_path: &Path,
    cfg: Config,
    make_processor: ProcessorFactory,
) -> Result<(), NodeError> {
    let state_dir = cfg.node.state_dir.clone();
    create_durable_dir(&state_dir).map_err(|source| NodeError::Io {
        what: format!("cannot create state directory {}", state_dir.display()),
        source,
    })?;
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&state_dir, std::fs::Permissions::from_mode(0o700));
    }
    // The worker process reads a state database for background preparation; a worker
    // node's stays empty.
    drop(State::open(&state_dir)?);
    let scratch = state_dir.join("cluster-scratch");
    let shared = SharedConfig::new(cfg.clone());
    let _watcher = watch_config(config_path, shared.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let heartbeat = Arc::new(std::sync::atomic::AtomicI64::new(
        crate::store::state::now_ms(),
    ));
    let _worker = crate::cluster::worker::spawn(
        crate::cluster::worker::WorkerCtx {
            config: shared.clone(),
            scratch,
            heartbeat: heartbeat.clone(),
        },
        make_processor,
        stop.clone(),
    )?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| NodeError::Io {
            what: "cannot start the async runtime".into(),
            source,
        })?;
    info!(role = "worker", "prima-node ready");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    let mut watchdog_usec = 0u64;
    if sd_notify::watchdog_enabled(false, &mut watchdog_usec) {
        // Fed only while the worker thread shows life (it waits for jobs in 2 s polls and
        // reports progress on a job every third of ack_wait_s): a hung worker is restarted.
        let stale_ms =
            ((cfg.cluster.as_ref().map_or(30.0, |c| c.ack_wait_s) * 2000.0) as i64).max(10_000);
        let every = Duration::from_micros(watchdog_usec / 2);
        let heartbeat = heartbeat.clone();
        rt.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let age = crate::store::state::now_ms() - heartbeat.load(Ordering::Relaxed);
                if age < stale_ms {
                    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
                }
            }
        });
    }
    rt.block_on(wait_for_signal());
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    // A job in progress is not waited for: unacknowledged, it goes to another worker.
    stop.store(true, Ordering::SeqCst);
    info!("prima-node stopped");
    Ok(())
}

/// Bind `[http]`'s listener and serve the status pages on the node's runtime.
/// What the status page reaches besides the state: the threads its actions wake, and the
/// cluster view an ingest node keeps.
struct HttpLinks {
    wake_sender: crossbeam_channel::Sender<()>,
    wake_assembler: crossbeam_channel::Sender<()>,
    cluster: Option<crate::cluster::view::SharedSnapshot>,
}

async fn start_http(
    h: &crate::config::HttpSection,
    state: &Arc<State>,
    shared: &SharedConfig,
    state_dir: &Path,
    links: HttpLinks,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, NodeError> {
    let HttpLinks {
        wake_sender,
        wake_assembler,
        cluster,
    } = links;
    let listener = tokio::net::TcpListener::bind(&h.listen)
        .await
        .map_err(|source| NodeError::Bind {
            addr: h.listen.clone(),
            source,
        })?;
    let cfg = shared.get();
    let tls = match (h.tls, &cfg.tls) {
        (true, Some(t)) => {
            Some(
                crate::net::tls::web_server_config(t).map_err(|e| NodeError::Io {
                    what: "cannot set up HTTPS for the status page".into(),
                    source: std::io::Error::other(e),
                })?,
            )
        }
        _ => None,
    };
    let ctx = std::sync::Arc::new(crate::http::HttpCtx {
        state: state.clone(),
        view: Arc::new(State::open_read_only(state_dir)?),
        config: shared.clone(),
        state_dir: state_dir.to_path_buf(),
        started: Instant::now(),
        token: h.token(),
        show_patient_identifiers: h.show_patient_identifiers,
        wake_assembler,
        wake_sender,
        cluster,
    });
    let scheme = if tls.is_some() { "https" } else { "http" };
    info!(
        listen = %h.listen,
        actions = ctx.token.is_some(),
        "status page on {scheme}://{}/",
        h.listen
    );
    Ok(tokio::spawn(crate::http::serve(
        listener, tls, ctx, shutdown,
    )))
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "cannot install the SIGTERM handler");
            return std::future::pending().await;
        }
    };
    let mut int = signal(SignalKind::interrupt()).ok();
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = async { match int.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending::<()>().await } } => info!("SIGINT received"),
    }
}

fn assembler_loop(
    state: &State,
    shared: &SharedConfig,
    job_tx: Option<&crossbeam_channel::Sender<WorkItem>>,
    arrivals: &crossbeam_channel::Receiver<()>,
    room: &crossbeam_channel::Receiver<()>,
    stop: &AtomicBool,
) {
    let mut watchdog_usec = 0u64;
    let watchdog = sd_notify::watchdog_enabled(false, &mut watchdog_usec);
    let mut last_ping = Instant::now();
    let mut last_status = Instant::now() - Duration::from_secs(60);
    let mut last_error: Option<String> = None;
    while !stop.load(Ordering::SeqCst) {
        let cfg = shared.get();
        let Some(job_tx) = job_tx else {
            // Cluster ingest: the cluster thread decides; this loop keeps the watchdog.
            if watchdog {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            }
            let _ = room.recv_timeout(MAX_NAP);
            continue;
        };
        match assembler::tick(state, &cfg, job_tx) {
            Ok(()) => last_error = None,
            Err(e) => {
                let m = e.to_string();
                if last_error.as_deref() != Some(m.as_str()) {
                    error!(error = %m, "assembler pass failed");
                }
                last_error = Some(m);
            }
        }
        if watchdog && last_ping.elapsed() >= Duration::from_micros(watchdog_usec / 2) {
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            last_ping = Instant::now();
        }
        if last_status.elapsed() >= Duration::from_secs(5) {
            if let Ok(c) = state.counts() {
                let line = format!(
                    "studies receiving {}, queued {}, processing {}, done {}, failed {}; outbox pending {}, failed {}",
                    c.studies_in(state::study_state::RECEIVING),
                    c.studies_in(state::study_state::QUEUED),
                    c.studies_in(state::study_state::PROCESSING),
                    c.studies_in(state::study_state::DONE),
                    c.studies_in(state::study_state::FAILED),
                    c.outbox_in(state::outbox_state::PENDING),
                    c.outbox_in(state::outbox_state::FAILED),
                );
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Status(&line)]);
            }
            last_status = Instant::now();
        }
        let now = state::now_ms();
        let nap = match assembler::next_due_ms(state, &cfg, now) {
            Ok(Some(due)) => {
                Duration::from_millis((due - now).clamp(2, MAX_NAP.as_millis() as i64) as u64)
            }
            _ => MAX_NAP,
        };
        let soonest = Duration::from_secs_f64(
            cfg.assembly
                .quiet_period_s
                .min(cfg.assembly.force_complete_s)
                .max(0.0),
        );
        wait_for_work(arrivals, room, Instant::now() + nap, soonest);
    }
}

/// Sleep until `deadline` (the next quiet-period end). An arrival never makes a study due
/// sooner than `soonest` from now (a new study's quiet period), so it only brings the
/// deadline forward to that; the worker taking or finishing a job ends the sleep (a queued
/// job can be dispatched).
fn wait_for_work(
    arrivals: &crossbeam_channel::Receiver<()>,
    room: &crossbeam_channel::Receiver<()>,
    mut deadline: Instant,
    soonest: Duration,
) {
    loop {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return;
        };
        crossbeam_channel::select! {
            recv(arrivals) -> r => match r {
                Ok(()) => deadline = deadline.min(Instant::now() + soonest),
                Err(_) => return,
            },
            recv(room) -> _ => return,
            default(left) => return,
        }
    }
}

/// Watch the config file; apply valid changes, refuse invalid ones (the old stays).
fn watch_config(path: &Path, shared: SharedConfig) -> Option<notify::RecommendedWatcher> {
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
                match Config::parse_with(&path, &text, &crate::net::tls::ContextCheck) {
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

/// `prima-node check-config`: the parsed configuration or every problem found.
pub fn check_config(path: &Path) -> Result<(Config, Vec<String>), ConfigError> {
    let cfg = Config::load_with(path, &crate::net::tls::ContextCheck)?;
    let mut notes = Vec::new();
    if !cfg.model.dir.exists() {
        notes.push(format!(
            "note: [model] dir {} does not exist (yet)",
            cfg.model.dir.display()
        ));
    }
    if cfg.destinations.is_empty() {
        notes
            .push("note: no [[destinations]]: results are kept in the state directory only".into());
    }
    Ok((cfg, notes))
}

/// `prima-node status`: studies by state and the outbox, as text.
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

pub fn status_report(config_path: &Path) -> Result<String, NodeError> {
    use std::fmt::Write;
    let cfg = Config::load_with(config_path, &crate::net::tls::ContextCheck)?;
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
        let next = if r.state == state::outbox_state::PENDING {
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
