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

/// How a connection was admitted at accept.
pub(super) enum Admitted {
    /// Plain TCP: a place among the pending connections; the association slot is taken
    /// once the whole A-ASSOCIATE-RQ has arrived.
    Pending(admission::PendingPermit),
    /// TLS: the request cannot be seen before the handshake, so the slot is taken at
    /// accept (and the negotiation deadline covers the handshake).
    Slot(tokio::sync::OwnedSemaphorePermit),
}

/// Negotiate an association on `sock` and serve it until it ends.
pub(super) async fn handle(
    mut sock: TcpStream,
    peer: SocketAddr,
    ctx: Arc<ScpCtx>,
    abort: watch::Receiver<bool>,
    admitted: Admitted,
) {
    let live = ctx.config.snapshot();
    let cfg = live.config.clone();
    let acl = SourceAcl {
        sources: live.sources.clone(),
        peer: canonical_ip(peer.ip()),
        state: ctx.state.clone(),
    };
    let opts = options(&ctx, &cfg, acl);
    let deadline = admission::negotiation_deadline(cfg.read_timeout());
    let pending = match admitted {
        Admitted::Pending(p) => p,
        Admitted::Slot(slot) => return handle_tls(sock, peer, ctx, abort, opts, &cfg, slot).await,
    };
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
    let Ok(_slot) = ctx.limit.clone().try_acquire_owned() else {
        if refused(&ctx, &peer, "limit", "association limit reached") {
            warn!(peer = %peer, "association limit reached: rejecting (transient, local limit exceeded; more from this address within a minute are counted, then reported once)");
        }
        let left = deadline.saturating_sub(started.elapsed());
        admission::reject_busy(sock, left).await;
        return;
    };
    let left = deadline.saturating_sub(started.elapsed());
    match tokio::time::timeout(left, opts.establish_async(sock)).await {
        Ok(Ok(a)) => Handler::new(a, peer, ctx, &cfg, abort).run().await,
        // Refused by the access check, which logged why.
        Ok(Err(e)) => debug!(error = %e, "association not established"),
        Err(_) => warn!(
            deadline_s = deadline.as_secs(),
            "association request not complete by the deadline: closing"
        ),
    }
}

async fn handle_tls(
    sock: TcpStream,
    peer: SocketAddr,
    ctx: Arc<ScpCtx>,
    abort: watch::Receiver<bool>,
    opts: ServerAssociationOptions<'static, SourceAcl, DefaultNegotiation>,
    cfg: &Config,
    // Held until the association ends.
    _slot: tokio::sync::OwnedSemaphorePermit,
) {
    let deadline = admission::negotiation_deadline(cfg.read_timeout());
    let Some(tls) = ctx.tls.clone() else {
        return;
    };
    // The TLS stream cannot be peeked before dicom-ul reads it: strict mode bounds the
    // request by max_pdu_length instead (64 KiB by default). The deadline also covers the
    // handshake, which dicom-ul does not bound.
    let opts = opts.strict(true).tls_config(tls);
    match tokio::time::timeout(deadline, opts.establish_tls_async(sock)).await {
        Ok(Ok(a)) => Handler::new(a, peer, ctx, cfg, abort).run().await,
        Ok(Err(e)) => {
            warn!(error = %e, "TLS association not established (handshake, certificate, oversized or refused request)")
        }
        Err(_) => warn!(
            deadline_s = deadline.as_secs(),
            "TLS handshake and association request not complete by the deadline: closing"
        ),
    }
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
