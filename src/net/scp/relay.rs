//! A TLS association handed to dicom-ul as plain TCP.
//!
//! dicom-ul 0.10.1 negotiates an association only on a `tokio::net::TcpStream`, plain or
//! after a TLS handshake it does itself, and gives no way to build an association on
//! another stream. The node does the handshake and reads the request itself (so that a
//! connection holds no association slot before both are done), then relays the decrypted
//! bytes to dicom-ul over a connected loopback TCP pair made for this association: the
//! request already read first, then both directions until either side closes.

use std::io;
use std::net::Ipv4Addr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// How long the relay may go on after dicom-ul's side closed, to deliver what the handler
/// sent last (an A-RELEASE-RP, an A-ABORT) to a peer that is slow to read it.
const FLUSH: Duration = Duration::from_secs(2);

/// A relay between a peer's stream and the loopback socket dicom-ul is given.
pub(super) struct Relay {
    /// dicom-ul's end.
    inner: TcpStream,
    running: Running,
}

/// The relay task; aborted when dropped, so it never outlives its association.
pub(super) struct Running(JoinHandle<()>);

impl Relay {
    /// Start relaying `outer` (its first bytes, `first`, already read off it) to a new
    /// loopback socket, returned by [`Relay::into_parts`].
    pub(super) async fn start<S>(outer: S, first: Vec<u8>) -> io::Result<Relay>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut near, inner) = loopback_pair().await?;
        // Without it, each small PDU (a C-STORE response) waits for the delayed ACK on
        // the loopback hop as well.
        near.set_nodelay(true)?;
        inner.set_nodelay(true)?;
        let task = tokio::spawn(async move {
            let mut outer = outer;
            // dicom-ul reads concurrently, so a request larger than the socket buffer
            // does not block here.
            if near.write_all(&first).await.is_err() {
                return;
            }
            // Ends when both directions have ended: dicom-ul's close is passed on to the
            // peer (TLS close_notify) and the peer's close to dicom-ul (EOF); an error on
            // either side ends both.
            let _ = tokio::io::copy_bidirectional(&mut outer, &mut near).await;
        });
        Ok(Relay {
            inner,
            running: Running(task),
        })
    }

    /// dicom-ul's end of the loopback pair, and the relay task.
    pub(super) fn into_parts(self) -> (TcpStream, Running) {
        (self.inner, self.running)
    }
}

impl Running {
    /// Once dicom-ul's end is closed: let the relay pass on the last bytes, briefly.
    pub(super) async fn finish(mut self) {
        let _ = tokio::time::timeout(FLUSH, &mut self.0).await;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A connected pair of loopback TCP sockets. The listener is bound to an ephemeral port
/// for this pair only; a connection from anyone but our own socket (another local process
/// racing for the port) is dropped.
async fn loopback_pair() -> io::Result<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let near = TcpStream::connect(listener.local_addr()?).await?;
    let mine = near.local_addr()?;
    loop {
        let (far, from) = listener.accept().await?;
        if from == mine {
            return Ok((near, far));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn replays_the_first_bytes_then_relays_both_ways_until_closed() {
        let (mut peer, outer) = tokio::io::duplex(64);
        let relay = Relay::start(outer, b"request".to_vec()).await.unwrap();
        let (mut inner, running) = relay.into_parts();
        let mut got = [0u8; 12];
        peer.write_all(b"+more").await.unwrap();
        inner.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"request+more");
        inner.write_all(b"answer").await.unwrap();
        let mut answer = [0u8; 6];
        peer.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"answer");
        // The peer closes: dicom-ul's end reads EOF.
        drop(peer);
        assert_eq!(inner.read(&mut got).await.unwrap(), 0);
        drop(inner);
        tokio::time::timeout(Duration::from_secs(1), running.finish())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn dicom_uls_close_reaches_the_peer() {
        let (mut peer, outer) = tokio::io::duplex(64);
        let (inner, _running) = Relay::start(outer, Vec::new()).await.unwrap().into_parts();
        drop(inner);
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(1), peer.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 0);
    }
}
