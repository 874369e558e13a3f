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
//!
//!
//! Each destination is served on its own thread, one association at a time: a destination
//! that is silent or trickles its answers holds up only its own results. Every wait on a
//! destination has a deadline — the connection (`connect_timeout_s`), each answer and each
//! write (`response_timeout_s`), and the whole association (`transfer_timeout_s`, enforced by
//! shutting the socket down, since a trickle defeats per-read timeouts) — and a destination
//! that misses one is backed off like an unreachable one. The deadline covers the
//! association's negotiation too: dicom-ul's blocking client gives no handle on its socket
//! before the association is accepted, so the sender connects itself and dicom-ul reaches
//! the destination through a loopback relay (`relay`), whose socket the deadline cuts. A
//! destination that answers "out of
//! resources" (A7xx: a full PACS) is retried without limit too: results wait for space, they
//! are not given up after `max_attempts`. The loop does not wait for a destination's thread
//! at shutdown: what it was sending stays pending and is sent again after the restart.
//!
//! This module runs the loop, keeps each entry's schedule in the outbox and establishes one
//! association per destination and round; `deliver` sends the entries on it.

mod deliver;
mod relay;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use dicom_dictionary_std::uids::{EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN};
use dicom_ul::pdu::AssociationRJResult;
use dicom_ul::ClientAssociationOptions;
use tracing::{error, info, info_span, warn};

use crate::config::{Config, Destination, SharedConfig};
use crate::net::fence::Fence;
use crate::store::state::{now_ms, OutboxRow, State};
use deliver::deliver;

pub struct SenderCtx {
    pub state: Arc<State>,
    pub config: SharedConfig,
    /// On a cluster ingest node: the objects whose delivery claim this node holds now
    /// ([`crate::net::fence`]); nothing else is sent.
    pub fence: Option<Fence>,
}

impl SenderCtx {
    /// Whether `r` may be sent now: always on a single node; on a cluster ingest node only
    /// while this node's claim on its result is valid.
    fn may_send(&self, r: &OutboxRow) -> bool {
        self.fence
            .as_ref()
            .is_none_or(|f| f.allows(&r.sop_uid, now_ms()))
    }
}

/// The sender loop; returns when `stop` is set (without waiting for a destination's
/// association under way).
pub fn run(ctx: SenderCtx, wake: Receiver<()>, stop: Arc<AtomicBool>) {
    let ctx = Arc::new(ctx);
    let mut configured = destination_keys(&ctx.config.get());
    // Entries held back by the fence, logged once each.
    let mut fenced: BTreeSet<i64> = BTreeSet::new();
    // Destinations whose thread is sending now; their due entries wait for it.
    let busy: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let (finished, finishes) = crossbeam_channel::unbounded::<()>();
    while !stop.load(Ordering::SeqCst) {
        let cfg = ctx.config.get();
        configured = retry_returned_destinations(&ctx, &cfg, configured);
        match ctx.state.due_outbox(now_ms()) {
            Ok(due) => {
                let mut by_dest: BTreeMap<String, Vec<OutboxRow>> = BTreeMap::new();
                let mut now_fenced = BTreeSet::new();
                for r in due {
                    if !ctx.may_send(&r) {
                        if !fenced.contains(&r.id) {
                            info!(study = %r.study_uid, sop = %r.sop_uid, destination = %r.destination, "delivery held back: this node holds no valid claim on the result (the cluster decides who sends it)");
                            crate::metrics::get().cluster_event("fenced");
                        }
                        now_fenced.insert(r.id);
                        continue;
                    }
                    by_dest.entry(r.destination.clone()).or_default().push(r);
                }
                fenced = now_fenced;
                for (key, rows) in by_dest {
                    if lock(&busy).contains(&key) {
                        continue;
                    }
                    match cfg.destinations.iter().find(|d| d.key() == key) {
                        Some(d) => {
                            lock(&busy).insert(key.clone());
                            let job = SendJob {
                                ctx: ctx.clone(),
                                cfg: cfg.clone(),
                                dest: d.clone(),
                                rows,
                                stop: stop.clone(),
                            };
                            let (mine, finished) = (busy.clone(), finished.clone());
                            let k = key.clone();
                            let spawned = std::thread::Builder::new()
                                .name("prima-send".into())
                                .spawn(move || {
                                    job.run();
                                    lock(&mine).remove(&k);
                                    let _ = finished.send(());
                                });
                            if let Err(e) = spawned {
                                // Tried again next round.
                                error!(error = %e, "cannot start a delivery thread");
                                lock(&busy).remove(&key);
                            }
                        }
                        None => park_unconfigured(&ctx, &cfg, &key, rows),
                    }
                }
            }
            Err(e) => error!(error = %e, "cannot read the outbox"),
        }
        crossbeam_channel::select! {
            recv(wake) -> _ => {}
            recv(finishes) -> _ => {}
            default(Duration::from_millis(500)) => {}
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One destination's round, on its own thread.
struct SendJob {
    ctx: Arc<SenderCtx>,
    cfg: Arc<Config>,
    dest: Destination,
    rows: Vec<OutboxRow>,
    stop: Arc<AtomicBool>,
}

impl SendJob {
    fn run(self) {
        send_batch(&self.ctx, &self.cfg, &self.dest, self.rows, &self.stop);
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

fn file_transfer_syntax(path: &std::path::Path) -> Option<String> {
    let f = std::fs::File::open(path).ok()?;
    let mut r = std::io::BufReader::new(f);
    let mut pre = [0u8; 128];
    std::io::Read::read_exact(&mut r, &mut pre).ok()?;
    let meta = dicom_object::FileMetaTable::from_reader(r).ok()?;
    Some(meta.transfer_syntax().trim_end_matches('\0').to_string())
}

/// What to propose for a batch: one presentation context per (SOP class, transfer
/// syntaxes), and each row's file transfer syntax (when its file can be read).
struct Proposal {
    contexts: Vec<(String, Vec<String>)>,
    file_ts: Vec<Option<String>>,
}

fn proposal(rows: &[OutboxRow]) -> Proposal {
    let mut contexts: Vec<(String, Vec<String>)> = Vec::new();
    let mut file_ts: Vec<Option<String>> = Vec::new();
    for r in rows {
        let fts = file_transfer_syntax(&r.path);
        let tss = transfer_syntaxes_for(fts.as_deref());
        if !contexts
            .iter()
            .any(|(c, t)| *c == r.sop_class_uid && *t == tss)
        {
            contexts.push((r.sop_class_uid.clone(), tss));
        }
        file_ts.push(fts);
    }
    Proposal { contexts, file_ts }
}

/// The transfer syntaxes to propose for a file: its own first, and for native (or
/// unreadable) files both uncompressed little-endian syntaxes.
fn transfer_syntaxes_for(file_ts: Option<&str>) -> Vec<String> {
    let mut tss = Vec::new();
    if let Some(t) = file_ts {
        tss.push(t.to_string());
    }
    let native =
        file_ts.is_none_or(|t| t == EXPLICIT_VR_LITTLE_ENDIAN || t == IMPLICIT_VR_LITTLE_ENDIAN);
    if native {
        for t in [EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN] {
            if !tss.iter().any(|x| x == t) {
                tss.push(t.to_string());
            }
        }
    }
    tss
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
    let Proposal { contexts, file_ts } = proposal(&rows);
    let answer = Duration::from_secs_f64(cfg.outbox.response_timeout_s);
    let deadline = Deadline::new(cfg);
    let mut opts = ClientAssociationOptions::new()
        .calling_ae_title(cfg.node.ae_title.clone())
        .called_ae_title(dest.ae_title.clone())
        .max_pdu_length(cfg.node.max_pdu_length)
        .read_timeout(answer)
        .write_timeout(answer);
    for (class, tss) in &contexts {
        opts = opts.with_presentation_context(class.clone(), tss.clone());
    }
    let tls = match &dest.tls_ca {
        None => None,
        Some(ca) => match crate::net::tls::client_config(ca, cfg.tls.as_ref()) {
            Ok(tls) => Some(tls),
            Err(e) => {
                // Nothing was sent: not an attempt. Tried again after the longest backoff
                // (the files or the configuration may be fixed meanwhile).
                error!(error = %e, "destination TLS configuration unusable");
                park(ctx, cfg, &rows, &format!("TLS configuration: {e}"));
                return;
            }
        },
    };
    let started = Instant::now();
    // Our own connection, cut by the deadline guard whatever dicom-ul waits for, the
    // association's acceptance included; dicom-ul reaches it through a loopback relay.
    let connect_timeout = Duration::from_secs_f64(cfg.outbox.connect_timeout_s);
    let remote = relay::connect(&dest.host, dest.port, connect_timeout).and_then(|remote| {
        let _ = remote.set_nodelay(true);
        let local = relay::start(&remote, Instant::now() + connect_timeout, answer)?;
        Ok((remote, local))
    });
    let (remote, local) = match remote {
        Ok(r) => r,
        Err(e) => {
            let reason = format!("cannot associate: {e}");
            for r in &rows {
                failed(ctx, cfg, r, &reason, false);
            }
            return;
        }
    };
    let _guard = deadline.guard(&remote);
    let addr = format!("{}@{}", dest.ae_title, local);
    let established = match tls {
        None => opts.establish_with(&addr).map(|mut a| {
            // A C-STORE is a small command PDU followed by data PDUs; with Nagle on, the
            // data waits for the peer's delayed ACK of the command (tens of ms per object).
            let _ = a.inner_stream().set_nodelay(true);
            deliver(ctx, cfg, &rows, &file_ts, stop, &deadline, a)
        }),
        Some(tls) => opts
            .tls_config(tls)
            .server_name(&dest.host)
            .establish_with_tls(&addr)
            .map(|mut a| {
                let _ = a.inner_stream().sock.set_nodelay(true);
                deliver(ctx, cfg, &rows, &file_ts, stop, &deadline, a)
            }),
    };
    if let Err(e) = established {
        let (reason, bounded) = if deadline.passed() {
            (deadline.too_slow("association request"), false)
        } else {
            // dicom-ul reports a read timeout on the acceptance as whatever it guessed from
            // the bytes it had ("TLS not enabled, but peer seems to be sending TLS data" for
            // none): the time it took says what happened.
            let waited = started.elapsed() >= answer.mul_f64(0.95);
            association_failure(&e, cfg, waited)
        };
        if bounded {
            error!(%reason, "destination refuses the association");
        }
        for r in &rows {
            failed(ctx, cfg, r, &reason, bounded);
        }
    }
}

/// When one association must be over (`[outbox] transfer_timeout_s` from its start, the
/// connection and negotiation included).
pub(super) struct Deadline {
    at: Instant,
    transfer_s: f64,
    response_s: f64,
}

impl Deadline {
    fn new(cfg: &Config) -> Deadline {
        Deadline {
            at: Instant::now() + Duration::from_secs_f64(cfg.outbox.transfer_timeout_s),
            transfer_s: cfg.outbox.transfer_timeout_s,
            response_s: cfg.outbox.response_timeout_s,
        }
    }

    fn passed(&self) -> bool {
        Instant::now() >= self.at
    }

    pub(super) fn too_slow(&self, what: &str) -> String {
        format!(
            "{what}: the destination did not finish within transfer_timeout_s = {} s (too slow)",
            self.transfer_s
        )
    }

    /// Shut `sock` down when the deadline passes before the guard is dropped: a read or
    /// write blocked on a destination that trickles then fails at once.
    fn guard(&self, sock: &std::net::TcpStream) -> Option<crossbeam_channel::Sender<()>> {
        let sock = sock.try_clone().ok()?;
        let (tx, rx) = crossbeam_channel::bounded::<()>(0);
        let at = self.at;
        std::thread::Builder::new()
            .name("prima-send-deadline".into())
            .spawn(move || {
                if let Err(crossbeam_channel::RecvTimeoutError::Timeout) = rx.recv_deadline(at) {
                    let _ = sock.shutdown(std::net::Shutdown::Both);
                }
            })
            .ok()?;
        Some(tx)
    }

    /// What a failed exchange with the destination means, in words an administrator can act
    /// on: the whole-transfer deadline, an answer that did not come in time, or the error.
    pub(super) fn reason(&self, what: &str, e: &(dyn std::error::Error + 'static)) -> String {
        if self.passed() {
            self.too_slow(what)
        } else if timed_out(e) {
            format!(
                "{what}: no answer from the destination within response_timeout_s = {} s",
                self.response_s
            )
        } else {
            format!("{what}: {e}")
        }
    }
}

/// Whether `e` or one of its sources is a socket timeout.
fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(x) = cur {
        if let Some(io) = x.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) {
                return true;
            }
        }
        cur = x.source();
    }
    false
}

/// Why no association was established, and whether the destination answered (so the
/// attempt counts toward `max_attempts`).
fn association_failure(
    e: &dicom_ul::association::Error,
    cfg: &Config,
    waited_out: bool,
) -> (String, bool) {
    if timed_out(e) || waited_out {
        return (
            format!(
                "no answer to the association request within response_timeout_s = {} s",
                cfg.outbox.response_timeout_s
            ),
            false,
        );
    }
    match e {
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_syntaxes_proposed_for_a_file() {
        let (e, i) = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN);
        assert_eq!(transfer_syntaxes_for(None), [e, i]);
        assert_eq!(transfer_syntaxes_for(Some(i)), [i, e]);
        assert_eq!(transfer_syntaxes_for(Some(e)), [e, i]);
        // A compressed file is sent as it is or not at all.
        let jpeg = dicom_dictionary_std::uids::JPEG_LOSSLESS_SV1;
        assert_eq!(transfer_syntaxes_for(Some(jpeg)), [jpeg]);
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
