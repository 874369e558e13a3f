//! The node's listeners on its async runtime: DICOM (every association on its own task,
//! at most `[node] max_associations` at once) and, with `[http]`, the status page; and
//! their drain on shutdown.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::AppError;
use crate::config::{Config, SharedConfig};
use crate::net::scp;
use crate::store::spool::Spool;
use crate::store::state::State;

/// How long in-flight associations may take to finish after SIGTERM before they are aborted.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long aborted associations get to close.
const ABORT_GRACE: Duration = Duration::from_secs(2);

/// The running listeners.
pub struct Listeners {
    dicom: JoinHandle<()>,
    http: Option<JoinHandle<()>>,
    /// One permit per association slot: all back means none is open.
    slots: Arc<Semaphore>,
    max_associations: usize,
    shut: watch::Sender<bool>,
    abort: watch::Sender<bool>,
}

/// What the listeners hand received data to and wake.
pub struct ListenerLinks {
    pub spool: Spool,
    pub state: Arc<State>,
    pub config: SharedConfig,
    /// Told after each instance is recorded.
    pub arrivals: crossbeam_channel::Sender<()>,
    /// What the status page's actions wake, and the cluster view it shows.
    pub http: HttpLinks,
}

/// What the status page reaches besides the state: the threads its actions wake, and the
/// cluster view an ingest node keeps.
pub struct HttpLinks {
    pub config_path: std::path::PathBuf,
    pub wake_sender: crossbeam_channel::Sender<()>,
    pub wake_assembler: crossbeam_channel::Sender<()>,
    pub cluster: Option<crate::cluster::view::SharedSnapshot>,
}

impl Listeners {
    /// Binds and starts the DICOM listener and the status page. Call inside the runtime.
    pub async fn start(cfg: &Config, links: ListenerLinks) -> Result<Listeners, AppError> {
        // Validated with the config; built again here because the files may have changed.
        let tls = match &cfg.tls {
            Some(t) => Some(crate::net::tls::server_config(t).map_err(|e| AppError::Io {
                what: "cannot set up DICOM TLS".into(),
                source: std::io::Error::other(e),
            })?),
            None => None,
        };
        let listener = tokio::net::TcpListener::bind(cfg.listen_addr())
            .await
            .map_err(|source| AppError::Bind {
                addr: cfg.node.listen.clone(),
                source,
            })?;
        let max_associations = cfg.node.max_associations;
        let slots = Arc::new(Semaphore::new(max_associations));
        let ctx = Arc::new(scp::ScpCtx {
            config: links.config.clone(),
            spool: links.spool,
            state: links.state.clone(),
            limit: slots.clone(),
            // Room for a burst of real requestors from one address; far below the
            // descriptors the node checks it has at start.
            pending: crate::net::admission::Pending::for_slots(max_associations),
            transfer_syntaxes: scp::decodable_transfer_syntaxes(),
            tls: tls.clone(),
            arrivals: links.arrivals,
            refusals: Default::default(),
        });
        let (shut, shut_rx) = watch::channel(false);
        let (abort, abort_rx) = watch::channel(false);
        let dicom = tokio::spawn(scp::run(listener, ctx, shut_rx.clone(), abort_rx));
        let http = match &cfg.http {
            Some(h) => Some(
                start_http(
                    h,
                    &links.state,
                    &links.config,
                    &cfg.node.state_dir,
                    links.http,
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
        Ok(Listeners {
            dicom,
            http,
            slots,
            max_associations,
            shut,
            abort,
        })
    }

    /// Stops accepting, lets open associations finish for a grace period, then aborts
    /// what is left.
    pub async fn drain(self) {
        let _ = self.shut.send(true);
        let _ = self.dicom.await;
        if let Some(h) = self.http {
            let _ = h.await;
        }
        let open = || self.max_associations - self.slots.available_permits();
        wait_until_closed(&open, SHUTDOWN_GRACE, Duration::from_millis(50)).await;
        if open() > 0 {
            warn!(
                in_flight = open(),
                "associations still open after the grace period: aborting them"
            );
            let _ = self.abort.send(true);
            wait_until_closed(&open, ABORT_GRACE, Duration::from_millis(20)).await;
        }
    }
}

async fn wait_until_closed(open: &dyn Fn() -> usize, grace: Duration, poll: Duration) {
    let deadline = Instant::now() + grace;
    while open() > 0 && Instant::now() < deadline {
        tokio::time::sleep(poll).await;
    }
}

/// Binds `[http]`'s listener and serves the status pages on the node's runtime.
async fn start_http(
    h: &crate::config::HttpSection,
    state: &Arc<State>,
    shared: &SharedConfig,
    state_dir: &Path,
    links: HttpLinks,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, AppError> {
    let HttpLinks {
        config_path,
        wake_sender,
        wake_assembler,
        cluster,
    } = links;
    let listener = tokio::net::TcpListener::bind(&h.listen)
        .await
        .map_err(|source| AppError::Bind {
            addr: h.listen.clone(),
            source,
        })?;
    let cfg = shared.get();
    let tls = match (h.tls, &cfg.tls) {
        (true, Some(t)) => {
            Some(
                crate::net::tls::web_server_config(t).map_err(|e| AppError::Io {
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
        config_path,
        state_dir: state_dir.to_path_buf(),
        started: Instant::now(),
        token: h.token(),
        open_reads: h.open_reads,
        show_patient_identifiers: h.show_patient_identifiers,
        wake_assembler,
        wake_sender,
        cluster,
    });
    if ctx.token.is_none() && !h.open_reads {
        warn!("status pages and API locked (401): no [http] token_file, and open_reads is off");
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    info!(
        listen = %h.listen,
        actions = ctx.token.is_some(),
        "status page on {scheme}://{}/",
        h.listen
    );
    Ok(tokio::spawn(crate::http::serve(
        listener,
        tls,
        http_limits(h),
        ctx,
        shutdown,
    )))
}

/// `[http]`'s connection limits.
pub fn http_limits(h: &crate::config::HttpSection) -> crate::http::limits::Limits {
    crate::http::limits::Limits {
        max_connections: h.max_connections,
        request_timeout: Duration::from_secs(h.request_timeout_s),
        idle_timeout: Duration::from_secs(h.idle_timeout_s),
    }
}
