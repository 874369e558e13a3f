//! The `Handler` serving one established association (plain TCP or TLS): reads PDU after
//! PDU, has [`super::pdv`] decide what each PDV means, sends the responses, and ends the
//! association on release, abort, shutdown, a protocol violation or a failed read.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Buf;
use dicom_ul::association::server::AsyncServerAssociation;
use dicom_ul::association::AsyncAssociation;
use dicom_ul::pdu::{PDataValue, PDataValueType};
use dicom_ul::Pdu;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tracing::{info, warn};

use super::pdv::{self, Step};
use super::store::{self, Conn, Reply};
use super::ScpCtx;
use crate::config::Config;
use crate::net::pdata;

enum Event {
    /// A whole P-DATA-TF PDU of this many bytes is at the start of the read buffer.
    PData(usize),
    Pdu(Pdu),
    /// Read failed: timeout, closed, oversize or malformed PDU.
    Ended(ReadError),
    Abort,
}

/// Why the next PDU could not be read.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error(transparent)]
    PData(#[from] pdata::PDataError),
    #[error(transparent)]
    Pdu(#[from] dicom_ul::association::Error),
}

/// How the association ends, once whatever led there was logged.
enum End {
    /// Nothing more to send: released, aborted by the peer, or the connection is gone.
    Closed,
    /// Send A-ABORT.
    Abort,
    /// Send A-ABORT, waiting at most briefly: the peer may have stopped reading.
    AbortBriefly,
}

/// Serves one established association until it ends.
pub(super) struct Handler<S> {
    assoc: AsyncServerAssociation<S>,
    ctx: Arc<ScpCtx>,
    abort: watch::Receiver<bool>,
    conn: Conn,
    max_pdu: u32,
    read_timeout: Duration,
}

impl<S> Handler<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    pub(super) fn new(
        assoc: AsyncServerAssociation<S>,
        peer: SocketAddr,
        ctx: Arc<ScpCtx>,
        cfg: &Config,
        abort: watch::Receiver<bool>,
    ) -> Self {
        let calling_ae = dicom_ul::association::Association::peer_ae_title(&assoc)
            .trim()
            .to_string();
        let conn = Conn {
            calling_ae,
            peer: peer.ip().to_string(),
            pcs: accepted_contexts(&assoc),
            storage_classes: cfg.storage_sop_classes(),
            floor_mb: cfg.storage.min_free_mb,
            cmd_buf: Vec::new(),
            cmd_pc: None,
            pending: None,
            stored: 0,
            refused: 0,
        };
        Handler {
            max_pdu: assoc.acceptor_max_pdu_length(),
            read_timeout: cfg.read_timeout(),
            assoc,
            ctx,
            abort,
            conn,
        }
    }

    /// Serve the association until release, abort or error.
    pub(super) async fn run(mut self) {
        let conn = &self.conn;
        info!(calling_ae = %conn.calling_ae, contexts = conn.pcs.len(), "association accepted");
        crate::metrics::get().association("accepted", "");
        self.ctx.state.audit(
            "association_accepted",
            Some(&conn.calling_ae),
            Some(&conn.peer),
            &format!("{} presentation contexts", conn.pcs.len()),
        );
        let end = loop {
            let event = self.next_event().await;
            let answered = match self.on_event(event).await {
                Ok(steps) => self.answer_all(steps).await,
                Err(end) => Err(end),
            };
            if let Err(end) = answered {
                break end;
            }
        };
        match end {
            End::Closed => {}
            End::Abort => {
                let _ = self.assoc.abort().await;
            }
            // PS3.8 9.3.8: an invalid PDU (oversize, truncated) is answered with A-ABORT
            // rather than a silent close, so the peer knows the association is dead.
            // Harmless (write just fails) when the peer already closed.
            End::AbortBriefly => {
                let _ = tokio::time::timeout(Duration::from_secs(2), self.assoc.abort()).await;
            }
        }
    }

    /// Wait for the next PDU or the shutdown's abort.
    async fn next_event(&mut self) -> Event {
        let (read_timeout, max_pdu) = (self.read_timeout, self.max_pdu);
        // P-DATA-TF is parsed in place (see `pdata`); anything else goes through dicom-ul.
        tokio::select! {
            r = async {
                let (sock, buf) = AsyncAssociation::get_mut(&mut self.assoc);
                // The same per-PDU read timeout dicom-ul applies to `receive`.
                tokio::time::timeout(read_timeout, pdata::fill(sock, buf, max_pdu))
                    .await
                    .unwrap_or(Err(pdata::PDataError::TimedOut))
            } => match r {
                Ok(pdata::Next::PData(n)) => Event::PData(n),
                Ok(pdata::Next::Other) => match self.assoc.receive().await {
                    Ok(pdu) => Event::Pdu(pdu),
                    Err(e) => Event::Ended(e.into()),
                },
                Err(e) => Event::Ended(e.into()),
            },
            _ = self.abort.changed() => Event::Abort,
        }
    }

    /// The PDVs an event brings, or how the association ends.
    async fn on_event(&mut self, event: Event) -> Result<Vec<Step>, End> {
        let (ctx, conn) = (&self.ctx, &mut self.conn);
        match event {
            Event::Abort => {
                warn!("shutting down: aborting association");
                Err(End::Abort)
            }
            Event::PData(n) => {
                // Every PDV of the PDU is handled (file writes happen here) before any
                // awaiting, so the PDU's bytes can be released before responses are sent.
                let (_, buf) = AsyncAssociation::get_mut(&mut self.assoc);
                let steps = match pdata::parse(&buf[..n]) {
                    Ok(pdvs) => pdv::handle_pdvs(ctx, conn, pdvs),
                    Err(e) => vec![Err(e.into())],
                };
                buf.advance(n);
                Ok(steps)
            }
            Event::Pdu(Pdu::PData { data }) => {
                // Not reached while `pdata::fill` sees P-DATA first; kept so that a PDU
                // dicom-ul hands over is never dropped.
                let pdvs = data.iter().map(|pdv| pdata::PdvRef {
                    presentation_context_id: pdv.presentation_context_id,
                    is_command: pdv.value_type == PDataValueType::Command,
                    is_last: pdv.is_last,
                    data: &pdv.data,
                });
                Ok(pdv::handle_pdvs(ctx, conn, pdvs))
            }
            Event::Pdu(Pdu::ReleaseRQ) => {
                let _ = self.assoc.send(&Pdu::ReleaseRP).await;
                info!(
                    stored = conn.stored,
                    refused = conn.refused,
                    "association released"
                );
                Err(End::Closed)
            }
            Event::Pdu(Pdu::AbortRQ { .. }) => {
                info!(
                    stored = conn.stored,
                    refused = conn.refused,
                    "association aborted by peer"
                );
                Err(End::Closed)
            }
            Event::Pdu(other) => {
                warn!(pdu = %other.short_description(), "unexpected PDU: aborting association");
                Err(End::Abort)
            }
            Event::Ended(e) => {
                warn!(error = %e, stored = conn.stored, "association ended without release (timeout, closed or malformed PDU)");
                Err(End::AbortBriefly)
            }
        }
    }

    /// Carry out the steps of one PDU in order, up to the first that ends the association.
    async fn answer_all(&mut self, steps: Vec<Step>) -> Result<(), End> {
        for step in steps {
            self.answer(step).await?;
        }
        Ok(())
    }

    /// Carry out what `pdv` decided: commit and answer, answer, or abort.
    async fn answer(&mut self, step: Step) -> Result<(), End> {
        let (pc, rsp) = match step {
            Ok(None) => return Ok(()),
            Ok(Some(Reply::Now(pc, rsp))) => (pc, rsp),
            Ok(Some(Reply::AfterCommit(c))) => store::complete(&self.ctx, &mut self.conn, *c).await,
            Err(reason) => {
                warn!(%reason, "protocol violation: aborting association");
                return Err(End::Abort);
            }
        };
        let pdu = Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: pc,
                value_type: PDataValueType::Command,
                is_last: true,
                data: rsp,
            }],
        };
        if let Err(e) = self.assoc.send(&pdu).await {
            warn!(error = %e, "cannot send response; closing");
            return Err(End::Closed);
        }
        Ok(())
    }
}

/// Accepted presentation contexts: id → (abstract syntax, transfer syntax).
fn accepted_contexts<S>(assoc: &AsyncServerAssociation<S>) -> HashMap<u8, (String, String)> {
    crate::net::accepted_contexts(assoc.presentation_contexts())
        .into_iter()
        .map(|(id, abstract_syntax, ts)| (id, (abstract_syntax, ts)))
        .collect()
}
