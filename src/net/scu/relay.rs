//! The destination's connection, made by the sender itself so that the whole-transfer
//! deadline can cut it at any moment, the association negotiation included.
//!
//! dicom-ul 0.10.1's blocking client connects by itself (`establish_with`,
//! `establish_with_tls`) and hands out the socket only once the association is accepted:
//! until then each read is bounded by the read timeout alone, so a destination trickling
//! its A-ASSOCIATE-AC a byte at a time would hold the sender's thread for as long as it
//! likes. Here the sender connects to the destination, and dicom-ul to a loopback listener
//! made for this one association, whose connection is relayed to the destination byte for
//! byte (TLS passes through untouched: dicom-ul's session is with the destination). The
//! deadline guard shuts the destination's socket down, which ends the relay and, through
//! it, whatever dicom-ul is blocked on.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Why the destination could not be reached.
#[derive(Debug, thiserror::Error)]
pub(super) enum ConnectError {
    #[error("cannot resolve {host}:{port}: {cause}")]
    Resolve {
        host: String,
        port: u16,
        cause: io::Error,
    },
    #[error("{host}:{port} resolves to no address")]
    NoAddress { host: String, port: u16 },
    #[error("no connection to {addr} within connect_timeout_s = {timeout_s} s")]
    TimedOut { addr: SocketAddr, timeout_s: f64 },
    #[error("cannot connect to {addr}: {cause}")]
    Connect { addr: SocketAddr, cause: io::Error },
    #[error("cannot open the loopback relay to dicom-ul: {0}")]
    Loopback(io::Error),
}

/// Connect to `host:port`, trying each address it resolves to within `timeout` each.
pub(super) fn connect(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let addrs = (host, port)
        .to_socket_addrs()
        .map_err(|cause| ConnectError::Resolve {
            host: host.to_string(),
            port,
            cause,
        })?;
    let mut last = ConnectError::NoAddress {
        host: host.to_string(),
        port,
    };
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => return Ok(s),
            Err(cause) if cause.kind() == io::ErrorKind::TimedOut => {
                last = ConnectError::TimedOut {
                    addr,
                    timeout_s: timeout.as_secs_f64(),
                }
            }
            Err(cause) => last = ConnectError::Connect { addr, cause },
        }
    }
    Err(last)
}

/// Relay the next connection to a loopback listener to `remote` until either side ends.
/// Returns the listener's address, for dicom-ul to connect to at once. A listener nobody
/// connects to by `until` is closed (dicom-ul failed before connecting).
///
/// `remote` gets `write_timeout` on its writes, so a destination that stops reading cannot
/// keep the relay once dicom-ul has given up; its reads need none: dicom-ul times its own
/// reads out and closes, which ends the relay.
pub(super) fn start(
    remote: &TcpStream,
    until: Instant,
    write_timeout: Duration,
) -> Result<SocketAddr, ConnectError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(ConnectError::Loopback)?;
    let local = listener.local_addr().map_err(ConnectError::Loopback)?;
    listener
        .set_nonblocking(true)
        .map_err(ConnectError::Loopback)?;
    let remote = remote.try_clone().map_err(ConnectError::Loopback)?;
    remote
        .set_write_timeout(Some(write_timeout))
        .map_err(ConnectError::Loopback)?;
    std::thread::Builder::new()
        .name("prima-send-relay".into())
        .spawn(move || {
            if let Some(near) = accept_one(&listener, until) {
                // The only connection wanted: later ones are refused.
                drop(listener);
                relay(near, remote);
            }
        })
        .map_err(ConnectError::Loopback)?;
    Ok(local)
}

/// The first connection to `listener` before `until`, as a blocking socket.
fn accept_one(listener: &TcpListener, until: Instant) -> Option<TcpStream> {
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).ok()?;
                let _ = s.set_nodelay(true);
                return Some(s);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < until => {
                // dicom-ul connects right after `start` returns: a few polls at most.
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(_) => return None,
        }
    }
}

/// Copy both ways between dicom-ul's connection (`near`) and the destination's (`remote`).
/// When one direction ends (closed, failed, or the deadline shut `remote` down), both
/// sockets are shut down, so the other direction and dicom-ul end at once; data already
/// written still goes out before the FIN.
fn relay(near: TcpStream, remote: TcpStream) {
    let (Ok(near_in), Ok(remote_in)) = (near.try_clone(), remote.try_clone()) else {
        return;
    };
    let down = std::thread::Builder::new()
        .name("prima-send-relay".into())
        .spawn(move || pass(remote_in, near));
    pass(near_in, remote);
    if let Ok(down) = down {
        let _ = down.join();
    }
}

/// Copy `from` to `to` until `from` ends or `to` fails, then shut both down.
fn pass(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connected pair: (the destination's end, ours).
    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let ours = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (theirs, _) = l.accept().unwrap();
        (theirs, ours)
    }

    #[test]
    fn relays_both_ways_and_ends_when_the_remote_is_shut_down() {
        let (mut dest, remote) = pair();
        let until = Instant::now() + Duration::from_secs(5);
        let local = start(&remote, until, Duration::from_secs(5)).unwrap();
        let mut client = TcpStream::connect(local).unwrap();
        client.write_all(b"request").unwrap();
        let mut got = [0u8; 7];
        dest.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"request");
        dest.write_all(b"a").unwrap();
        let mut one = [0u8; 1];
        client.read_exact(&mut one).unwrap();
        assert_eq!(&one, b"a");
        // What a deadline guard does: the client blocked on a read wakes up at once.
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let t = Instant::now();
        remote.shutdown(Shutdown::Both).unwrap();
        assert_eq!(client.read(&mut one).unwrap_or(0), 0);
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    }

    #[test]
    fn the_clients_close_reaches_the_destination() {
        let (mut dest, remote) = pair();
        let local = start(
            &remote,
            Instant::now() + Duration::from_secs(5),
            Duration::from_secs(5),
        )
        .unwrap();
        drop(remote);
        drop(TcpStream::connect(local).unwrap());
        dest.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 1];
        assert_eq!(dest.read(&mut b).unwrap(), 0);
    }

    #[test]
    fn connection_errors_say_what_happened() {
        // A port nothing listens on (bound, then closed).
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = connect("127.0.0.1", port, Duration::from_secs(1)).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("cannot connect to 127.0.0.1:{port}: ")),
            "{e}"
        );
    }
}
