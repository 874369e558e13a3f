//! The sender: delivers outbox entries to `[[destinations]]` with C-STORE.
//!
//! Runs on its own thread with dicom-ul's blocking client. Every response status is
//! checked: 0000 = delivered, Bxxx = delivered with a warning (logged), anything else =
//! failed. Failed attempts are retried with exponential backoff whose schedule lives in
//! SQLite (so it survives restarts). A destination that answers — a permanent association
//! rejection or a failure status — gets `outbox.max_attempts` tries, then the entry is
//! marked `failed` with the reason and a loud log line; an unreachable destination is
//! retried without limit (a PACS down for a weekend must still get its results). Only a
//! connection attempt counts as an attempt: an entry whose destination was removed or
//! edited in a reload, or whose TLS setup is unusable, stays pending with its count as it
//! was, and a restored destination's entries are retried at once.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;
use dicom_dictionary_std::uids::{EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN};
use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_ul::association::client::CloseSocket;
use dicom_ul::pdu::{
    AssociationRJResult, PDataValue, PDataValueType, PresentationContextResultReason,
};
use dicom_ul::{ClientAssociationOptions, Pdu};
use tracing::{error, info, info_span, warn};

use super::dimse::{self, classify_status, StatusClass};
use crate::config::{Config, Destination, SharedConfig};
use crate::store::state::{now_ms, OutboxRow, State};

pub struct SenderCtx {
    pub state: Arc<State>,
    pub config: SharedConfig,
}

/// The sender loop; returns when `stop` is set.
pub fn run(ctx: SenderCtx, wake: Receiver<()>, stop: Arc<AtomicBool>) {
    let mut configured = destination_keys(&ctx.config.get());
    while !stop.load(Ordering::SeqCst) {
        let cfg = ctx.config.get();
        configured = retry_returned_destinations(&ctx, &cfg, configured);
        match ctx.state.due_outbox(now_ms()) {
            Ok(due) => {
                let mut by_dest: BTreeMap<String, Vec<OutboxRow>> = BTreeMap::new();
                for r in due {
                    by_dest.entry(r.destination.clone()).or_default().push(r);
                }
                for (key, rows) in by_dest {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    match cfg.destinations.iter().find(|d| d.key() == key) {
                        Some(d) => send_batch(&ctx, &cfg, d, rows, &stop),
                        None => park_unconfigured(&ctx, &cfg, &key, rows),
                    }
                }
            }
            Err(e) => error!(error = %e, "cannot read the outbox"),
        }
        let _ = wake.recv_timeout(Duration::from_millis(500));
    }
}

fn destination_keys(cfg: &Config) -> BTreeSet<String> {
    cfg.destinations.iter().map(Destination::key).collect()
}

/// Entries of a destination that is configured again (a reload restored it) are due now,
/// not after the wait they were parked for; returns the keys configured now.
fn retry_returned_destinations(
    ctx: &SenderCtx,
    cfg: &Config,
    before: BTreeSet<String>,
) -> BTreeSet<String> {
    let now = destination_keys(cfg);
    for key in now.difference(&before) {
        match ctx.state.outbox_retry_now(key) {
            Ok(0) => {}
            Ok(n) => {
                info!(destination = %key, pending = n, "destination configured: its pending deliveries are retried now")
            }
            Err(e) => error!(error = %e, "cannot reschedule the outbox"),
        }
    }
    now
}

/// The destination of `rows` is not in the configuration (removed or edited in a reload):
/// the entries stay pending, uncounted (nothing was tried), until a destination with
/// their key is configured again. They are never re-addressed to another destination:
/// an edited host or port may well be a different PACS.
fn park_unconfigured(ctx: &SenderCtx, cfg: &Config, key: &str, rows: Vec<OutboxRow>) {
    let reason = format!("destination {key} is not configured: kept until it is again");
    warn!(destination = %key, pending = rows.len(), "destination no longer configured: deliveries kept pending, attempts not counted");
    park(ctx, cfg, &rows, &reason);
}

/// Keep `rows` pending without counting an attempt; looked at again after the longest
/// backoff (or sooner, when their destination is configured again).
fn park(ctx: &SenderCtx, cfg: &Config, rows: &[OutboxRow], reason: &str) {
    let next = now_ms() + (cfg.outbox.retry_max_s * 1000.0) as i64;
    for r in rows {
        if let Err(e) = ctx.state.outbox_parked(r.id, reason, next) {
            error!(error = %e, "cannot reschedule the outbox entry");
        }
    }
}

fn backoff_ms(cfg: &Config, attempts_before: i64) -> i64 {
    let exp = attempts_before.clamp(0, 30) as i32;
    let s = (cfg.outbox.retry_initial_s * 2f64.powi(exp)).min(cfg.outbox.retry_max_s);
    (s * 1000.0) as i64
}

/// Record a failed attempt for `r`. `bounded`: the destination answered, so attempts count
/// toward `max_attempts`.
fn failed(ctx: &SenderCtx, cfg: &Config, r: &OutboxRow, reason: &str, bounded: bool) {
    let give_up = bounded && r.attempts + 1 >= cfg.outbox.max_attempts as i64;
    let next = now_ms() + backoff_ms(cfg, r.attempts);
    if give_up {
        error!(
            destination = %r.destination, sop = %r.sop_uid, attempts = r.attempts + 1, %reason,
            "DELIVERY FAILED PERMANENTLY: giving up on this output for this destination"
        );
    } else {
        warn!(
            destination = %r.destination, sop = %r.sop_uid, attempts = r.attempts + 1, %reason,
            retry_in_ms = next - now_ms(), "delivery failed; will retry"
        );
    }
    crate::metrics::get().output(
        &r.destination,
        if give_up { "failed" } else { "attempt_failed" },
    );
    ctx.state.audit_action(
        "delivery_attempt",
        &r.destination,
        Some(&r.study_uid),
        &format!("{} attempt {}: {reason}", r.sop_uid, r.attempts + 1),
    );
    if let Err(e) = ctx.state.outbox_failed(r.id, reason, next, give_up) {
        error!(error = %e, "cannot record the failed attempt");
    }
}

/// Encode the data set of a stored Part-10 file in the negotiated transfer syntax.
fn dataset_bytes(path: &std::path::Path, ts_uid: &str) -> Result<Vec<u8>, String> {
    let obj = dicom_object::open_file(path).map_err(|e| format!("cannot read output file: {e}"))?;
    let file_ts = obj
        .meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .to_string();
    if file_ts == ts_uid {
        // Byte-exact: the data set as written.
        let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
        let meta_len = {
            let mut v = Vec::new();
            obj.meta().write(&mut v).map_err(|e| e.to_string())?;
            v.len()
        };
        let start = 132 + meta_len;
        if bytes.len() >= start {
            return Ok(bytes[start..].to_vec());
        }
    }
    let ts = TransferSyntaxRegistry
        .get(ts_uid)
        .ok_or_else(|| format!("unknown transfer syntax {ts_uid}"))?;
    let mut out = Vec::new();
    obj.write_dataset_with_ts(&mut out, ts)
        .map_err(|e| format!("cannot encode data set: {e}"))?;
    Ok(out)
}

fn file_transfer_syntax(path: &std::path::Path) -> Option<String> {
    let f = std::fs::File::open(path).ok()?;
    let mut r = std::io::BufReader::new(f);
    let mut pre = [0u8; 128];
    std::io::Read::read_exact(&mut r, &mut pre).ok()?;
    let meta = dicom_object::FileMetaTable::from_reader(r).ok()?;
    Some(meta.transfer_syntax().trim_end_matches('\0').to_string())
}

fn send_batch(
    ctx: &SenderCtx,
    cfg: &Config,
    dest: &Destination,
    rows: Vec<OutboxRow>,
    stop: &AtomicBool,
) {
    let span = info_span!("send", destination = %dest.key());
    let _g = span.enter();
    // One presentation context per (SOP class, file transfer syntax).
    let mut contexts: Vec<(String, Vec<String>)> = Vec::new();
    let mut file_ts: Vec<Option<String>> = Vec::new();
    for r in &rows {
        let fts = file_transfer_syntax(&r.path);
        let mut tss = Vec::new();
        if let Some(t) = &fts {
            tss.push(t.clone());
        }
        let native = fts
            .as_deref()
            .is_none_or(|t| t == EXPLICIT_VR_LITTLE_ENDIAN || t == IMPLICIT_VR_LITTLE_ENDIAN);
        if native {
            for t in [EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN] {
                if !tss.iter().any(|x| x == t) {
                    tss.push(t.to_string());
                }
            }
        }
        if !contexts
            .iter()
            .any(|(c, t)| *c == r.sop_class_uid && *t == tss)
        {
            contexts.push((r.sop_class_uid.clone(), tss));
        }
        file_ts.push(fts);
    }
    let mut opts = ClientAssociationOptions::new()
        .calling_ae_title(cfg.node.ae_title.clone())
        .called_ae_title(dest.ae_title.clone())
        .max_pdu_length(cfg.node.max_pdu_length)
        .connection_timeout(Duration::from_secs_f64(cfg.outbox.connect_timeout_s))
        .read_timeout(Duration::from_secs(120))
        .write_timeout(Duration::from_secs(120));
    for (class, tss) in &contexts {
        opts = opts.with_presentation_context(class.clone(), tss.clone());
    }
    let addr = format!("{}@{}:{}", dest.ae_title, dest.host, dest.port);
    let established = match &dest.tls_ca {
        None => opts.establish_with(&addr).map(|mut a| {
            // A C-STORE is a small command PDU followed by data PDUs; with Nagle on, the
            // data waits for the peer's delayed ACK of the command (tens of ms per object).
            let _ = a.inner_stream().set_nodelay(true);
            deliver(ctx, cfg, &rows, &file_ts, stop, a)
        }),
        Some(ca) => match super::tls::client_config(ca, cfg.tls.as_ref()) {
            Ok(tls) => opts
                .tls_config(tls)
                .server_name(&dest.host)
                .establish_with_tls(&addr)
                .map(|mut a| {
                    let _ = a.inner_stream().sock.set_nodelay(true);
                    deliver(ctx, cfg, &rows, &file_ts, stop, a)
                }),
            Err(e) => {
                // Nothing was sent: not an attempt. Tried again after the longest backoff
                // (the files or the configuration may be fixed meanwhile).
                error!(error = %e, "destination TLS configuration unusable");
                park(ctx, cfg, &rows, &format!("TLS configuration: {e}"));
                return;
            }
        },
    };
    if let Err(e) = established {
        let (reason, bounded) = match &e {
            dicom_ul::association::Error::Rejected { association_rj, .. } => (
                format!(
                    "association rejected ({}): {}",
                    match association_rj.result {
                        AssociationRJResult::Permanent => "permanent",
                        AssociationRJResult::Transient => "transient",
                    },
                    association_rj.source
                ),
                association_rj.result == AssociationRJResult::Permanent,
            ),
            dicom_ul::association::Error::NoAcceptedPresentationContexts { .. } => {
                ("no presentation context accepted".to_string(), true)
            }
            other => (format!("cannot associate: {other}"), false),
        };
        if bounded {
            error!(%reason, "destination refuses the association");
        }
        for r in &rows {
            failed(ctx, cfg, r, &reason, bounded);
        }
    }
}

/// Send `rows` on an established association (plain TCP or TLS), then release it.
fn deliver<S>(
    ctx: &SenderCtx,
    cfg: &Config,
    rows: &[OutboxRow],
    file_ts: &[Option<String>],
    stop: &AtomicBool,
    mut assoc: dicom_ul::ClientAssociation<S>,
) where
    S: CloseSocket + Read + Write,
{
    let accepted: Vec<(u8, String, String)> = assoc
        .presentation_contexts()
        .iter()
        .filter(|pc| pc.reason == PresentationContextResultReason::Acceptance)
        .map(|pc| {
            (
                pc.id,
                pc.abstract_syntax.trim_end_matches('\0').to_string(),
                pc.transfer_syntax.trim_end_matches('\0').to_string(),
            )
        })
        .collect();
    let mut message_id: u16 = 0;
    let mut broken = false;
    for (i, r) in rows.iter().enumerate() {
        if broken || stop.load(Ordering::SeqCst) {
            break;
        }
        // Prefer a context whose transfer syntax is the file's own (no re-encoding).
        let pc = accepted
            .iter()
            .filter(|(_, a, _)| *a == r.sop_class_uid)
            .max_by_key(|(_, _, t)| Some(t) == file_ts[i].as_ref());
        let Some((pc_id, _, ts)) = pc.cloned() else {
            failed(
                ctx,
                cfg,
                r,
                "SOP class not accepted by the destination",
                true,
            );
            continue;
        };
        let data = match dataset_bytes(&r.path, &ts) {
            Ok(d) => d,
            Err(e) => {
                failed(ctx, cfg, r, &e, true);
                continue;
            }
        };
        message_id = message_id.wrapping_add(1);
        let cmd = dimse::c_store_rq(message_id, &r.sop_class_uid, &r.sop_uid);
        let sent = assoc
            .send(&Pdu::PData {
                data: vec![PDataValue {
                    presentation_context_id: pc_id,
                    value_type: PDataValueType::Command,
                    is_last: true,
                    data: cmd,
                }],
            })
            .map_err(|e| e.to_string())
            .and_then(|_| {
                let mut w = assoc.send_pdata(pc_id);
                w.write_all(&data).map_err(|e| e.to_string())?;
                w.finish().map_err(|e| e.to_string())
            });
        if let Err(e) = sent {
            failed(
                ctx,
                cfg,
                r,
                &format!("connection lost while sending: {e}"),
                false,
            );
            broken = true;
            continue;
        }
        let ours = (r.sop_class_uid.as_str(), r.sop_uid.as_str());
        match read_response(&mut assoc) {
            Ok(rsp) if response_mismatch(&rsp, message_id, ours).is_some() => {
                // Not the answer to this request: its status proves nothing about this
                // output, and the responses after it cannot be paired either.
                let m = response_mismatch(&rsp, message_id, ours).unwrap_or_default();
                failed(
                    ctx,
                    cfg,
                    r,
                    &format!("C-STORE response does not match the request: {m}"),
                    true,
                );
                broken = true;
            }
            Ok(rsp) => {
                let st = rsp.status.unwrap_or(0xFFFF);
                match classify_status(st) {
                    StatusClass::Success => {
                        info!(sop = %r.sop_uid, study = %r.study_uid, "output delivered");
                        crate::metrics::get().output(&r.destination, "delivered");
                        ctx.state.audit_action(
                            "delivery_attempt",
                            &r.destination,
                            Some(&r.study_uid),
                            &format!("{} attempt {}: delivered", r.sop_uid, r.attempts + 1),
                        );
                        if let Err(e) = ctx.state.outbox_delivered(r.id, None) {
                            error!(error = %e, "delivered but not recorded: may be sent again");
                        }
                    }
                    StatusClass::Warning => {
                        let w = format!(
                            "warning status {st:#06X}{}",
                            rsp.error_comment
                                .map(|c| format!(" ({c})"))
                                .unwrap_or_default()
                        );
                        warn!(sop = %r.sop_uid, status = %w, "output delivered with a warning");
                        crate::metrics::get().output(&r.destination, "delivered");
                        if let Err(e) = ctx.state.outbox_delivered(r.id, Some(&w)) {
                            error!(error = %e, "delivered but not recorded: may be sent again");
                        }
                    }
                    StatusClass::Failure => {
                        let reason = format!(
                            "C-STORE failed with status {st:#06X}{}",
                            rsp.error_comment
                                .map(|c| format!(" ({c})"))
                                .unwrap_or_default()
                        );
                        failed(ctx, cfg, r, &reason, true);
                    }
                }
            }
            Err(e) => {
                failed(ctx, cfg, r, &format!("no C-STORE response: {e}"), false);
                broken = true;
            }
        }
    }
    if broken {
        let _ = assoc.abort();
    } else if let Err(e) = assoc.release() {
        warn!(error = %e, "association release failed");
    }
}

/// Why a C-STORE-RSP is not the answer to our request (message `message_id`, storing the
/// instance `inst` of `class`), if it
/// is not. PS3.7 9.3.1.2: Message ID Being Responded To is mandatory; the Affected SOP
/// Class and Instance UIDs are optional, and must be ours when present.
fn response_mismatch(
    rsp: &dimse::Command,
    message_id: u16,
    (class, inst): (&str, &str),
) -> Option<String> {
    match rsp.message_id_responded {
        None => return Some("no Message ID Being Responded To".into()),
        Some(id) if id != message_id => {
            return Some(format!(
                "Message ID Being Responded To is {id}, the request was {message_id}"
            ))
        }
        Some(_) => {}
    }
    let uid = |name: &str, got: &str, want: &str| {
        (!got.is_empty() && got != want)
            .then(|| format!("Affected SOP {name} UID is {got}, the request's is {want}"))
    };
    uid("Instance", &rsp.affected_sop_instance_uid, inst)
        .or_else(|| uid("Class", &rsp.affected_sop_class_uid, class))
}

fn read_response<S>(assoc: &mut dicom_ul::ClientAssociation<S>) -> Result<dimse::Command, String>
where
    S: CloseSocket + Read + Write,
{
    let mut buf = Vec::new();
    loop {
        match assoc.receive().map_err(|e| e.to_string())? {
            Pdu::PData { data } => {
                for pdv in data {
                    if pdv.value_type != PDataValueType::Command {
                        return Err("unexpected data PDV in a C-STORE response".into());
                    }
                    buf.extend_from_slice(&pdv.data);
                    if buf.len() > 64 * 1024 {
                        return Err("oversize response command".into());
                    }
                    if pdv.is_last {
                        let c = dimse::decode_command(&buf).map_err(|e| e.to_string())?;
                        if c.command_field != dimse::C_STORE_RSP {
                            return Err(format!("unexpected command {:#06x}", c.command_field));
                        }
                        return Ok(c);
                    }
                }
            }
            Pdu::AbortRQ { .. } => return Err("association aborted by the destination".into()),
            other => return Err(format!("unexpected PDU {}", other.short_description())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_must_name_our_request() {
        let class = "1.2.840.10008.5.1.4.1.1.88.11";
        let r = (class, "1.2.3.4");
        let rsp = |id: Option<u16>, class: &str, inst: &str| dimse::Command {
            command_field: dimse::C_STORE_RSP,
            message_id_responded: id,
            affected_sop_class_uid: class.into(),
            affected_sop_instance_uid: inst.into(),
            status: Some(0),
            ..dimse::Command::default()
        };
        assert_eq!(
            response_mismatch(&rsp(Some(7), class, "1.2.3.4"), 7, r),
            None
        );
        // The UIDs are optional in a response.
        assert_eq!(response_mismatch(&rsp(Some(7), "", ""), 7, r), None);
        assert_eq!(
            response_mismatch(&rsp(Some(8), class, "1.2.3.4"), 7, r).as_deref(),
            Some("Message ID Being Responded To is 8, the request was 7")
        );
        assert_eq!(
            response_mismatch(&rsp(None, class, "1.2.3.4"), 7, r).as_deref(),
            Some("no Message ID Being Responded To")
        );
        assert_eq!(
            response_mismatch(&rsp(Some(7), class, "1.2.3.5"), 7, r).as_deref(),
            Some("Affected SOP Instance UID is 1.2.3.5, the request's is 1.2.3.4")
        );
        assert_eq!(
            response_mismatch(&rsp(Some(7), "1.2.840.10008.5.1.4.1.1.4", "1.2.3.4"), 7, r)
                .as_deref(),
            Some("Affected SOP Class UID is 1.2.840.10008.5.1.4.1.1.4, the request's is 1.2.840.10008.5.1.4.1.1.88.11")
        );
    }

    #[test]
    fn backoff_grows_and_caps() {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/prima-node.toml"),
        )
        .unwrap();
        let mut c = Config::parse(std::path::Path::new("x"), &text).unwrap();
        c.outbox.retry_initial_s = 2.0;
        c.outbox.retry_max_s = 60.0;
        assert_eq!(backoff_ms(&c, 0), 2000);
        assert_eq!(backoff_ms(&c, 1), 4000);
        assert_eq!(backoff_ms(&c, 10), 60_000);
        assert_eq!(backoff_ms(&c, 1000), 60_000);
    }
}
