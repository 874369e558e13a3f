//! C-STORE into the spool: a command is checked before its data set is read (refused ones
//! are drained, not spooled), the data set streams into a spool temporary file, its header
//! is checked against the command, and the instance is made durable and recorded before
//! the response says Success. Every refusal carries its precise status.

use std::collections::HashMap;

use tracing::{debug, error, info, warn};

use super::ScpCtx;
use crate::net::dimse::{self, status, Command};
use crate::store::header::{read_header, HeaderError, InstanceHeader};
use crate::store::spool::{FinishedInstance, TempInstance};
use crate::store::state::{InstanceRecord, RecordOutcome};
use crate::uid;

/// What one association negotiated and has in flight; the state PDV handling works on.
pub(super) struct Conn {
    pub(super) calling_ae: String,
    pub(super) peer: String,
    /// Accepted presentation contexts: id → (abstract syntax, transfer syntax).
    pub(super) pcs: HashMap<u8, (String, String)>,
    /// Storage SOP classes accepted when the association was negotiated.
    pub(super) storage_classes: Vec<String>,
    /// `storage.min_free_mb` when the association was negotiated.
    pub(super) floor_mb: u64,
    pub(super) cmd_buf: Vec<u8>,
    pub(super) cmd_pc: Option<u8>,
    pub(super) pending: Option<PendingStore>,
    pub(super) stored: u64,
    pub(super) refused: u64,
}

/// What to answer a PDV with.
pub(super) enum Reply {
    /// This response, now.
    Now(u8, Vec<u8>),
    /// A checked instance: the response waits for the spool to make it durable.
    AfterCommit(Box<Committing>),
}

/// The status a C-STORE is answered with, and its Error Comment.
type StoreStatus = (u16, Option<String>);

/// Where a data set's bytes go.
pub(super) enum Sink {
    File(TempInstance),
    Discard { status: u16, comment: String },
}

/// A command whose data set is being received.
pub(super) struct PendingStore {
    pub(super) cmd: Command,
    pub(super) pc: u8,
    pub(super) sink: Sink,
    /// Not a C-STORE: the data set is drained and answered "unrecognized operation".
    pub(super) unrecognized: bool,
    /// When the command arrived: C-STORE handling time runs from here to the response.
    pub(super) started: std::time::Instant,
}

impl PendingStore {
    /// Spool a fragment of the data set; a failed write turns the rest into a drain.
    pub(super) fn write(&mut self, data: &[u8], calling_ae: &str) {
        if let Sink::File(t) = &mut self.sink {
            if let Err(e) = t.write(data) {
                let status = status::OUT_OF_RESOURCES;
                warn!(calling_ae = %calling_ae, error = %e, "cannot spool instance: refusing (A700)");
                // Dropping the temp file removes it; the rest of the data set is drained.
                self.sink = Sink::Discard {
                    status,
                    comment: "out of resources".into(),
                };
            }
        }
    }
}

/// A received instance whose header was checked, on its way into the spool.
pub(super) struct Committing {
    pc: u8,
    cmd: Command,
    header: InstanceHeader,
    done: FinishedInstance,
    started: std::time::Instant,
}

/// Why a C-STORE is refused on its command alone, before any of its data is read.
#[derive(Debug, PartialEq, Eq)]
enum CommandRefusal {
    /// The SOP class is not the presentation context's, or not a storage class we accept.
    SopClass,
    /// The Affected SOP Instance UID is malformed.
    InstanceUid,
}

fn judge_command(
    cmd: &Command,
    abstract_syntax: &str,
    storage_classes: &[String],
) -> Option<CommandRefusal> {
    if cmd.affected_sop_class_uid != abstract_syntax
        || !storage_classes.contains(&cmd.affected_sop_class_uid)
    {
        Some(CommandRefusal::SopClass)
    } else if !uid::is_valid(&cmd.affected_sop_instance_uid) {
        Some(CommandRefusal::InstanceUid)
    } else {
        None
    }
}

/// A C-STORE-RQ: its data set is awaited (into the spool, or drained when refused), or
/// without one it is answered at once.
pub(super) fn begin(
    ctx: &ScpCtx,
    conn: &mut Conn,
    pc: u8,
    abstract_syntax: &str,
    ts: &str,
    cmd: Command,
) -> Option<Vec<u8>> {
    if !cmd.has_data_set() {
        return Some(dimse::c_store_rsp(
            cmd.message_id,
            &cmd.affected_sop_class_uid,
            &cmd.affected_sop_instance_uid,
            status::CANNOT_UNDERSTAND,
            Some("C-STORE-RQ without a data set"),
        ));
    }
    let sink = sink(ctx, conn, abstract_syntax, ts, &cmd);
    conn.pending = Some(PendingStore {
        cmd,
        pc,
        sink,
        unrecognized: false,
        started: std::time::Instant::now(),
    });
    None
}

/// A spool temporary file for the data set, or the status to refuse it with.
fn sink(ctx: &ScpCtx, conn: &Conn, abstract_syntax: &str, ts: &str, cmd: &Command) -> Sink {
    match judge_command(cmd, abstract_syntax, &conn.storage_classes) {
        Some(CommandRefusal::SopClass) => {
            warn!(calling_ae = %conn.calling_ae, "C-STORE SOP class differs from its presentation context: refusing (0122)");
            return Sink::Discard {
                status: status::SOP_CLASS_NOT_SUPPORTED,
                comment: "SOP class not supported on this context".into(),
            };
        }
        Some(CommandRefusal::InstanceUid) => {
            warn!(calling_ae = %conn.calling_ae, len = cmd.affected_sop_instance_uid.len(), "C-STORE with a malformed Affected SOP Instance UID: refusing (C001)");
            return Sink::Discard {
                status: status::BAD_UID,
                comment: "malformed Affected SOP Instance UID".into(),
            };
        }
        None => {}
    }
    let floor_mb = conn.floor_mb;
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
}

/// The last fragment of `p`'s data set arrived: answer it, or check it and commit it.
pub(super) fn received(conn: &mut Conn, ts: &str, p: PendingStore) -> Reply {
    let pc = p.pc;
    if p.unrecognized {
        return Reply::Now(
            pc,
            dimse::unrecognized_rsp(
                p.cmd.message_id,
                p.cmd.command_field,
                &p.cmd.affected_sop_class_uid,
            ),
        );
    }
    let (st, comment) = match p.sink {
        Sink::Discard { status, comment } => (status, Some(comment)),
        Sink::File(t) => match check_received(conn, &p.cmd, ts, t) {
            Ok((header, done)) => {
                return Reply::AfterCommit(Box::new(Committing {
                    pc,
                    cmd: p.cmd,
                    header,
                    done,
                    started: p.started,
                }))
            }
            Err(refusal) => refusal,
        },
    };
    Reply::Now(pc, store_rsp(conn, &p.cmd, st, comment))
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

/// The whole data set is in: check its header against the command. Ok: ready to commit;
/// Err: the status to refuse it with (the temporary file is gone).
fn check_received(
    conn: &Conn,
    cmd: &Command,
    ts: &str,
    t: TempInstance,
) -> Result<(InstanceHeader, FinishedInstance), StoreStatus> {
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
pub(super) async fn complete(ctx: &ScpCtx, conn: &mut Conn, c: Committing) -> (u8, Vec<u8>) {
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
) -> StoreStatus {
    let size = done.size;
    let (path, content_hash) = match ctx.spool.commit_async(done, &header.sop_instance_uid).await {
        Ok(c) => (c.path, c.content_hash),
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

#[cfg(test)]
mod tests {
    use super::*;

    const MR: &str = "1.2.840.10008.5.1.4.1.1.4";
    const CT: &str = "1.2.840.10008.5.1.4.1.1.2";

    fn store_rq(class: &str, inst: &str) -> Command {
        Command {
            command_field: dimse::C_STORE_RQ,
            message_id: 1,
            affected_sop_class_uid: class.into(),
            affected_sop_instance_uid: inst.into(),
            ..Command::default()
        }
    }

    #[test]
    fn commands_refused_before_their_data() {
        let classes = vec![MR.to_string()];
        assert_eq!(judge_command(&store_rq(MR, "1.2.3.4"), MR, &classes), None);
        // Another class than the presentation context's.
        assert_eq!(
            judge_command(&store_rq(MR, "1.2.3.4"), CT, &classes),
            Some(CommandRefusal::SopClass)
        );
        // The context's class, but not one the node stores.
        assert_eq!(
            judge_command(&store_rq(CT, "1.2.3.4"), CT, &classes),
            Some(CommandRefusal::SopClass)
        );
        // Over 64 characters, though every component is well-formed.
        let long = format!("{}1", "1.".repeat(40));
        for bad in ["", "1..2", "1.2.x", long.as_str()] {
            assert_eq!(
                judge_command(&store_rq(MR, bad), MR, &classes),
                Some(CommandRefusal::InstanceUid),
                "{bad:?}"
            );
        }
        // A wrong class is reported before a malformed UID.
        assert_eq!(
            judge_command(&store_rq(CT, "1..2"), MR, &classes),
            Some(CommandRefusal::SopClass)
        );
    }
}
