//! What a stranger can hold of the HTTP server: at most `[http] max_connections` open
//! connections, each with a deadline to send its request (`request_timeout_s`) and to stay
//! idle or stalled between requests (`idle_timeout_s`).
//!
//! axum's `serve` sets neither (hyper's header timeout needs a timer it does not give), and a
//! connection limit that only refused newcomers would let a patient client that holds the
//! limit shut out the monitoring probe. So a newcomer beyond the limit closes the connection
//! that has waited longest without being answered — a half-sent request or an idle keep-alive
//! — and is refused only when every connection began its request or response within
//! [`STILL_SERVED`] (a flood of fresh work, not a stall). The state is kept at the socket: a read after a write starts
//! a request, a write answers it; what hyper does in between is its own business.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::serve::Listener;
use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

/// A request begun or a response written this recently is being served, not stalled: its
/// connection is never closed to make room.
pub const STILL_SERVED: Duration = Duration::from_millis(200);

/// Longest a newcomer waits for connections closed to make room to be dropped.
const WIND_DOWN: Duration = Duration::from_millis(500);

/// Connections closed to make room that may still be winding down, beyond the limit.
fn slack(max: usize) -> usize {
    (max / 8).max(4)
}

/// The limits, from `[http]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub request_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Limits {
    /// File descriptors the HTTP server may hold at most.
    pub fn descriptors(&self) -> usize {
        self.max_connections + slack(self.max_connections)
    }
}

/// One connection as [`room_for`] sees it: milliseconds since the guard started.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConnView {
    /// When its current request began (its first byte, or the accept), if unanswered.
    pub waiting_since: Option<u64>,
    /// When it last read or wrote.
    pub last_active: u64,
}

/// Which connection a newcomer beyond the limit replaces: the one waiting longest for its
/// request to complete, or idle longest between requests — whichever began earlier — unless
/// that began within `still_served` of `now` (a request being served, a response being
/// written). A request trickled byte by byte counts from its start, so it cannot keep its
/// place by trickling. `None`: refuse the newcomer.
pub fn room_for(conns: &[ConnView], now: u64, still_served: u64) -> Option<usize> {
    let since = |c: &ConnView| c.waiting_since.unwrap_or(c.last_active);
    conns
        .iter()
        .enumerate()
        .filter(|(_, c)| now.saturating_sub(since(c)) >= still_served)
        .min_by_key(|(_, c)| since(c))
        .map(|(i, _)| i)
}

/// When a connection's deadline falls (ms since the guard started).
pub fn deadline(c: &ConnView, limits: &Limits) -> u64 {
    match c.waiting_since {
        Some(t) => t + limits.request_timeout.as_millis() as u64,
        None => c.last_active + limits.idle_timeout.as_millis() as u64,
    }
}

const NOT_WAITING: u64 = u64::MAX;

struct Shared {
    waiting_since: AtomicU64,
    last_active: AtomicU64,
    closed: AtomicBool,
    waker: AtomicWaker,
}

impl Shared {
    fn view(&self) -> ConnView {
        let w = self.waiting_since.load(Ordering::Relaxed);
        ConnView {
            waiting_since: (w != NOT_WAITING).then_some(w),
            last_active: self.last_active.load(Ordering::Relaxed),
        }
    }
}

/// The open connections and the limits, shared by the accept loop and every connection.
pub struct Guard {
    limits: Limits,
    start: Instant,
    conns: Mutex<HashMap<u64, Arc<Shared>>>,
    next_id: AtomicU64,
    /// Newcomers refused and connections closed to make room since the last warning.
    refused: AtomicU64,
    replaced: AtomicU64,
    warned_at: AtomicU64,
}

impl Guard {
    pub fn new(limits: Limits) -> Arc<Guard> {
        Arc::new(Guard {
            limits,
            start: Instant::now(),
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            replaced: AtomicU64::new(0),
            warned_at: AtomicU64::new(0),
        })
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Whether connections closed to make room, not yet dropped by their tasks, fill the
    /// slack: a newcomer then waits for them rather than being refused because of them.
    fn winding_down(&self) -> bool {
        let conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.len() >= self.limits.descriptors()
            && conns.values().any(|c| c.closed.load(Ordering::Relaxed))
    }

    /// A newly accepted connection, or `None` when there is no room (the caller drops it).
    pub fn admit<T>(self: &Arc<Self>, io: T) -> Option<Guarded<T>> {
        let now = self.now();
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let open = conns.values().filter(|c| !c.closed.load(Ordering::Relaxed));
        if open.count() >= self.limits.max_connections {
            let candidates: Vec<(&Arc<Shared>, ConnView)> = conns
                .values()
                .filter(|c| !c.closed.load(Ordering::Relaxed))
                .map(|c| (c, c.view()))
                .collect();
            let views: Vec<ConnView> = candidates.iter().map(|(_, v)| *v).collect();
            let room = (conns.len() < self.limits.descriptors())
                .then(|| room_for(&views, now, STILL_SERVED.as_millis() as u64))
                .flatten();
            match room {
                Some(i) => {
                    let victim = candidates[i].0;
                    victim.closed.store(true, Ordering::Relaxed);
                    victim.waker.wake();
                    self.replaced.fetch_add(1, Ordering::Relaxed);
                    crate::metrics::get().http_closed("replaced");
                }
                None => {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    crate::metrics::get().http_closed("refused");
                    drop(conns);
                    self.warn_now_and_then(now);
                    return None;
                }
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(Shared {
            waiting_since: AtomicU64::new(now),
            last_active: AtomicU64::new(now),
            closed: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        });
        conns.insert(id, shared.clone());
        crate::metrics::get()
            .http_connections
            .set(conns.len() as i64);
        drop(conns);
        self.warn_now_and_then(now);
        Some(Guarded {
            io,
            id,
            shared,
            guard: self.clone(),
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
        })
    }

    /// One aggregated line a minute at most while the limit is being hit.
    fn warn_now_and_then(&self, now: u64) {
        let last = self.warned_at.load(Ordering::Relaxed);
        if now.saturating_sub(last) < 60_000 && last != 0 {
            return;
        }
        let (refused, replaced) = (
            self.refused.load(Ordering::Relaxed),
            self.replaced.load(Ordering::Relaxed),
        );
        if refused + replaced == 0
            || self
                .warned_at
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        self.refused.fetch_sub(refused, Ordering::Relaxed);
        self.replaced.fetch_sub(replaced, Ordering::Relaxed);
        warn!(
            limit = self.limits.max_connections,
            refused,
            closed_to_make_room = replaced,
            "HTTP connection limit reached"
        );
    }

    fn forget(&self, id: u64) {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.remove(&id);
        crate::metrics::get()
            .http_connections
            .set(conns.len() as i64);
    }
}

/// A connection under the guard: fails its pending read or write once its deadline passes or
/// it was closed to make room, which makes hyper drop it.
pub struct Guarded<T> {
    io: T,
    id: u64,
    shared: Arc<Shared>,
    guard: Arc<Guard>,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl<T> Guarded<T> {
    pub fn get_ref(&self) -> &T {
        &self.io
    }

    /// `Err` when the connection must end now; otherwise the timer and the waker are armed
    /// so that this task is woken when it must.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        self.shared.waker.register(cx.waker());
        if self.shared.closed.load(Ordering::Relaxed) {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "closed to make room for another connection",
            ));
        }
        loop {
            let due = deadline(&self.shared.view(), &self.guard.limits);
            let at = tokio::time::Instant::from_std(self.guard.start + Duration::from_millis(due));
            if tokio::time::Instant::now() >= at {
                let (reason, what) = match self.shared.view().waiting_since {
                    Some(_) => ("request_timeout", "request not received in time"),
                    None => ("idle_timeout", "connection idle too long"),
                };
                self.shared.closed.store(true, Ordering::Relaxed);
                crate::metrics::get().http_closed(reason);
                return Err(io::Error::new(io::ErrorKind::TimedOut, what));
            }
            if self.timer.deadline() != at {
                self.timer.as_mut().reset(at);
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return Ok(());
            }
        }
    }
}

impl<T> Drop for Guarded<T> {
    fn drop(&mut self) {
        self.guard.forget(self.id);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Err(e) = self.check(cx) {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let now = self.guard.now();
            // The first byte after an answer starts the next request's clock.
            let _ = self.shared.waiting_since.compare_exchange(
                NOT_WAITING,
                now,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            self.shared.last_active.store(now, Ordering::Relaxed);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Err(e) = self.check(cx) {
            return Poll::Ready(Err(e));
        }
        let r = Pin::new(&mut self.io).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.shared
                .waiting_since
                .store(NOT_WAITING, Ordering::Relaxed);
            self.shared
                .last_active
                .store(self.guard.now(), Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Plain HTTP: TCP connections under the guard.
pub struct GuardedListener {
    tcp: TcpListener,
    guard: Arc<Guard>,
}

impl GuardedListener {
    pub fn new(tcp: TcpListener, guard: Arc<Guard>) -> Self {
        GuardedListener { tcp, guard }
    }
}

/// Accepts the next TCP connection the guard admits; an accept error (out of descriptors,
/// say) is logged and retried after a pause rather than spun on.
pub async fn accept_guarded(
    tcp: &TcpListener,
    guard: &Arc<Guard>,
) -> (Guarded<TcpStream>, SocketAddr) {
    loop {
        match tcp.accept().await {
            Ok((sock, peer)) => {
                // A connection closed to make room is dropped when its task next runs, which
                // under load lags the accepts (a burst of strangers): wait for those, briefly,
                // rather than refuse the newcomer — the monitoring probe among them.
                let until = tokio::time::Instant::now() + WIND_DOWN;
                while guard.winding_down() && tokio::time::Instant::now() < until {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                if let Some(io) = guard.admit(sock) {
                    return (io, peer);
                }
                debug!(peer = %peer, "HTTP connection refused: limit reached");
            }
            Err(e) => {
                warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

impl Listener for GuardedListener {
    type Io = Guarded<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        accept_guarded(&self.tcp, &self.guard).await
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(since: u64, active: u64) -> ConnView {
        ConnView {
            waiting_since: Some(since),
            last_active: active,
        }
    }
    fn idle(active: u64) -> ConnView {
        ConnView {
            waiting_since: None,
            last_active: active,
        }
    }

    #[test]
    fn the_longest_unanswered_or_idle_connection_makes_room() {
        // A half-sent request from t=100 (last byte at 900) goes before an idle keep-alive
        // from t=500, and both before a request begun at t=800.
        let conns = [idle(500), waiting(100, 900), waiting(800, 800)];
        assert_eq!(room_for(&conns, 10_000, 200), Some(1));
        // Once the half-sent request is gone, the idle one.
        assert_eq!(room_for(&conns[..1], 10_000, 200), Some(0));
    }

    #[test]
    fn a_request_just_begun_or_a_response_being_written_keeps_its_place() {
        let conns = [waiting(9_900, 9_950), idle(9_900)];
        assert_eq!(room_for(&conns, 10_000, 200), None);
        assert_eq!(room_for(&conns, 10_100, 200), Some(0), "both began at 9900");
        assert_eq!(room_for(&[], 10_000, 200), None);
        // Trickling keeps nothing: the request began at 100.
        assert_eq!(room_for(&[waiting(100, 9_999)], 10_000, 200), Some(0));
    }

    #[test]
    fn deadlines_count_from_the_request_or_from_the_last_activity() {
        let l = Limits {
            max_connections: 4,
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        };
        // A request trickled a byte at a time still ends 10 s after it began.
        assert_eq!(deadline(&waiting(1_000, 9_000), &l), 11_000);
        assert_eq!(deadline(&idle(1_000), &l), 61_000);
        assert_eq!(l.descriptors(), 8);
    }
}
