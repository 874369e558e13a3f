//! `[http]`: what a PACS administrator opens in a browser to answer "why is there no AI
//! result for this patient" — server-rendered pages (no JavaScript, no assets fetched), the
//! same data as JSON under `/api/`, `/metrics` for Prometheus, `/healthz` and `/readyz`.
//! Pages and API need the token ([`auth`]); the three probes do not.
//!
//! Reads go through a read-only SQLite connection of their own (WAL lets it read while the
//! node writes), on blocking threads: a page never holds up a C-STORE. The two actions
//! (retry a delivery now, re-run a study) are POSTs that need the bearer token, either as
//! `Authorization: Bearer …` or as the form's `token` field. The token is never a cookie,
//! so another site cannot make a browser send it (no CSRF); each action is audited.
//! Restart-only: a changed `[http]` is reported by the reload and applied at the next start.

mod auth;
pub mod data;
pub mod html;
pub mod limits;
mod node_health;
mod pages;
mod tls;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, Form, Path, Query, State as AxState};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tracing::{info, warn};

use crate::config::SharedConfig;
use crate::store::state::{State, StateError};
use tls::Peer;

/// What the handlers share.
pub struct HttpCtx {
    /// The node's own connection: only the actions write through it.
    pub state: Arc<State>,
    /// A read-only connection for the pages, the API and the metrics' gauges.
    pub view: Arc<State>,
    pub config: SharedConfig,
    /// The configuration file the node was started with (compared with what is in force).
    pub config_path: PathBuf,
    pub state_dir: PathBuf,
    pub started: Instant,
    pub token: Option<String>,
    /// `[http] open_reads`: pages and API without the token (loopback only).
    pub open_reads: bool,
    pub show_patient_identifiers: bool,
    /// Wakes the assembler (a re-run was queued) and the sender (a retry is due).
    pub wake_assembler: crossbeam_channel::Sender<()>,
    pub wake_sender: crossbeam_channel::Sender<()>,
    /// With `[cluster]`: the cluster view the ingest thread refreshes.
    pub cluster: Option<crate::cluster::view::SharedSnapshot>,
}

type Ctx = Arc<HttpCtx>;

pub fn router(ctx: Ctx) -> Router {
    // The probes a monitoring system polls carry no patient data and need no credential.
    let probes = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz));
    Router::new()
        .route("/", get(overview_page))
        .route("/studies", get(studies_page))
        .route("/studies/{uid}", get(study_page))
        .route("/studies/{uid}/predictions.json", get(study_predictions))
        .route("/studies/{uid}/run.json", get(study_run))
        .route("/outbox", get(outbox_page))
        .route("/associations", get(associations_page))
        .route("/cluster", get(cluster_page))
        .route("/api/cluster", get(api_cluster))
        .route("/api/overview", get(api_overview))
        .route("/api/studies", get(api_studies))
        .route("/api/studies/{uid}", get(api_study))
        .route("/api/outbox", get(api_outbox))
        .route("/api/associations", get(api_associations))
        .route("/actions/retry-delivery", post(retry_delivery))
        .route("/actions/rerun-study", post(rerun_study))
        .layer(axum::middleware::from_fn_with_state(
            ctx.clone(),
            auth::require_read_credential,
        ))
        .merge(probes)
        .layer(axum::middleware::map_response(security_headers))
        .with_state(ctx)
}

/// On every response: the pages carry patient data and two forms, and need nothing from
/// elsewhere (no script, no asset, no frame), so a browser is told to allow nothing else,
/// not to guess types, not to keep them and not to name them to another site.
async fn security_headers(mut r: Response) -> Response {
    use axum::http::HeaderValue;
    let h = r.headers_mut();
    for (name, value) in [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    r
}

/// Serve until `shutdown` turns true, within `limits`; HTTPS when `tls` is given.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    limits: limits::Limits,
    ctx: Ctx,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let app = router(ctx).into_make_service_with_connect_info::<Peer>();
    let stop = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    let guard = limits::Guard::new(limits);
    let result = match tls {
        None => {
            axum::serve(limits::GuardedListener::new(listener, guard), app)
                .with_graceful_shutdown(stop)
                .await
        }
        Some(cfg) => match tls::TlsListener::new(listener, cfg, guard) {
            Ok(l) => axum::serve(l, app).with_graceful_shutdown(stop).await,
            Err(e) => Err(e),
        },
    };
    if let Err(e) = result {
        warn!(error = %e, "HTTP server stopped");
    }
}

#[derive(Debug, thiserror::Error)]
enum WebError {
    #[error("state database: {0}")]
    State(#[from] StateError),
    #[error("not found")]
    NotFound,
    #[error("background task failed")]
    Join,
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let code = match self {
            WebError::NotFound => StatusCode::NOT_FOUND,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (code, self.to_string()).into_response()
    }
}

/// Run a state read on a blocking thread.
async fn blocking<T: Send + 'static>(
    ctx: &Ctx,
    f: impl FnOnce(&HttpCtx) -> Result<T, WebError> + Send + 'static,
) -> Result<T, WebError> {
    let ctx = ctx.clone();
    tokio::task::spawn_blocking(move || f(&ctx))
        .await
        .map_err(|_| WebError::Join)?
}

fn uptime(ctx: &HttpCtx) -> u64 {
    ctx.started.elapsed().as_secs()
}

async fn overview_data(ctx: &Ctx) -> Result<data::Overview, WebError> {
    blocking(ctx, |c| {
        let cfg = c.config.get();
        let mut o = data::overview(&c.view, &cfg, data::model_info(&cfg), uptime(c))?;
        o.config = data::config_view(&c.config_path, &cfg);
        Ok(o)
    })
    .await
}

async fn overview_page(AxState(ctx): AxState<Ctx>) -> Result<Response, WebError> {
    let o = overview_data(&ctx).await?;
    Ok(pages::overview(&o).into_html())
}

async fn api_overview(AxState(ctx): AxState<Ctx>) -> Result<Response, WebError> {
    Ok(Json(overview_data(&ctx).await?).into_response())
}

#[derive(Debug, Deserialize)]
struct StudiesQuery {
    state: Option<String>,
    page: Option<i64>,
}

const PER_PAGE: i64 = 50;

async fn studies_data(
    ctx: &Ctx,
    q: StudiesQuery,
) -> Result<(Vec<data::StudySummary>, StudiesQuery), WebError> {
    blocking(ctx, move |c| {
        let page = q.page.unwrap_or(0).max(0);
        let filter = q.state.as_deref().filter(|s| !s.is_empty());
        let list = data::studies(
            &c.view,
            &c.state_dir,
            filter,
            page,
            PER_PAGE,
            c.show_patient_identifiers,
        )?;
        Ok((
            list,
            StudiesQuery {
                state: filter.map(str::to_string),
                page: Some(page),
            },
        ))
    })
    .await
}

async fn studies_page(
    AxState(ctx): AxState<Ctx>,
    Query(q): Query<StudiesQuery>,
) -> Result<Response, WebError> {
    let (list, q) = studies_data(&ctx, q).await?;
    Ok(pages::studies(&list, q.state.as_deref(), q.page.unwrap_or(0), PER_PAGE).into_html())
}

async fn api_studies(
    AxState(ctx): AxState<Ctx>,
    Query(q): Query<StudiesQuery>,
) -> Result<Response, WebError> {
    Ok(Json(studies_data(&ctx, q).await?.0).into_response())
}

async fn study_data(ctx: &Ctx, uid: String) -> Result<data::StudyDetail, WebError> {
    blocking(ctx, move |c| {
        data::study(&c.view, &c.state_dir, &uid, c.show_patient_identifiers)?
            .ok_or(WebError::NotFound)
    })
    .await
}

async fn study_page(
    AxState(ctx): AxState<Ctx>,
    Path(uid): Path<String>,
) -> Result<Response, WebError> {
    let d = study_data(&ctx, uid).await?;
    Ok(pages::study(&d, ctx.token.is_some()).into_html())
}

async fn api_study(
    AxState(ctx): AxState<Ctx>,
    Path(uid): Path<String>,
) -> Result<Response, WebError> {
    Ok(Json(study_data(&ctx, uid).await?).into_response())
}

async fn study_file(ctx: &Ctx, uid: String, name: &'static str) -> Result<Response, WebError> {
    // The study must be known: the results directory name is a hash of the UID, so an
    // unknown UID could only miss, but a known one is what the page links to.
    let bytes = blocking(ctx, move |c| {
        c.view.study(&uid)?.ok_or(WebError::NotFound)?;
        let dir = crate::store::outbox::results_dir_in(&c.state_dir, &uid);
        std::fs::read(dir.join(name)).map_err(|_| WebError::NotFound)
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], bytes).into_response())
}

async fn study_predictions(
    AxState(ctx): AxState<Ctx>,
    Path(uid): Path<String>,
) -> Result<Response, WebError> {
    study_file(&ctx, uid, "predictions.json").await
}

async fn study_run(
    AxState(ctx): AxState<Ctx>,
    Path(uid): Path<String>,
) -> Result<Response, WebError> {
    study_file(&ctx, uid, "run.json").await
}

/// The cluster view (`None`: a single node, no `[cluster]`).
fn cluster_snapshot(ctx: &HttpCtx) -> Option<crate::cluster::view::Snapshot> {
    ctx.cluster
        .as_ref()
        .map(|s| s.lock().map(|g| g.clone()).unwrap_or_default())
}

async fn cluster_page(AxState(ctx): AxState<Ctx>) -> Response {
    pages::cluster(cluster_snapshot(&ctx).as_ref()).into_html()
}

async fn api_cluster(AxState(ctx): AxState<Ctx>) -> Response {
    match cluster_snapshot(&ctx) {
        Some(s) => Json(s).into_response(),
        None => (StatusCode::NOT_FOUND, "no [cluster]: a single node\n").into_response(),
    }
}

async fn outbox_page(AxState(ctx): AxState<Ctx>) -> Result<Response, WebError> {
    let list = blocking(&ctx, |c| Ok(data::outbox(&c.view)?)).await?;
    Ok(pages::outbox(&list, ctx.token.is_some()).into_html())
}

async fn api_outbox(AxState(ctx): AxState<Ctx>) -> Result<Response, WebError> {
    let list = blocking(&ctx, |c| Ok(data::outbox(&c.view)?)).await?;
    Ok(Json(list).into_response())
}

async fn associations_page(AxState(ctx): AxState<Ctx>) -> Result<Response, WebError> {
    let list = blocking(&ctx, |c| Ok(data::associations(&c.view)?)).await?;
    Ok(pages::associations(&list).into_html())
}

async fn api_associations(AxState(ctx): AxState<Ctx>) -> Result<Response, WebError> {
    let list = blocking(&ctx, |c| Ok(data::associations(&c.view)?)).await?;
    Ok(Json(list).into_response())
}

/// The token from `Authorization: Bearer …` or the form ([`auth::may_act`]).
fn authorised(ctx: &HttpCtx, headers: &HeaderMap, form_token: Option<&str>) -> bool {
    auth::may_act(headers, ctx.token.as_deref(), form_token)
}

fn unauthorised() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "a valid token is needed for this action\n",
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct RetryForm {
    id: i64,
    token: Option<String>,
}

async fn retry_delivery(
    AxState(ctx): AxState<Ctx>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    Form(f): Form<RetryForm>,
) -> Result<Response, WebError> {
    if !authorised(&ctx, &headers, f.token.as_deref()) {
        warn!(peer = %peer, "action refused: no valid token");
        return Ok(unauthorised());
    }
    let id = f.id;
    let done = blocking(&ctx, move |c| {
        let done = c.state.retry_delivery(id)?;
        c.state.audit_action(
            "action_retry_delivery",
            &peer.ip().to_string(),
            None,
            &format!(
                "outbox entry {id}: {}",
                if done { "due now" } else { "not open" }
            ),
        );
        Ok(done)
    })
    .await?;
    info!(peer = %peer, id, done, "action: retry delivery");
    let _ = ctx.wake_sender.try_send(());
    Ok(Redirect::to("/outbox").into_response())
}

#[derive(Debug, Deserialize)]
struct RerunForm {
    study_uid: String,
    token: Option<String>,
}

async fn rerun_study(
    AxState(ctx): AxState<Ctx>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    Form(f): Form<RerunForm>,
) -> Result<Response, WebError> {
    if !authorised(&ctx, &headers, f.token.as_deref()) {
        warn!(peer = %peer, "action refused: no valid token");
        return Ok(unauthorised());
    }
    let uid = f.study_uid.clone();
    let job = blocking(&ctx, move |c| {
        let job = c.state.rerun_study(&uid)?;
        c.state.audit_action(
            "action_rerun_study",
            &peer.ip().to_string(),
            Some(&uid),
            &match job {
                Some(j) => format!("job {j} queued"),
                None => "not queued: unknown, still receiving, its instances removed by the retention policy, or a job is waiting".into(),
            },
        );
        Ok(job)
    })
    .await?;
    info!(peer = %peer, ?job, "action: re-run study");
    let _ = ctx.wake_assembler.try_send(());
    if job.is_none() {
        return Ok((
            StatusCode::CONFLICT,
            "not queued: unknown study, still receiving, its instances removed by the retention policy (send it again), or a job is already waiting\n",
        )
            .into_response());
    }
    Ok(Redirect::to(&format!("/studies/{}", f.study_uid)).into_response())
}

async fn metrics(AxState(ctx): AxState<Ctx>) -> Result<Response, WebError> {
    let text = blocking(&ctx, |c| {
        let m = crate::metrics::get();
        let counts = c.view.counts()?;
        m.queue_depth.set(c.view.queue_depth()?);
        m.outbox_pending
            .set(counts.outbox_in(crate::store::state::OutboxState::Pending));
        if let Ok(mb) = crate::store::durable::free_mb(&c.state_dir) {
            m.free_disk_bytes
                .set(i64::try_from(mb.saturating_mul(1024 * 1024)).unwrap_or(i64::MAX));
        }
        Ok(m.encode())
    })
    .await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// Ready: the state database answers, the disk is above `[storage] min_free_mb` and no
/// stage of the pipeline is stalled (`store::state::progress`). The model is loaded before
/// the listener (and this server) start, so a running server means a loaded model.
async fn readyz(AxState(ctx): AxState<Ctx>) -> Response {
    let verdict = blocking(&ctx, |c| {
        c.view.counts()?;
        let cfg = c.config.get();
        let floor = cfg.storage.min_free_mb;
        let free = crate::store::durable::free_mb(&c.state_dir).unwrap_or(0);
        let stalls = c.view.stalls(&cfg)?;
        Ok((free, floor, stalls))
    })
    .await;
    match verdict {
        Ok((free, floor, _)) if free < floor => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {free} MB free, below min_free_mb = {floor}\n"),
        )
            .into_response(),
        Ok((_, _, stalls)) if !stalls.is_empty() => (
            StatusCode::SERVICE_UNAVAILABLE,
            stalls
                .iter()
                .map(|s| format!("not ready: {} stalled: {}\n", s.stage, s.detail))
                .collect::<String>(),
        )
            .into_response(),
        Ok(_) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")).into_response(),
    }
}

/// An HTML string as a response.
trait IntoHtml {
    fn into_html(self) -> Response;
}

impl IntoHtml for String {
    fn into_html(self) -> Response {
        (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            self,
        )
            .into_response()
    }
}
