//! Delivery on an established association (plain TCP or TLS): each output is sent with
//! C-STORE in a presentation context the destination accepted, its response is read and
//! paired with the request, and the verdict is recorded in the outbox. A response that
//! cannot be paired, or a connection lost mid-request, ends the association with A-ABORT.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};

use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_ul::association::client::CloseSocket;
use dicom_ul::pdu::{PDataValue, PDataValueType};
use dicom_ul::Pdu;
use tracing::{error, info, warn};

use super::{failed, Deadline, SenderCtx};
use crate::config::Config;
use crate::net::dimse::{self, classify_status, CommandError, StatusClass};
use crate::store::state::OutboxRow;

/// Whether an association can carry the next output.
#[derive(Debug, PartialEq, Eq)]
enum Link {
    Open,
    /// Requests and responses can no longer be paired: abort instead of release.
    Broken,
}

/// Send `rows` on an established association (plain TCP or TLS), then release it.
/// What is not sent when the deadline passes stays pending, due at once, uncounted.
pub(super) fn deliver<S>(
    ctx: &SenderCtx,
    cfg: &Config,
    rows: &[OutboxRow],
    file_ts: &[Option<String>],
    stop: &AtomicBool,
    deadline: &Deadline,
    mut assoc: dicom_ul::ClientAssociation<S>,
) where
    S: CloseSocket + Read + Write,
{
    let accepted = crate::net::accepted_contexts(assoc.presentation_contexts());
    let mut message_id: u16 = 0;
    let mut link = Link::Open;
    let mut tried = 0;
    for (r, fts) in rows.iter().zip(file_ts) {
        // A claim may lapse while an association is under way: what is left stays queued.
        if link == Link::Broken
            || stop.load(Ordering::SeqCst)
            || deadline.passed()
            || !ctx.may_send(r)
        {
            break;
        }
        let out = Outgoing {
            row: r,
            file_ts: fts.as_ref(),
        };
        link = deliver_one(
            ctx,
            cfg,
            &mut assoc,
            &accepted,
            out,
            &mut message_id,
            deadline,
        );
        tried += 1;
    }
    if deadline.passed() {
        // Too slow a destination is backed off like an unreachable one: what this
        // association did not reach waits for the next attempt, after the backoff.
        let reason = deadline.too_slow("not sent");
        for r in &rows[tried..] {
            failed(ctx, cfg, r, &reason, false);
        }
        link = Link::Broken;
    }
    if link == Link::Broken {
        let _ = assoc.abort();
    } else if let Err(e) = assoc.release() {
        warn!(error = %e, "association release failed");
    }
}

/// One output to send, with its file's transfer syntax.
struct Outgoing<'a> {
    row: &'a OutboxRow,
    file_ts: Option<&'a String>,
}

/// Send one output with C-STORE and record how it went.
fn deliver_one<S>(
    ctx: &SenderCtx,
    cfg: &Config,
    assoc: &mut dicom_ul::ClientAssociation<S>,
    accepted: &[(u8, String, String)],
    out: Outgoing<'_>,
    message_id: &mut u16,
    deadline: &Deadline,
) -> Link
where
    S: CloseSocket + Read + Write,
{
    let r = out.row;
    // Prefer a context whose transfer syntax is the file's own (no re-encoding).
    let pc = accepted
        .iter()
        .filter(|(_, a, _)| *a == r.sop_class_uid)
        .max_by_key(|(_, _, t)| Some(t) == out.file_ts);
    let Some((pc_id, _, ts)) = pc else {
        failed(
            ctx,
            cfg,
            r,
            "SOP class not accepted by the destination",
            true,
        );
        return Link::Open;
    };
    let data = match dataset_bytes(&r.path, ts) {
        Ok(d) => d,
        Err(e) => {
            failed(ctx, cfg, r, &e.to_string(), true);
            return Link::Open;
        }
    };
    *message_id = message_id.wrapping_add(1);
    if let Err(e) = send_store(assoc, *pc_id, *message_id, r, &data) {
        failed(
            ctx,
            cfg,
            r,
            &deadline.reason("connection lost while sending", &e),
            false,
        );
        return Link::Broken;
    }
    let ours = (r.sop_class_uid.as_str(), r.sop_uid.as_str());
    match read_response(assoc) {
        Ok(rsp) => settle(ctx, cfg, r, judge_response(rsp, *message_id, ours)),
        Err(e) => {
            failed(
                ctx,
                cfg,
                r,
                &deadline.reason("no C-STORE response", &e),
                false,
            );
            Link::Broken
        }
    }
}

/// Why a C-STORE request could not be sent whole.
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error(transparent)]
    Command(#[from] dicom_ul::association::Error),
    #[error(transparent)]
    Data(#[from] std::io::Error),
}

/// The C-STORE-RQ command, then the data set.
fn send_store<S>(
    assoc: &mut dicom_ul::ClientAssociation<S>,
    pc_id: u8,
    message_id: u16,
    r: &OutboxRow,
    data: &[u8],
) -> Result<(), SendError>
where
    S: CloseSocket + Read + Write,
{
    let cmd = dimse::c_store_rq(message_id, &r.sop_class_uid, &r.sop_uid);
    assoc.send(&Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id: pc_id,
            value_type: PDataValueType::Command,
            is_last: true,
            data: cmd,
        }],
    })?;
    let mut w = assoc.send_pdata(pc_id);
    w.write_all(data)?;
    w.finish()?;
    Ok(())
}

/// What a C-STORE response means for the output it answers.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Not the answer to this request: its status proves nothing about this output, and
    /// the responses after it cannot be paired either.
    Mismatch(String),
    Delivered,
    /// Delivered; the warning is recorded with it.
    DeliveredWithWarning(String),
    Failed(String),
    /// Refused for lack of resources (A7xx, a full PACS): retried without limit.
    Busy(String),
}

fn judge_response(rsp: dimse::Command, message_id: u16, ours: (&str, &str)) -> Verdict {
    if let Some(m) = response_mismatch(&rsp, message_id, ours) {
        return Verdict::Mismatch(format!("C-STORE response does not match the request: {m}"));
    }
    let st = rsp.status.unwrap_or(0xFFFF);
    let comment = rsp
        .error_comment
        .map(|c| format!(" ({c})"))
        .unwrap_or_default();
    match classify_status(st) {
        StatusClass::Success => Verdict::Delivered,
        StatusClass::Warning => {
            Verdict::DeliveredWithWarning(format!("warning status {st:#06X}{comment}"))
        }
        StatusClass::Failure if st & 0xFF00 == 0xA700 => Verdict::Busy(format!(
            "C-STORE refused for lack of resources, status {st:#06X}{comment}: retried until it has room"
        )),
        StatusClass::Failure => {
            Verdict::Failed(format!("C-STORE failed with status {st:#06X}{comment}"))
        }
    }
}

/// Record the verdict on `r` in the outbox, the metrics and the audit trail.
fn settle(ctx: &SenderCtx, cfg: &Config, r: &OutboxRow, verdict: Verdict) -> Link {
    match verdict {
        Verdict::Mismatch(reason) => {
            failed(ctx, cfg, r, &reason, true);
            return Link::Broken;
        }
        Verdict::Delivered => {
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
        Verdict::DeliveredWithWarning(w) => {
            warn!(sop = %r.sop_uid, status = %w, "output delivered with a warning");
            crate::metrics::get().output(&r.destination, "delivered");
            // A warning may mean the PACS changed what it stored (B000: coerced): the
            // administrator finds it with the delivery, not only in the log.
            ctx.state.audit_action(
                "delivery_attempt",
                &r.destination,
                Some(&r.study_uid),
                &format!(
                    "{} attempt {}: delivered with {w}",
                    r.sop_uid,
                    r.attempts + 1
                ),
            );
            if let Err(e) = ctx.state.outbox_delivered(r.id, Some(&w)) {
                error!(error = %e, "delivered but not recorded: may be sent again");
            }
        }
        Verdict::Failed(reason) => failed(ctx, cfg, r, &reason, true),
        Verdict::Busy(reason) => failed(ctx, cfg, r, &reason, false),
    }
    Link::Open
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

/// Why no C-STORE response was read.
#[derive(Debug, thiserror::Error)]
enum ResponseError {
    #[error(transparent)]
    Receive(#[from] dicom_ul::association::Error),
    #[error("unexpected data PDV in a C-STORE response")]
    DataPdv,
    #[error("oversize response command")]
    Oversize,
    #[error(transparent)]
    Decode(#[from] CommandError),
    #[error("unexpected command {0:#06x}")]
    UnexpectedCommand(u16),
    #[error("association aborted by the destination")]
    Aborted,
    #[error("unexpected PDU {}", .0.short_description())]
    UnexpectedPdu(Box<Pdu>),
}

fn read_response<S>(
    assoc: &mut dicom_ul::ClientAssociation<S>,
) -> Result<dimse::Command, ResponseError>
where
    S: CloseSocket + Read + Write,
{
    let mut buf = Vec::new();
    loop {
        match assoc.receive()? {
            Pdu::PData { data } => {
                for pdv in data {
                    if pdv.value_type != PDataValueType::Command {
                        return Err(ResponseError::DataPdv);
                    }
                    buf.extend_from_slice(&pdv.data);
                    if buf.len() > 64 * 1024 {
                        return Err(ResponseError::Oversize);
                    }
                    if pdv.is_last {
                        let c = dimse::decode_command(&buf)?;
                        if c.command_field != dimse::C_STORE_RSP {
                            return Err(ResponseError::UnexpectedCommand(c.command_field));
                        }
                        return Ok(c);
                    }
                }
            }
            Pdu::AbortRQ { .. } => return Err(ResponseError::Aborted),
            other => return Err(ResponseError::UnexpectedPdu(Box::new(other))),
        }
    }
}

/// Why an output's data set cannot be encoded for sending.
#[derive(Debug, thiserror::Error)]
enum DatasetError {
    #[error("cannot read output file: {0}")]
    Open(#[source] Box<dicom_object::ReadError>),
    #[error(transparent)]
    Read(std::io::Error),
    #[error(transparent)]
    Meta(Box<dicom_object::meta::Error>),
    #[error("unknown transfer syntax {0}")]
    UnknownTransferSyntax(String),
    #[error("cannot encode data set: {0}")]
    Encode(#[source] Box<dicom_object::WriteError>),
}

/// Encode the data set of a stored Part-10 file in the negotiated transfer syntax.
fn dataset_bytes(path: &std::path::Path, ts_uid: &str) -> Result<Vec<u8>, DatasetError> {
    let obj = dicom_object::open_file(path).map_err(|e| DatasetError::Open(Box::new(e)))?;
    let file_ts = obj
        .meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .to_string();
    if file_ts == ts_uid {
        // Byte-exact: the data set as written.
        let bytes = std::fs::read(path).map_err(DatasetError::Read)?;
        let meta_len = {
            let mut v = Vec::new();
            obj.meta()
                .write(&mut v)
                .map_err(|e| DatasetError::Meta(Box::new(e)))?;
            v.len()
        };
        let start = 132 + meta_len;
        if bytes.len() >= start {
            return Ok(bytes[start..].to_vec());
        }
    }
    let ts = TransferSyntaxRegistry
        .get(ts_uid)
        .ok_or_else(|| DatasetError::UnknownTransferSyntax(ts_uid.to_string()))?;
    let mut out = Vec::new();
    obj.write_dataset_with_ts(&mut out, ts)
        .map_err(|e| DatasetError::Encode(Box::new(e)))?;
    Ok(out)
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
    fn responses_judged_by_status() {
        let r = ("1.2.840.10008.5.1.4.1.1.88.11", "1.2.3.4");
        let rsp = |status: Option<u16>, comment: Option<&str>| dimse::Command {
            command_field: dimse::C_STORE_RSP,
            message_id_responded: Some(3),
            status,
            error_comment: comment.map(Into::into),
            ..dimse::Command::default()
        };
        assert_eq!(judge_response(rsp(Some(0), None), 3, r), Verdict::Delivered);
        assert_eq!(
            judge_response(rsp(Some(0xB000), Some("coerced")), 3, r),
            Verdict::DeliveredWithWarning("warning status 0xB000 (coerced)".into())
        );
        // A full PACS waits for room; other failures count towards max_attempts.
        assert_eq!(
            judge_response(rsp(Some(0xA702), None), 3, r),
            Verdict::Busy(
                "C-STORE refused for lack of resources, status 0xA702: retried until it has room"
                    .into()
            )
        );
        assert_eq!(
            judge_response(rsp(Some(0xA900), None), 3, r),
            Verdict::Failed("C-STORE failed with status 0xA900".into())
        );
        // A response without a status is no proof of delivery.
        assert_eq!(
            judge_response(rsp(None, None), 3, r),
            Verdict::Failed("C-STORE failed with status 0xFFFF".into())
        );
        // Whatever its status, a response to another request settles nothing.
        assert_eq!(
            judge_response(rsp(Some(0), None), 4, r),
            Verdict::Mismatch(
                "C-STORE response does not match the request: \
                 Message ID Being Responded To is 3, the request was 4"
                    .into()
            )
        );
    }
}
