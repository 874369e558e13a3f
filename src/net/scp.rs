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

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dicom_dictionary_std::uids;
use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_ul::association::server::AsyncServerAssociation;
use dicom_ul::pdu::{PDataValue, PDataValueType, PresentationContextResultReason};
use dicom_ul::{Pdu, ServerAssociationOptions};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tracing::{debug, error, info, info_span, warn, Instrument};

use super::admission::{self, SourceAcl};
use super::dimse::{self, status, Command};
use super::pdata;
use crate::config::{canonical_ip, Config, SharedConfig};
use crate::store::header::{read_header, HeaderError, InstanceHeader};
use crate::store::spool::{FinishedInstance, Spool, TempInstance};
use crate::store::state::{InstanceRecord, RecordOutcome, State};
use crate::uid;
use bytes::Buf;
use dicom_ul::association::AsyncAssociation;

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

/// Largest command set accepted (real ones are ~200 bytes).
const MAX_COMMAND_BYTES: usize = 64 * 1024;

pub struct ScpCtx {
    pub config: SharedConfig,
    pub spool: Spool,
    pub state: Arc<State>,
    pub limit: Arc<Semaphore>,
    pub transfer_syntaxes: Vec<&'static str>,
    /// DICOM TLS on every association when set (`[tls]`).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Told after each instance is recorded, so the assembler re-plans at once instead of
    /// polling the database (a full channel already carries the news).
    pub arrivals: crossbeam_channel::Sender<()>,
}

/// Accept associations until `shutdown` turns true; `abort` makes live ones abort.
pub async fn run(
    listener: TcpListener,
    ctx: Arc<ScpCtx>,
    mut shutdown: watch::Receiver<bool>,
    abort: watch::Receiver<bool>,
) {
    let mut next_id: u64 = 0;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => break,
            r = listener.accept() => r,
        };
        let (sock, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        next_id += 1;
        let id = next_id;
        let live = ctx.config.snapshot();
        if !admission::address_allowed(&live.sources, peer.ip()) {
            // Before reading a byte: an address no source may use costs nothing more.
            warn!(id, peer = %peer, "connection refused: address not allowed by any [[sources]] entry");
            drop(sock);
            refused(
                &ctx,
                &peer,
                "address",
                "address not allowed by any [[sources]] entry",
            );
            continue;
        }
        let deadline = admission::negotiation_deadline(live.config.read_timeout());
        let _ = sock.set_nodelay(true);
        match ctx.limit.clone().try_acquire_owned() {
            Ok(permit) => {
                let ctx = ctx.clone();
                let abort = abort.clone();
                let span = info_span!("assoc", id, peer = %peer);
                tokio::spawn(
                    async move {
                        handle(sock, peer, ctx, abort).await;
                        drop(permit);
                    }
                    .instrument(span),
                );
            }
            Err(_) => {
                warn!(id, peer = %peer, "association limit reached: rejecting (transient, local limit exceeded)");
                refused(&ctx, &peer, "limit", "association limit reached");
                tokio::spawn(admission::reject_busy(sock, deadline));
            }
        }
    }
    info!("listener closed");
}

/// A connection or association refused before its calling AE title is known: counted and
/// written to the audit trail.
fn refused(ctx: &ScpCtx, peer: &SocketAddr, reason: &str, detail: &str) {
    crate::metrics::get().association("rejected", reason);
    ctx.state.audit(
        "association_rejected",
        None,
        Some(&peer.ip().to_string()),
        detail,
    );
}

enum Sink {
    File(TempInstance),
    Discard { status: u16, comment: String },
}

struct PendingStore {
    cmd: Command,
    pc: u8,
    sink: Sink,
    /// Not a C-STORE: the data set is drained and answered "unrecognized operation".
    unrecognized: bool,
    /// When the command arrived: C-STORE handling time runs from here to the response.
    started: std::time::Instant,
}

struct Conn {
    calling_ae: String,
    peer: String,
    /// Accepted presentation contexts: id → (abstract syntax, transfer syntax).
    pcs: HashMap<u8, (String, String)>,
    cmd_buf: Vec<u8>,
    cmd_pc: Option<u8>,
    pending: Option<PendingStore>,
    stored: u64,
    refused: u64,
}

enum Event {
    /// A whole P-DATA-TF PDU of this many bytes is at the start of the read buffer.
    PData(usize),
    Pdu(Pdu),
    /// Read failed: timeout, closed, oversize or malformed PDU.
    Ended(String),
    Abort,
}

async fn handle(
    mut sock: TcpStream,
    peer: SocketAddr,
    ctx: Arc<ScpCtx>,
    abort: watch::Receiver<bool>,
) {
    let live = ctx.config.snapshot();
    let cfg = live.config.clone();
    let acl = SourceAcl {
        sources: live.sources.clone(),
        peer: canonical_ip(peer.ip()),
        state: ctx.state.clone(),
    };
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
    let opts = opts
        .max_pdu_length(cfg.node.max_pdu_length)
        .strict(false)
        .read_timeout(cfg.read_timeout())
        .write_timeout(cfg.read_timeout());
    let deadline = admission::negotiation_deadline(cfg.read_timeout());
    let Some(tls) = ctx.tls.clone() else {
        let negotiation = async {
            if let Err(r) = admission::precheck(&mut sock).await {
                if !matches!(r, admission::Refusal::NoHeader) {
                    refused(&ctx, &peer, "request", &format!("{r:?}"));
                }
                return None;
            }
            Some(opts.establish_async(sock).await)
        };
        match tokio::time::timeout(deadline, negotiation).await {
            Ok(Some(Ok(a))) => serve(a, peer, ctx, cfg, abort).await,
            // Refused by the precheck or the access check, which logged why.
            Ok(Some(Err(e))) => debug!(error = %e, "association not established"),
            Ok(None) => {}
            Err(_) => warn!(
                deadline_s = deadline.as_secs(),
                "association request not complete by the deadline: closing"
            ),
        }
        return;
    };
    // The TLS stream cannot be peeked before dicom-ul reads it: strict mode bounds the
    // request by max_pdu_length instead (64 KiB by default). The deadline also covers the
    // handshake, which dicom-ul does not bound.
    let opts = opts.strict(true).tls_config(tls);
    match tokio::time::timeout(deadline, opts.establish_tls_async(sock)).await {
        Ok(Ok(a)) => serve(a, peer, ctx, cfg, abort).await,
        Ok(Err(e)) => {
            warn!(error = %e, "TLS association not established (handshake, certificate, oversized or refused request)")
        }
        Err(_) => warn!(
            deadline_s = deadline.as_secs(),
            "TLS handshake and association request not complete by the deadline: closing"
        ),
    }
}

/// Serve an established association (plain TCP or TLS) until release, abort or error.
async fn serve<S>(
    mut assoc: AsyncServerAssociation<S>,
    peer: SocketAddr,
    ctx: Arc<ScpCtx>,
    cfg: Arc<Config>,
    mut abort: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    let calling_ae = dicom_ul::association::Association::peer_ae_title(&assoc)
        .trim()
        .to_string();
    let mut conn = Conn {
        calling_ae: calling_ae.clone(),
        peer: peer.ip().to_string(),
        pcs: assoc
            .presentation_contexts()
            .iter()
            .filter(|pc| pc.reason == PresentationContextResultReason::Acceptance)
            .map(|pc| {
                (
                    pc.id,
                    (
                        pc.abstract_syntax.trim_end_matches('\0').to_string(),
                        pc.transfer_syntax.trim_end_matches('\0').to_string(),
                    ),
                )
            })
            .collect(),
        cmd_buf: Vec::new(),
        cmd_pc: None,
        pending: None,
        stored: 0,
        refused: 0,
    };
    info!(calling_ae = %calling_ae, contexts = conn.pcs.len(), "association accepted");
    crate::metrics::get().association("accepted", "");
    ctx.state.audit(
        "association_accepted",
        Some(&calling_ae),
        Some(&conn.peer),
        &format!("{} presentation contexts", conn.pcs.len()),
    );
    let storage_classes = cfg.storage_sop_classes();
    let floor = cfg.storage.min_free_mb;
    let max_pdu = assoc.acceptor_max_pdu_length();
    let read_timeout = cfg.read_timeout();
    loop {
        // P-DATA-TF is parsed in place (see `pdata`); anything else goes through dicom-ul.
        let ev = tokio::select! {
            r = async {
                let (sock, buf) = AsyncAssociation::get_mut(&mut assoc);
                // The same per-PDU read timeout dicom-ul applies to `receive`.
                tokio::time::timeout(read_timeout, pdata::fill(sock, buf, max_pdu))
                    .await
                    .unwrap_or(Err(pdata::PDataError::TimedOut))
            } => match r {
                Ok(pdata::Next::PData(n)) => Event::PData(n),
                Ok(pdata::Next::Other) => match assoc.receive().await {
                    Ok(pdu) => Event::Pdu(pdu),
                    Err(e) => Event::Ended(e.to_string()),
                },
                Err(e) => Event::Ended(e.to_string()),
            },
            _ = abort.changed() => Event::Abort,
        };
        let steps = match ev {
            Event::Abort => {
                warn!("shutting down: aborting association");
                let _ = assoc.abort().await;
                return;
            }
            Event::PData(n) => {
                // Every PDV of the PDU is handled (file writes happen here) before any
                // awaiting, so the PDU's bytes can be released before responses are sent.
                let (_, buf) = AsyncAssociation::get_mut(&mut assoc);
                let steps = match pdata::parse(&buf[..n]) {
                    Ok(pdvs) => handle_pdvs(&ctx, &mut conn, &storage_classes, floor, pdvs),
                    Err(e) => vec![Err(e.to_string())],
                };
                buf.advance(n);
                steps
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
                handle_pdvs(&ctx, &mut conn, &storage_classes, floor, pdvs)
            }
            Event::Pdu(Pdu::ReleaseRQ) => {
                let _ = assoc.send(&Pdu::ReleaseRP).await;
                info!(
                    stored = conn.stored,
                    refused = conn.refused,
                    "association released"
                );
                return;
            }
            Event::Pdu(Pdu::AbortRQ { .. }) => {
                info!(
                    stored = conn.stored,
                    refused = conn.refused,
                    "association aborted by peer"
                );
                return;
            }
            Event::Pdu(other) => {
                warn!(pdu = %other.short_description(), "unexpected PDU: aborting association");
                let _ = assoc.abort().await;
                return;
            }
            Event::Ended(e) => {
                warn!(error = %e, stored = conn.stored, "association ended without release (timeout, closed or malformed PDU)");
                // PS3.8 9.3.8: an invalid PDU (oversize, truncated) is answered with A-ABORT
                // rather than a silent close, so the peer knows the association is dead.
                // Harmless (write just fails) when the peer already closed.
                let _ = tokio::time::timeout(Duration::from_secs(2), assoc.abort()).await;
                return;
            }
        };
        for step in steps {
            match answer(&mut assoc, &ctx, &mut conn, step).await {
                Flow::Go => {}
                Flow::Closed => return,
                Flow::Abort => {
                    let _ = assoc.abort().await;
                    return;
                }
            }
        }
    }
}

/// Handle a PDU's PDVs in order, up to the first protocol violation.
fn handle_pdvs<'a>(
    ctx: &ScpCtx,
    conn: &mut Conn,
    storage_classes: &[String],
    floor_mb: u64,
    pdvs: impl IntoIterator<Item = pdata::PdvRef<'a>>,
) -> Vec<Result<Option<Reply>, String>> {
    let mut steps = Vec::with_capacity(1);
    for pdv in pdvs {
        let r = on_pdv(ctx, conn, storage_classes, floor_mb, pdv);
        let stop = r.is_err();
        steps.push(r);
        if stop {
            break;
        }
    }
    steps
}

/// After a PDV: go on, or the association is over (closed, or to be aborted).
enum Flow {
    Go,
    Closed,
    Abort,
}

/// Carry out what `on_pdv` decided: commit and answer, answer, or abort.
async fn answer<S>(
    assoc: &mut AsyncServerAssociation<S>,
    ctx: &ScpCtx,
    conn: &mut Conn,
    step: Result<Option<Reply>, String>,
) -> Flow
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    let (pc, rsp) = match step {
        Ok(None) => return Flow::Go,
        Ok(Some(Reply::Now(pc, rsp))) => (pc, rsp),
        Ok(Some(Reply::AfterCommit(c))) => complete(ctx, conn, *c).await,
        Err(reason) => {
            warn!(%reason, "protocol violation: aborting association");
            return Flow::Abort;
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
    if let Err(e) = assoc.send(&pdu).await {
        warn!(error = %e, "cannot send response; closing");
        return Flow::Closed;
    }
    Flow::Go
}

/// What to answer a PDV with.
enum Reply {
    /// This response, now.
    Now(u8, Vec<u8>),
    /// A checked instance: the response waits for the spool to make it durable.
    AfterCommit(Box<Committing>),
}

/// A received instance whose header was checked, on its way into the spool.
struct Committing {
    pc: u8,
    cmd: Command,
    header: InstanceHeader,
    done: FinishedInstance,
    started: std::time::Instant,
}

/// Handle one PDV; returns what to answer, or an abort reason.
///
/// Runs on the async task without `block_in_place`: the file work here is page-cache
/// writes of at most one PDV and, at the end of a data set, reading back its header, each
/// tens of microseconds. Handing the runtime thread over for each of them (as this did
/// before) cost more than the work itself. The one long wait, for the fsyncs, is awaited
/// in [`complete`] without holding a thread.
fn on_pdv(
    ctx: &ScpCtx,
    conn: &mut Conn,
    storage_classes: &[String],
    floor_mb: u64,
    pdv: pdata::PdvRef<'_>,
) -> Result<Option<Reply>, String> {
    let pc = pdv.presentation_context_id;
    let Some((abstract_syntax, ts)) = conn.pcs.get(&pc).cloned() else {
        return Err(format!(
            "P-DATA on presentation context {pc}, which was not accepted"
        ));
    };
    match pdv.is_command {
        true => {
            if conn.pending.is_some() {
                return Err("command PDV while a data set was still expected".into());
            }
            if conn.cmd_pc.is_some_and(|p| p != pc) {
                return Err("command fragments on different presentation contexts".into());
            }
            conn.cmd_pc = Some(pc);
            if conn.cmd_buf.len() + pdv.data.len() > MAX_COMMAND_BYTES {
                return Err("command set larger than 64 KiB".into());
            }
            conn.cmd_buf.extend_from_slice(pdv.data);
            if !pdv.is_last {
                return Ok(None);
            }
            let bytes = std::mem::take(&mut conn.cmd_buf);
            conn.cmd_pc = None;
            let cmd = dimse::decode_command(&bytes).map_err(|e| format!("bad command set: {e}"))?;
            Ok(on_command(
                ctx,
                conn,
                storage_classes,
                floor_mb,
                pc,
                &abstract_syntax,
                &ts,
                cmd,
            )?
            .map(|(pc, rsp)| Reply::Now(pc, rsp)))
        }
        false => {
            let Some(p) = conn.pending.as_mut() else {
                return Err("data PDV without a preceding command".into());
            };
            if p.pc != pc {
                return Err("data PDV on another presentation context than its command".into());
            }
            if let Sink::File(t) = &mut p.sink {
                if let Err(e) = t.write(pdv.data) {
                    let status = status::OUT_OF_RESOURCES;
                    warn!(calling_ae = %conn.calling_ae, error = %e, "cannot spool instance: refusing (A700)");
                    // Dropping the temp file removes it; the rest of the data set is drained.
                    p.sink = Sink::Discard {
                        status,
                        comment: "out of resources".into(),
                    };
                }
            }
            if !pdv.is_last {
                return Ok(None);
            }
            let p = conn.pending.take().expect("checked above");
            let msg_id = p.cmd.message_id;
            if p.unrecognized {
                return Ok(Some(Reply::Now(
                    pc,
                    dimse::unrecognized_rsp(
                        msg_id,
                        p.cmd.command_field,
                        &p.cmd.affected_sop_class_uid,
                    ),
                )));
            }
            let (st, comment) = match p.sink {
                Sink::Discard { status, comment } => (status, Some(comment)),
                Sink::File(t) => match check_received(conn, &p.cmd, &ts, t) {
                    Ok((header, done)) => {
                        return Ok(Some(Reply::AfterCommit(Box::new(Committing {
                            pc,
                            cmd: p.cmd,
                            header,
                            done,
                            started: p.started,
                        }))))
                    }
                    Err(refusal) => refusal,
                },
            };
            Ok(Some(Reply::Now(pc, store_rsp(conn, &p.cmd, st, comment))))
        }
    }
}

/// The C-STORE response, counted for the association's summary line.
fn store_rsp(conn: &mut Conn, cmd: &Command, st: u16, comment: Option<String>) -> Vec<u8> {
    let m = crate::metrics::get();
    if st == status::SUCCESS {
        conn.stored += 1;
        m.instances_received.inc();
    } else {
        conn.refused += 1;
        m.refused(&format!("{st:04X}"));
    }
    dimse::c_store_rsp(
        cmd.message_id,
        &cmd.affected_sop_class_uid,
        &cmd.affected_sop_instance_uid,
        st,
        comment.as_deref(),
    )
}

#[allow(clippy::too_many_arguments)]
fn on_command(
    ctx: &ScpCtx,
    conn: &mut Conn,
    storage_classes: &[String],
    floor_mb: u64,
    pc: u8,
    abstract_syntax: &str,
    ts: &str,
    cmd: Command,
) -> Result<Option<(u8, Vec<u8>)>, String> {
    match cmd.command_field {
        dimse::C_ECHO_RQ => {
            debug!("C-ECHO");
            if cmd.has_data_set() {
                return Err("C-ECHO-RQ announcing a data set".into());
            }
            Ok(Some((
                pc,
                dimse::c_echo_rsp(cmd.message_id, dimse::VERIFICATION),
            )))
        }
        dimse::C_STORE_RQ => {
            if !cmd.has_data_set() {
                return Ok(Some((
                    pc,
                    dimse::c_store_rsp(
                        cmd.message_id,
                        &cmd.affected_sop_class_uid,
                        &cmd.affected_sop_instance_uid,
                        status::CANNOT_UNDERSTAND,
                        Some("C-STORE-RQ without a data set"),
                    ),
                )));
            }
            let sink = if cmd.affected_sop_class_uid != abstract_syntax
                || !storage_classes.contains(&cmd.affected_sop_class_uid)
            {
                warn!(calling_ae = %conn.calling_ae, "C-STORE SOP class differs from its presentation context: refusing (0122)");
                Sink::Discard {
                    status: status::SOP_CLASS_NOT_SUPPORTED,
                    comment: "SOP class not supported on this context".into(),
                }
            } else if !uid::is_valid(&cmd.affected_sop_instance_uid) {
                warn!(calling_ae = %conn.calling_ae, len = cmd.affected_sop_instance_uid.len(), "C-STORE with a malformed Affected SOP Instance UID: refusing (C001)");
                Sink::Discard {
                    status: status::BAD_UID,
                    comment: "malformed Affected SOP Instance UID".into(),
                }
            } else {
                let begun = ctx.spool.check_space(floor_mb).and_then(|_| {
                    ctx.spool.begin(
                        &cmd.affected_sop_class_uid,
                        &cmd.affected_sop_instance_uid,
                        ts,
                        &conn.calling_ae,
                        floor_mb,
                    )
                });
                match begun {
                    Ok(t) => Sink::File(t),
                    Err(e) => {
                        warn!(calling_ae = %conn.calling_ae, error = %e, "cannot accept instance: refusing (A700)");
                        Sink::Discard {
                            status: status::OUT_OF_RESOURCES,
                            comment: "out of resources".into(),
                        }
                    }
                }
            };
            conn.pending = Some(PendingStore {
                cmd,
                pc,
                sink,
                unrecognized: false,
                started: std::time::Instant::now(),
            });
            Ok(None)
        }
        dimse::C_CANCEL_RQ => Ok(None),
        other => {
            warn!(
                command = format!("{other:#06x}"),
                "unsupported DIMSE operation"
            );
            if cmd.has_data_set() {
                conn.pending = Some(PendingStore {
                    cmd,
                    pc,
                    sink: Sink::Discard {
                        status: status::UNRECOGNIZED_OPERATION,
                        comment: String::new(),
                    },
                    unrecognized: true,
                    started: std::time::Instant::now(),
                });
                Ok(None)
            } else {
                Ok(Some((
                    pc,
                    dimse::unrecognized_rsp(cmd.message_id, other, &cmd.affected_sop_class_uid),
                )))
            }
        }
    }
}

/// The whole data set is in: check its header against the command. Ok: ready to commit;
/// Err: the status to refuse it with (the temporary file is gone).
fn check_received(
    conn: &Conn,
    cmd: &Command,
    ts: &str,
    t: TempInstance,
) -> Result<(InstanceHeader, FinishedInstance), (u16, Option<String>)> {
    let done = match t.finish() {
        Ok(d) => d,
        Err(e) => {
            error!(calling_ae = %conn.calling_ae, error = %e, "cannot write instance: refusing (A700)");
            return Err((status::OUT_OF_RESOURCES, Some("write failed".into())));
        }
    };
    let header = match read_header(&done.path) {
        Ok(h) => h,
        Err(e) => {
            let st = match e {
                HeaderError::Parse(_) => status::CANNOT_UNDERSTAND,
                HeaderError::Missing(_) | HeaderError::BadUid { .. } => status::BAD_UID,
            };
            warn!(calling_ae = %conn.calling_ae, peer = %conn.peer, transfer_syntax = ts, error = %e,
                status = format!("{st:#06X}"), "data set refused: cannot understand");
            done.discard();
            return Err((st, Some(e.to_string())));
        }
    };
    if header.sop_instance_uid != cmd.affected_sop_instance_uid {
        warn!(calling_ae = %conn.calling_ae, "data set SOP Instance UID differs from the command's: refusing (C002)");
        done.discard();
        return Err((
            status::UID_MISMATCH,
            Some("SOP Instance UID differs from the command".into()),
        ));
    }
    if header.sop_class_uid != cmd.affected_sop_class_uid {
        warn!(calling_ae = %conn.calling_ae, "data set SOP Class UID differs from the command's: refusing (A900)");
        done.discard();
        return Err((
            status::DATASET_MISMATCH,
            Some("SOP Class UID differs from the command".into()),
        ));
    }
    Ok((header, done))
}

/// Make a checked instance durable, record it, and build the response. Success only after
/// the spool made the content and the directory entry durable.
async fn complete(ctx: &ScpCtx, conn: &mut Conn, c: Committing) -> (u8, Vec<u8>) {
    let Committing {
        pc,
        cmd,
        header,
        done,
        started,
    } = c;
    let (st, comment) = record(ctx, conn, header, done).await;
    let rsp = store_rsp(conn, &cmd, st, comment);
    crate::metrics::get()
        .cstore_seconds
        .observe(started.elapsed().as_secs_f64());
    (pc, rsp)
}

async fn record(
    ctx: &ScpCtx,
    conn: &Conn,
    header: InstanceHeader,
    done: FinishedInstance,
) -> (u16, Option<String>) {
    let content_hash = done.content_hash.clone();
    let size = done.size;
    let path = match ctx.spool.commit_async(done, &header.sop_instance_uid).await {
        Ok(p) => p,
        Err(e) => {
            error!(calling_ae = %conn.calling_ae, error = %e, "cannot move instance into the spool: refusing (A700)");
            return (status::OUT_OF_RESOURCES, Some("write failed".into()));
        }
    };
    let rec = InstanceRecord {
        sop_uid: header.sop_instance_uid,
        study_uid: header.study_instance_uid,
        series_uid: header.series_instance_uid,
        sop_class_uid: header.sop_class_uid,
        modality: header.modality,
        transfer_syntax: header.transfer_syntax,
        series_number: header.series_number,
        series_description: header.series_description,
        path,
        content_hash,
        size,
        calling_ae: conn.calling_ae.clone(),
        peer: conn.peer.clone(),
    };
    match ctx.state.record_instance(&rec) {
        Ok(outcome) => {
            if outcome == RecordOutcome::Replaced {
                info!(study = %rec.study_uid, "instance with a known SOP Instance UID replaced");
            }
            debug!(study = %rec.study_uid, ?outcome, "instance stored");
            let _ = ctx.arrivals.try_send(());
            (status::SUCCESS, None)
        }
        Err(e) => {
            // The file is durable and will be re-indexed at the next start; the sender is
            // told to retry so nothing depends on that.
            error!(error = %e, "cannot record instance in the state database: refusing (A700)");
            (
                status::OUT_OF_RESOURCES,
                Some("state database error".into()),
            )
        }
    }
}
