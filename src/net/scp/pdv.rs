//! What each presentation data value means: command fragments are reassembled and the
//! command answered (C-ECHO), begun (C-STORE, see [`super::store`]) or refused (anything
//! else); data fragments go to the pending C-STORE. A PDV that breaks the protocol is a
//! [`Violation`], which ends the association.
//!
//! Runs on the association's task without `block_in_place`: the file work here is
//! page-cache writes of at most one PDV and, at the end of a data set, reading back its
//! header, each tens of microseconds. Handing the runtime thread over for each of them (as
//! this did before) cost more than the work itself. The one long wait, for the fsyncs, is
//! awaited in [`super::store::complete`] without holding a thread.

use tracing::{debug, warn};

use super::store::{self, Conn, PendingStore, Reply, Sink};
use super::ScpCtx;
use crate::net::dimse::{self, status, Command, CommandError};
use crate::net::pdata::{self, PDataError};

/// Largest command set accepted (real ones are ~200 bytes).
const MAX_COMMAND_BYTES: usize = 64 * 1024;

/// What a PDV asks for: nothing yet, a reply, or aborting the association.
pub(super) type Step = Result<Option<Reply>, Violation>;

/// A PDV (or PDU) that breaks the protocol: the association is aborted.
#[derive(Debug, thiserror::Error)]
pub(super) enum Violation {
    #[error(transparent)]
    Malformed(#[from] PDataError),
    #[error("P-DATA on presentation context {0}, which was not accepted")]
    ContextNotAccepted(u8),
    #[error("command PDV while a data set was still expected")]
    CommandDuringDataSet,
    #[error("command fragments on different presentation contexts")]
    CommandContextChanged,
    #[error("command set larger than 64 KiB")]
    CommandTooLarge,
    #[error("bad command set: {0}")]
    BadCommand(#[source] CommandError),
    #[error("C-ECHO-RQ announcing a data set")]
    EchoWithDataSet,
    #[error("data PDV without a preceding command")]
    DataWithoutCommand,
    #[error("data PDV on another presentation context than its command")]
    DataContextChanged,
}

/// Handle a PDU's PDVs in order, up to the first protocol violation.
pub(super) fn handle_pdvs<'a>(
    ctx: &ScpCtx,
    conn: &mut Conn,
    pdvs: impl IntoIterator<Item = pdata::PdvRef<'a>>,
) -> Vec<Step> {
    let mut steps = Vec::with_capacity(1);
    for pdv in pdvs {
        let r = on_pdv(ctx, conn, pdv);
        let stop = r.is_err();
        steps.push(r);
        if stop {
            break;
        }
    }
    steps
}

/// Handle one PDV; returns what to answer, or the violation to abort for.
fn on_pdv(ctx: &ScpCtx, conn: &mut Conn, pdv: pdata::PdvRef<'_>) -> Step {
    let pc = pdv.presentation_context_id;
    let Some((abstract_syntax, ts)) = conn.pcs.get(&pc).cloned() else {
        return Err(Violation::ContextNotAccepted(pc));
    };
    if pdv.is_command {
        on_command_pdv(ctx, conn, &abstract_syntax, &ts, pdv)
    } else {
        on_data_pdv(conn, &ts, pdv)
    }
}

/// A command fragment: once the command set is whole, the command is handled.
fn on_command_pdv(
    ctx: &ScpCtx,
    conn: &mut Conn,
    abstract_syntax: &str,
    ts: &str,
    pdv: pdata::PdvRef<'_>,
) -> Step {
    let pc = pdv.presentation_context_id;
    if conn.pending.is_some() {
        return Err(Violation::CommandDuringDataSet);
    }
    if conn.cmd_pc.is_some_and(|p| p != pc) {
        return Err(Violation::CommandContextChanged);
    }
    conn.cmd_pc = Some(pc);
    if conn.cmd_buf.len() + pdv.data.len() > MAX_COMMAND_BYTES {
        return Err(Violation::CommandTooLarge);
    }
    conn.cmd_buf.extend_from_slice(pdv.data);
    if !pdv.is_last {
        return Ok(None);
    }
    let bytes = std::mem::take(&mut conn.cmd_buf);
    conn.cmd_pc = None;
    let cmd = dimse::decode_command(&bytes).map_err(Violation::BadCommand)?;
    Ok(on_command(ctx, conn, pc, abstract_syntax, ts, cmd)?.map(|rsp| Reply::Now(pc, rsp)))
}

/// A data set fragment of the pending command: spooled, or drained when refused. The last
/// one completes the command.
fn on_data_pdv(conn: &mut Conn, ts: &str, pdv: pdata::PdvRef<'_>) -> Step {
    let pc = pdv.presentation_context_id;
    let Some(p) = conn.pending.as_mut() else {
        return Err(Violation::DataWithoutCommand);
    };
    if p.pc != pc {
        return Err(Violation::DataContextChanged);
    }
    p.write(pdv.data, &conn.calling_ae);
    if !pdv.is_last {
        return Ok(None);
    }
    let p = conn.pending.take().expect("checked above");
    Ok(Some(store::received(conn, ts, p)))
}

/// A whole command: its response now, or `None` while its data set is awaited (or for
/// C-CANCEL, which has nothing to cancel here).
fn on_command(
    ctx: &ScpCtx,
    conn: &mut Conn,
    pc: u8,
    abstract_syntax: &str,
    ts: &str,
    cmd: Command,
) -> Result<Option<Vec<u8>>, Violation> {
    match cmd.command_field {
        dimse::C_ECHO_RQ => {
            debug!("C-ECHO");
            if cmd.has_data_set() {
                return Err(Violation::EchoWithDataSet);
            }
            Ok(Some(dimse::c_echo_rsp(cmd.message_id, dimse::VERIFICATION)))
        }
        dimse::C_STORE_RQ => Ok(store::begin(ctx, conn, pc, abstract_syntax, ts, cmd)),
        dimse::C_CANCEL_RQ => Ok(None),
        _ => Ok(unsupported(conn, pc, cmd)),
    }
}

/// An operation the node does not provide: answered "unrecognized operation", after its
/// data set (if any) was drained.
fn unsupported(conn: &mut Conn, pc: u8, cmd: Command) -> Option<Vec<u8>> {
    let field = cmd.command_field;
    warn!(
        command = format!("{field:#06x}"),
        "unsupported DIMSE operation"
    );
    if !cmd.has_data_set() {
        return Some(dimse::unrecognized_rsp(
            cmd.message_id,
            field,
            &cmd.affected_sop_class_uid,
        ));
    }
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
    None
}
