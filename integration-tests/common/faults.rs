//! A fault-injecting TCP proxy on loopback for the partition tests: each accepted
//! connection is forwarded to `127.0.0.1:<target>`, and the test can hold it (a silent
//! network: nothing is read, so the bytes wait in the kernel buffers and the peers see no
//! close), hold one direction, delay every chunk, limit the bytes per second it forwards,
//! refuse, or reset connections. Threads and `std::net` only: a proxy costs a listener
//! thread, and five threads per connection.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often a pump looks at the proxy's mode: a change takes effect within this long.
const POLL: Duration = Duration::from_millis(20);

/// The bytes a rate-limited connection forwards at a time.
const RATE_PIECE: usize = 4 * 1024;

/// One direction of a proxied connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the connecting peer to the target.
    ToTarget,
    /// From the target back to the connecting peer.
    FromTarget,
}

#[derive(Default)]
struct Ctl {
    hold_to: AtomicBool,
    hold_from: AtomicBool,
    /// New connections are closed at once (a host that is down answers with RST).
    refuse: AtomicBool,
    latency_us: AtomicU64,
    /// Bytes per second forwarded each way, all connections together; 0: no limit.
    rate: AtomicU64,
    /// Under a rate limit, per direction: when the bytes forwarded so far may all have gone
    /// (the connections take turns on one link).
    paced: [Mutex<Option<Instant>>; 2],
    /// Bumped by `reset`: connections of an older epoch end.
    epoch: AtomicU64,
    stop: AtomicBool,
    next_id: AtomicU64,
    accepted: AtomicU64,
    /// Open connections: both sockets, to close them from outside.
    conns: Mutex<HashMap<u64, Vec<TcpStream>>>,
}

impl Ctl {
    fn held(&self, d: Direction) -> bool {
        match d {
            Direction::ToTarget => self.hold_to.load(Ordering::SeqCst),
            Direction::FromTarget => self.hold_from.load(Ordering::SeqCst),
        }
    }
    fn latency(&self) -> Duration {
        Duration::from_micros(self.latency_us.load(Ordering::SeqCst))
    }
    fn rate(&self) -> u64 {
        self.rate.load(Ordering::SeqCst)
    }
    /// When `len` more bytes in direction `d` may have gone at `rate`: the link is busy
    /// until then.
    fn book(&self, d: Direction, len: usize, rate: u64) -> Instant {
        let mut paced = self.paced[d as usize].lock().unwrap();
        let now = Instant::now();
        // An idle link saves up nothing.
        let start = paced.map_or(now, |p| p.max(now));
        let done = start + Duration::from_secs_f64(len as f64 / rate as f64);
        *paced = Some(done);
        done
    }
    fn over(&self, epoch: u64) -> bool {
        self.stop.load(Ordering::SeqCst) || self.epoch.load(Ordering::SeqCst) != epoch
    }
    fn close_all(&self) {
        let conns = std::mem::take(&mut *self.conns.lock().unwrap());
        for s in conns.values().flatten() {
            abort(s);
        }
    }
}

/// Close a socket with RST rather than FIN (SO_LINGER 0), as a restarted peer would.
fn abort(s: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket descriptor and a correctly sized option value.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    let _ = s.shutdown(Shutdown::Both);
}

pub struct FaultProxy {
    port: u16,
    target: u16,
    ctl: Arc<Ctl>,
}

impl FaultProxy {
    /// A proxy on a free loopback port forwarding to `127.0.0.1:target`, passing.
    pub fn start(target: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let ctl = Arc::new(Ctl::default());
        let c = ctl.clone();
        std::thread::Builder::new()
            .name(format!("proxy-{port}"))
            .spawn(move || accept_loop(listener, target, c))
            .unwrap();
        FaultProxy { port, target, ctl }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn target(&self) -> u16 {
        self.target
    }

    /// Normal forwarding: holds, refusal, latency and rate limit lifted (held bytes flow
    /// on).
    pub fn pass(&self) {
        self.pass_at(0);
    }

    /// Forwarding as [`FaultProxy::pass`] but at most `bytes_per_s` each way, all
    /// connections together (0: no limit), a narrow link: the limit is in place before held
    /// bytes flow on.
    pub fn pass_at(&self, bytes_per_s: u64) {
        self.ctl.rate.store(bytes_per_s, Ordering::SeqCst);
        self.ctl.refuse.store(false, Ordering::SeqCst);
        self.ctl.latency_us.store(0, Ordering::SeqCst);
        self.ctl.hold_to.store(false, Ordering::SeqCst);
        self.ctl.hold_from.store(false, Ordering::SeqCst);
    }

    /// A partition: nothing forwarded either way, connections kept open, new ones accepted
    /// and left waiting. `pass` heals it.
    pub fn hold(&self) {
        self.ctl.hold_to.store(true, Ordering::SeqCst);
        self.ctl.hold_from.store(true, Ordering::SeqCst);
    }

    /// One-way loss: `d` held, the other direction passing.
    pub fn hold_one_way(&self, d: Direction) {
        self.ctl
            .hold_to
            .store(d == Direction::ToTarget, Ordering::SeqCst);
        self.ctl
            .hold_from
            .store(d == Direction::FromTarget, Ordering::SeqCst);
    }

    /// Every chunk forwarded this much later (each direction in order).
    pub fn latency(&self, d: Duration) {
        self.ctl
            .latency_us
            .store(d.as_micros() as u64, Ordering::SeqCst);
    }

    /// Close every current connection now (RST); new ones are forwarded as before.
    pub fn reset(&self) {
        self.ctl.epoch.fetch_add(1, Ordering::SeqCst);
        self.ctl.close_all();
    }

    /// A host that is down: current connections reset, new ones closed at once. `pass`
    /// ends it.
    pub fn refuse(&self) {
        self.ctl.refuse.store(true, Ordering::SeqCst);
        self.reset();
    }

    /// Connections open now.
    pub fn active(&self) -> usize {
        self.ctl.conns.lock().unwrap().len()
    }

    /// Connections accepted since the start.
    pub fn accepted(&self) -> u64 {
        self.ctl.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.ctl.stop.store(true, Ordering::SeqCst);
        self.ctl.close_all();
    }
}

fn accept_loop(listener: TcpListener, target: u16, ctl: Arc<Ctl>) {
    while !ctl.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                ctl.accepted.fetch_add(1, Ordering::SeqCst);
                if ctl.refuse.load(Ordering::SeqCst) {
                    abort(&client);
                    continue;
                }
                let c = ctl.clone();
                std::thread::spawn(move || connection(client, target, c));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(POLL),
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

fn connection(client: TcpStream, target: u16, ctl: Arc<Ctl>) {
    let epoch = ctl.epoch.load(Ordering::SeqCst);
    let id = ctl.next_id.fetch_add(1, Ordering::SeqCst);
    let _ = client.set_nonblocking(false);
    let _ = client.set_nodelay(true);
    ctl.conns
        .lock()
        .unwrap()
        .insert(id, vec![client.try_clone().unwrap()]);
    // A silent network does not carry the SYN either: connect when the way there is open.
    while ctl.held(Direction::ToTarget) && !ctl.over(epoch) {
        std::thread::sleep(POLL);
    }
    let upstream = if ctl.over(epoch) {
        None
    } else {
        TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], target)),
            Duration::from_secs(2),
        )
        .ok()
    };
    let Some(upstream) = upstream else {
        ctl.conns.lock().unwrap().remove(&id);
        abort(&client);
        return;
    };
    let _ = upstream.set_nodelay(true);
    if let Some(v) = ctl.conns.lock().unwrap().get_mut(&id) {
        v.push(upstream.try_clone().unwrap());
    } else {
        // Reset meanwhile.
        abort(&client);
        abort(&upstream);
        return;
    }
    let a = pump(
        client.try_clone().unwrap(),
        upstream.try_clone().unwrap(),
        Direction::ToTarget,
        ctl.clone(),
        epoch,
    );
    let b = pump(
        upstream.try_clone().unwrap(),
        client.try_clone().unwrap(),
        Direction::FromTarget,
        ctl.clone(),
        epoch,
    );
    for h in a.into_iter().chain(b) {
        let _ = h.join();
    }
    ctl.conns.lock().unwrap().remove(&id);
    if ctl.over(epoch) {
        abort(&client);
        abort(&upstream);
    }
}

enum Chunk {
    Data(Instant, Vec<u8>),
    Eof,
}

/// One direction: a reader (which stops reading while held, so the bytes stay in the
/// kernel) and a writer that forwards each chunk when it is due and not held.
fn pump(
    mut src: TcpStream,
    mut dst: TcpStream,
    d: Direction,
    ctl: Arc<Ctl>,
    epoch: u64,
) -> Vec<std::thread::JoinHandle<()>> {
    let (tx, rx) = mpsc::channel::<Chunk>();
    let _ = src.set_read_timeout(Some(POLL));
    let rc = ctl.clone();
    let (src_w, dst_r) = (src.try_clone().unwrap(), dst.try_clone().unwrap());
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut last_due = Instant::now();
        loop {
            if rc.over(epoch) {
                return;
            }
            if rc.held(d) {
                std::thread::sleep(POLL);
                continue;
            }
            match src.read(&mut buf) {
                Ok(0) => {
                    let _ = tx.send(Chunk::Eof);
                    return;
                }
                Ok(n) => {
                    let due = (Instant::now() + rc.latency()).max(last_due);
                    last_due = due;
                    if tx.send(Chunk::Data(due, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => {
                    // The connection is gone: close the other side too.
                    let _ = dst_r.shutdown(Shutdown::Both);
                    return;
                }
            }
        }
    });
    let wc = ctl;
    let writer = std::thread::spawn(move || loop {
        let chunk = match rx.recv_timeout(POLL) {
            Ok(c) => c,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if wc.over(epoch) {
                    return;
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        match chunk {
            Chunk::Eof => {
                let _ = dst.shutdown(Shutdown::Write);
                return;
            }
            Chunk::Data(due, bytes) => {
                while (Instant::now() < due || wc.held(d)) && !wc.over(epoch) {
                    let wait = if wc.held(d) {
                        POLL
                    } else {
                        POLL.min(due.saturating_duration_since(Instant::now()))
                    };
                    std::thread::sleep(wait.max(Duration::from_millis(1)));
                }
                if wc.over(epoch) {
                    return;
                }
                // Small pieces under a rate limit, so what follows a large chunk is not
                // held back by more than a piece's time.
                for piece in bytes.chunks(if wc.rate() > 0 {
                    RATE_PIECE
                } else {
                    bytes.len().max(1)
                }) {
                    let rate = wc.rate();
                    if rate > 0 {
                        let due = wc.book(d, piece.len(), rate);
                        while Instant::now() < due && !wc.over(epoch) {
                            std::thread::sleep(
                                POLL.min(due.saturating_duration_since(Instant::now())),
                            );
                        }
                    }
                    if wc.over(epoch) {
                        return;
                    }
                    if dst.write_all(piece).is_err() {
                        let _ = src_w.shutdown(Shutdown::Both);
                        let _ = dst.shutdown(Shutdown::Both);
                        return;
                    }
                }
            }
        }
    });
    vec![reader, writer]
}
