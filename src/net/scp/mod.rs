//! The DICOM service: associations in, C-ECHO and C-STORE.
//!
//! Each accepted TCP connection gets TCP_NODELAY, a per-PDU read timeout and a task of its
//! own (bounded by `node.max_associations`; beyond that the association is rejected as
//! transient "local limit exceeded"). What an unauthenticated connection may cost (address
//! at accept, size of the request, time to negotiate) is bounded in [`super::admission`];
//! called AE, calling AE and peer address are checked against `[[sources]]` with the
//! standard rejection reasons. Commands are reassembled
//! across PDVs; data PDVs stream into a spool temporary file, never a whole instance in
//! memory. The C-STORE response is Success only after the spool made the instance durable;
//! otherwise it carries a precise failure status (see [`super::dimse::status`]).
//!
//! The parts, in the order a connection meets them:
//! - this module: the `Listener` accepts connections and decides which get a task;
//! - `negotiate`: the association request on one connection (plain TCP or TLS), up to an
//!   established association;
//! - `relay`: a TLS association's decrypted bytes to dicom-ul over loopback TCP;
//! - `association`: the `Handler` serving one established association, PDU by PDU, until
//!   release, abort or error;
//! - `pdv`: what each presentation data value means (command reassembly, C-ECHO, C-STORE,
//!   unsupported operations) and the protocol violations that end an association;
//! - `store`: a C-STORE's data set from its command to the spool and the state database,
//!   and the status it is answered with.

mod association;
mod negotiate;
mod pdv;
mod relay;
mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dicom_dictionary_std::uids;
use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tracing::{info, info_span, warn, Instrument};

use super::admission;
use crate::config::SharedConfig;
use crate::store::spool::Spool;
use crate::store::state::State;

/// Transfer syntaxes offered, in our preference order (the requestor's order wins among
/// these). Only what the node can decode: JPEG-LS and JPEG extended are not listed.
/// Deflated Explicit VR Little Endian is not offered: its claimed element lengths cannot
/// be checked against the received bytes before parsing (see `check_element_lengths`).
const CANDIDATE_TS: &[&str] = &[
    uids::EXPLICIT_VR_LITTLE_ENDIAN,
    uids::IMPLICIT_VR_LITTLE_ENDIAN,
    uids::JPEG_LOSSLESS_SV1,
    uids::JPEG_LOSSLESS,
    uids::JPEG_BASELINE8_BIT,
    uids::RLE_LOSSLESS,
    uids::JPEG2000_LOSSLESS,
    uids::JPEG2000,
];

/// The candidate transfer syntaxes this build can actually decode.
pub fn decodable_transfer_syntaxes() -> Vec<&'static str> {
    CANDIDATE_TS
        .iter()
        .copied()
        .filter(|uid| {
            TransferSyntaxRegistry.get(uid).is_some_and(|ts| {
                !ts.is_unsupported()
                    && !ts.is_unsupported_pixel_encapsulation()
                    && ts.can_decode_all()
            })
        })
        .collect()
}

pub struct ScpCtx {
    pub config: SharedConfig,
    pub spool: Spool,
    pub state: Arc<State>,
    pub limit: Arc<Semaphore>,
    /// Connections not yet associated (plain TCP or TLS), per address and in all.
    pub pending: Arc<super::admission::Pending>,
    pub transfer_syntaxes: Vec<&'static str>,
    /// DICOM TLS on every association when set (`[tls]`).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Told after each instance is recorded, so the assembler re-plans at once instead of
    /// polling the database (a full channel already carries the news).
    pub arrivals: crossbeam_channel::Sender<()>,
    /// Connections refused at accept, reported once a minute per address and reason.
    pub refusals: super::refusals::Refusals,
}

/// Accept associations until `shutdown` turns true; `abort` makes live ones abort.
pub async fn run(
    listener: TcpListener,
    ctx: Arc<ScpCtx>,
    shutdown: watch::Receiver<bool>,
    abort: watch::Receiver<bool>,
) {
    Listener {
        listener,
        ctx,
        abort,
        next_id: 0,
    }
    .run(shutdown)
    .await
}

/// Accepts connections and gives each admitted one a task of its own.
struct Listener {
    listener: TcpListener,
    ctx: Arc<ScpCtx>,
    /// Handed to every association: turning true makes it abort.
    abort: watch::Receiver<bool>,
    /// Numbers connections for the log.
    next_id: u64,
}

impl Listener {
    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut report = tokio::time::interval(Duration::from_secs(5));
        loop {
            let accepted = tokio::select! {
                _ = shutdown.changed() => break,
                _ = report.tick() => {
                    report_counted(&self.ctx, false);
                    continue;
                }
                r = self.listener.accept() => r,
            };
            match accepted {
                Ok((sock, peer)) => self.admit(sock, peer),
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        report_counted(&self.ctx, true);
        info!("listener closed");
    }

    /// Refuse the connection, answer it busy, or start serving it on a task of its own.
    fn admit(&mut self, sock: TcpStream, peer: SocketAddr) {
        let ctx = &self.ctx;
        self.next_id += 1;
        let id = self.next_id;
        let live = ctx.config.snapshot();
        if !admission::address_allowed(&live.sources, peer.ip()) {
            // Before reading a byte: an address no source may use costs nothing more.
            drop(sock);
            let detail = "address not allowed by any [[sources]] entry";
            if refused(ctx, &peer, "address", detail) {
                warn!(id, peer = %peer, "connection refused: {detail} (more from this address within a minute are counted, then reported once)");
            }
            return;
        }
        let _ = sock.set_nodelay(true);
        // TLS or not, a connection holds only a pending place until its whole request has
        // arrived (after the handshake, with TLS): then it takes an association slot.
        match ctx.pending.take(peer.ip()) {
            Some(p) => {
                let ctx = ctx.clone();
                let abort = self.abort.clone();
                let span = info_span!("assoc", id, peer = %peer);
                tokio::spawn(negotiate::handle(sock, peer, ctx, abort, p).instrument(span));
            }
            None => {
                let detail = "too many connections from this address not yet associated";
                if refused(ctx, &peer, "pending", detail) {
                    warn!(id, peer = %peer, "connection refused: {detail} (more from this address within a minute are counted, then reported once)");
                }
            }
        }
    }
}

/// A connection refused before its calling AE title is known: counted, and written to the
/// audit trail when it is the first of its address and reason this minute (returns
/// whether it was: the caller logs it then).
fn refused(ctx: &ScpCtx, peer: &SocketAddr, reason: &'static str, detail: &str) -> bool {
    crate::metrics::get().association("rejected", reason);
    let first = ctx
        .refusals
        .note(peer.ip(), reason, detail, std::time::Instant::now());
    if first {
        ctx.state.audit(
            "association_rejected",
            None,
            Some(&peer.ip().to_string()),
            detail,
        );
    }
    first
}

/// The refusals counted after a first one, as one line and one audit row each.
fn report_counted(ctx: &ScpCtx, all: bool) {
    for c in ctx.refusals.ended(std::time::Instant::now(), all) {
        warn!(peer = %c.peer, reason = c.reason, more = c.more, "{} more connections refused in the last minute: {}", c.more, c.detail);
        ctx.state.audit(
            "association_rejected",
            None,
            Some(&c.peer.to_string()),
            &format!("{} more within a minute: {}", c.more, c.detail),
        );
    }
}
