//! One connection's association request, plain TCP or TLS, bounded by the negotiation
//! deadline; an established association is handed to [`super::association::Handler`].

use std::net::SocketAddr;
use std::sync::Arc;

use dicom_ul::association::server::DefaultNegotiation;
use dicom_ul::ServerAssociationOptions;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{debug, warn};

use super::association::Handler;
use super::{refused, ScpCtx};
use crate::config::{canonical_ip, Config};
use crate::net::admission::{self, SourceAcl};
use crate::net::dimse;

/// Negotiate an association on `sock` and serve it until it ends. `pending` is the
/// connection's place among those not yet associated: the association slot is taken once
/// the whole A-ASSOCIATE-RQ has arrived (after the TLS handshake with `[tls]`), so
/// connections that never send one, or stall their handshake, hold no slot.
pub(super) async fn handle(
    sock: TcpStream,
    peer: SocketAddr,
    ctx: Arc<ScpCtx>,
    abort: watch::Receiver<bool>,
    pending: admission::PendingPermit,
) {
    let live = ctx.config.snapshot();
    let cfg = live.config.clone();
    let acl = SourceAcl {
        sources: live.sources.clone(),
        peer: canonical_ip(peer.ip()),
        state: ctx.state.clone(),
    };
    let opts = options(&ctx, &cfg, acl);
    match ctx.tls.clone() {
        None => handle_plain(sock, peer, ctx, abort, opts, &cfg, pending).await,
        Some(tls) => handle_tls(sock, peer, ctx, abort, opts, &cfg, pending, tls).await,
    }
}

async fn handle_plain(
    mut sock: TcpStream,
    peer: SocketAddr,
    ctx: Arc<ScpCtx>,
    abort: watch::Receiver<bool>,
    opts: ServerAssociationOptions<'static, SourceAcl, DefaultNegotiation>,
    cfg: &Config,
    pending: admission::PendingPermit,
) {
    let deadline = admission::negotiation_deadline(cfg.read_timeout());
    let started = std::time::Instant::now();
    let request = async {
        if let Err(r) = admission::precheck(&mut sock).await {
            if !matches!(r, admission::Refusal::NoHeader) {
                refused(&ctx, &peer, "request", &format!("{r:?}"));
            }
            return false;
        }
        admission::whole_request(&mut sock).await
    };
    match tokio::time::timeout(deadline, request).await {
        Ok(true) => {}
        Ok(false) => return,
        Err(_) => {
            warn!(
                deadline_s = deadline.as_secs(),
                "association request not complete by the deadline: closing"
            );
            return;
        }
    }
    drop(pending);
    let Some(_slot) = slot(&ctx, &peer) else {
        let left = deadline.saturating_sub(started.elapsed());
        admission::reject_busy(sock, left).await;
        return;
    };
    let left = deadline.saturating_sub(started.elapsed());
    match tokio::time::timeout(left, opts.establish_async(sock)).await {
        Ok(Ok(a)) => Handler::new(a, peer, ctx, cfg, abort).run().await,
        // Refused by the access check, which logged why.
        Ok(Err(e)) => debug!(error = %e, "association not established"),
        Err(_) => warn!(
            deadline_s = deadline.as_secs(),
            "association request not complete by the deadline: closing"
        ),
    }
}

/// An association slot, if one is free (the refusal is counted and reported otherwise).
fn slot(ctx: &ScpCtx, peer: &SocketAddr) -> Option<tokio::sync::OwnedSemaphorePermit> {
    let slot = ctx.limit.clone().try_acquire_owned().ok();
    if slot.is_none() && refused(ctx, peer, "limit", "association limit reached") {
        warn!(peer = %peer, "association limit reached: rejecting (transient, local limit exceeded; more from this address within a minute are counted, then reported once)");
    }
    slot
}

/// Why a TLS connection ended before its request was read whole.
#[derive(Debug, thiserror::Error)]
enum TlsNegotiation {
    #[error("TLS handshake failed: {0}")]
    Handshake(std::io::Error),
    #[error("association request refused: {0:?}")]
    Request(admission::Refusal),
}

/// The TLS handshake and the request are ours (tokio-rustls with the listener's
/// configuration, client-certificate verification included), under the same pending place
/// and deadline as a plain connection. dicom-ul 0.10.1 negotiates only on a plain
/// `TcpStream` or does the handshake itself, so the decrypted association reaches it
/// through a loopback relay ([`super::relay`]), the request read here replayed first.
#[allow(clippy::too_many_arguments)]
async fn handle_tls(
    sock: TcpStream,
    peer: SocketAddr,
    ctx: Arc<ScpCtx>,
    abort: watch::Receiver<bool>,
    opts: ServerAssociationOptions<'static, SourceAcl, DefaultNegotiation>,
    cfg: &Config,
    pending: admission::PendingPermit,
    tls: Arc<rustls::ServerConfig>,
) {
    let deadline = admission::negotiation_deadline(cfg.read_timeout());
    let started = std::time::Instant::now();
    let negotiation = async {
        let mut stream = tokio_rustls::TlsAcceptor::from(tls)
            .accept(sock)
            .await
            .map_err(TlsNegotiation::Handshake)?;
        let request = admission::read_request(&mut stream)
            .await
            .map_err(TlsNegotiation::Request)?;
        Ok((stream, request))
    };
    let (stream, request) = match tokio::time::timeout(deadline, negotiation).await {
        Ok(Ok(got)) => got,
        Ok(Err(e)) => {
            if let TlsNegotiation::Request(r) = &e {
                if matches!(
                    r,
                    admission::Refusal::TooLarge(_) | admission::Refusal::NotAssociateRq(_)
                ) {
                    refused(&ctx, &peer, "request", &format!("{r:?}"));
                }
            }
            warn!(error = %e, "TLS association not established (handshake, certificate, oversized or refused request)");
            return;
        }
        Err(_) => {
            warn!(
                deadline_s = deadline.as_secs(),
                "TLS handshake and association request not complete by the deadline: closing"
            );
            return;
        }
    };
    drop(pending);
    let Some(held) = slot(&ctx, &peer) else {
        let left = deadline.saturating_sub(started.elapsed());
        admission::answer_busy(stream, left).await;
        return;
    };
    let relay = match super::relay::Relay::start(stream, request).await {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "TLS association not established: no loopback relay to the association handler");
            return;
        }
    };
    let (inner, relay) = relay.into_parts();
    let left = deadline.saturating_sub(started.elapsed());
    match tokio::time::timeout(left, opts.establish_async(inner)).await {
        Ok(Ok(a)) => Handler::new(a, peer, ctx, cfg, abort).run().await,
        // Refused by the access check, which logged why.
        Ok(Err(e)) => debug!(error = %e, "TLS association not established"),
        Err(_) => warn!(
            deadline_s = deadline.as_secs(),
            "TLS handshake and association request not complete by the deadline: closing"
        ),
    }
    // dicom-ul's end is closed: the slot is free while the last bytes reach the peer.
    drop(held);
    relay.finish().await;
}

/// What the node accepts: its AE title, the sources' access check, Verification and the
/// configured storage classes in the decodable transfer syntaxes.
fn options(
    ctx: &ScpCtx,
    cfg: &Config,
    acl: SourceAcl,
) -> ServerAssociationOptions<'static, SourceAcl, DefaultNegotiation> {
    let mut opts = ServerAssociationOptions::new()
        .ae_access_control(acl)
        .ae_title(cfg.node.ae_title.clone())
        .with_abstract_syntax(dimse::VERIFICATION);
    for c in cfg.storage_sop_classes() {
        opts = opts.with_abstract_syntax(c);
    }
    for ts in &ctx.transfer_syntaxes {
        opts = opts.with_transfer_syntax(*ts);
    }
    // Non-strict: dicom-ul's strict mode would hold the A-ASSOCIATE-RQ to max_pdu_length,
    // which PS3.8 defines for P-DATA only; the request is bounded by the precheck instead,
    // and later PDUs by `pdata::fill`.
    opts.max_pdu_length(cfg.node.max_pdu_length)
        .strict(false)
        .read_timeout(cfg.read_timeout())
        .write_timeout(cfg.read_timeout())
}
