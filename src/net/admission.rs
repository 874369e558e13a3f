//! What a connection may cost before it is authenticated.
//!
//! A peer is unknown until its A-ASSOCIATE-RQ has been read and its AE titles checked, so
//! everything before that is bounded here: the address is checked at accept (an address no
//! `[[sources]]` entry allows is closed before a byte is read), the first PDU's 6-byte
//! header is peeked on the socket and anything but an A-ASSOCIATE-RQ of at most
//! [`MAX_ASSOCIATE_RQ`] bytes is refused before dicom-ul buffers it (dicom-ul in non-strict
//! mode would read a PDU of any announced length, up to 4 GiB, into memory), and the whole
//! negotiation runs under [`negotiation_deadline`]. The AE-title check itself
//! ([`SourceAcl`]) needs the request, so it answers with A-ASSOCIATE-RJ as before. Until
//! its whole request has arrived ([`whole_request`] on plain TCP, [`read_request`] after a
//! TLS handshake) a connection holds only a place in [`Pending`] (per address and in all),
//! not an association slot.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use dicom_ul::association::server::AccessControl;
use dicom_ul::pdu::{
    AbortRQServiceProviderReason, AbortRQSource, AssociationRJ, AssociationRJResult,
    AssociationRJServiceProviderPresentationReason, AssociationRJServiceUserReason,
    AssociationRJSource, UserIdentity,
};
use dicom_ul::Pdu;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::warn;

use crate::config::{canonical_ip, ResolvedSource};

/// Largest A-ASSOCIATE-RQ read (its variable part). Real ones are a few KiB even with a
/// hundred presentation contexts; the negotiated `max_pdu_length` applies to P-DATA only.
pub const MAX_ASSOCIATE_RQ: u32 = 64 * 1024;

/// Longest an unauthenticated connection may take to complete its association request
/// (TLS handshake included): real requestors need milliseconds, a trickling one is cut off.
pub fn negotiation_deadline(read_timeout: Duration) -> Duration {
    read_timeout.min(Duration::from_secs(10))
}

/// Whether any `[[sources]]` entry admits this address (an entry without `host` admits all).
pub fn address_allowed(sources: &[ResolvedSource], peer: IpAddr) -> bool {
    let peer = canonical_ip(peer);
    sources.iter().any(|s| {
        s.addrs
            .as_ref()
            .is_none_or(|a| a.iter().any(|ip| canonical_ip(*ip) == peer))
    })
}

/// Why the first PDU was refused before reading it.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A-ASSOCIATE-RQ announcing more than [`MAX_ASSOCIATE_RQ`] bytes.
    TooLarge(u32),
    /// Another PDU type first.
    NotAssociateRq(u8),
    /// Closed or silent before a whole PDU header arrived.
    NoHeader,
    /// Closed before the whole request its header announced arrived.
    Truncated,
}

/// The verdict on the first PDU's header (type, length), before its body is read.
pub fn judge_first_header(hdr: [u8; 6]) -> Result<(), Refusal> {
    let len = u32::from_be_bytes([hdr[2], hdr[3], hdr[4], hdr[5]]);
    match hdr[0] {
        0x01 if len > MAX_ASSOCIATE_RQ => Err(Refusal::TooLarge(len)),
        0x01 => Ok(()),
        t => Err(Refusal::NotAssociateRq(t)),
    }
}

/// Peek the first PDU's header on a plain TCP socket (nothing is consumed, dicom-ul reads
/// it next) and refuse what [`judge_first_header`] refuses: an oversized request gets
/// A-ASSOCIATE-RJ (permanent, service provider, local limit exceeded), another PDU type
/// A-ABORT (PS3.8 state Sta2: anything but A-ASSOCIATE-RQ is answered AA-1). Callers bound
/// it by the negotiation deadline.
pub async fn precheck(sock: &mut TcpStream) -> Result<(), Refusal> {
    let mut hdr = [0u8; 6];
    loop {
        match sock.peek(&mut hdr).await {
            Ok(0) | Err(_) => return Err(Refusal::NoHeader),
            Ok(6) => break,
            // Part of a header: peek returns at once while any byte is queued, so wait a
            // little rather than spin; a peer that never completes it meets the deadline.
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    refuse_unless_request(sock, hdr).await
}

/// Read the whole A-ASSOCIATE-RQ (header included) from a stream that cannot be peeked (a
/// TLS session), refusing on the way what [`precheck`] refuses, with the same answers.
/// Callers bound it by the negotiation deadline.
pub async fn read_request<S>(stream: &mut S) -> Result<Vec<u8>, Refusal>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut hdr = [0u8; 6];
    if stream.read_exact(&mut hdr).await.is_err() {
        return Err(Refusal::NoHeader);
    }
    refuse_unless_request(stream, hdr).await?;
    let len = u32::from_be_bytes([hdr[2], hdr[3], hdr[4], hdr[5]]) as usize;
    let mut request = vec![0u8; 6 + len];
    request[..6].copy_from_slice(&hdr);
    stream
        .read_exact(&mut request[6..])
        .await
        .map_err(|_| Refusal::Truncated)?;
    Ok(request)
}

/// The verdict of [`judge_first_header`] on `hdr`; a refusal is answered on `stream`, which
/// is then shut down.
async fn refuse_unless_request<S>(stream: &mut S, hdr: [u8; 6]) -> Result<(), Refusal>
where
    S: AsyncWrite + Unpin,
{
    let verdict = judge_first_header(hdr);
    let answer = match &verdict {
        Ok(()) => return Ok(()),
        Err(Refusal::TooLarge(len)) => {
            warn!(
                len,
                max = MAX_ASSOCIATE_RQ,
                "A-ASSOCIATE-RQ larger than allowed: rejecting (permanent, local limit exceeded)"
            );
            Pdu::AssociationRJ(AssociationRJ {
                result: AssociationRJResult::Permanent,
                source: AssociationRJSource::ServiceProviderPresentation(
                    AssociationRJServiceProviderPresentationReason::LocalLimitExceeded,
                ),
            })
        }
        Err(Refusal::NotAssociateRq(t)) => {
            warn!(
                pdu_type = format!("{t:#04x}"),
                "first PDU is not an A-ASSOCIATE-RQ (a TLS client on a plain listener sends 0x16): aborting"
            );
            Pdu::AbortRQ {
                source: AbortRQSource::ServiceProvider(AbortRQServiceProviderReason::UnexpectedPdu),
            }
        }
        Err(Refusal::NoHeader | Refusal::Truncated) => unreachable!("not a header verdict"),
    };
    send_and_close(stream, &answer).await;
    verdict
}

async fn send_and_close<S>(stream: &mut S, pdu: &Pdu)
where
    S: AsyncWrite + Unpin,
{
    let mut buf = Vec::new();
    if dicom_ul::write_pdu(&mut buf, pdu).is_ok() {
        let _ = stream.write_all(&buf).await;
    }
    let _ = stream.shutdown().await;
}

/// The answer to a whole request when no association slot is free: A-ASSOCIATE-RJ
/// transient "local limit exceeded", so the requestor retries later.
fn busy() -> Pdu {
    Pdu::AssociationRJ(AssociationRJ {
        result: AssociationRJResult::Transient,
        source: AssociationRJSource::ServiceProviderPresentation(
            AssociationRJServiceProviderPresentationReason::LocalLimitExceeded,
        ),
    })
}

/// [`reject_busy`] for a stream whose request was read whole already ([`read_request`]).
pub async fn answer_busy<S>(mut stream: S, deadline: Duration)
where
    S: AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(deadline, send_and_close(&mut stream, &busy())).await;
}

/// No association slot free: read the request (bounded like any other) and answer it
/// transient "local limit exceeded", so the requestor retries later.
pub async fn reject_busy(mut sock: TcpStream, deadline: Duration) {
    let task = async {
        precheck(&mut sock).await.ok()?;
        let mut hdr = [0u8; 6];
        sock.read_exact(&mut hdr).await.ok()?;
        let len = u32::from_be_bytes([hdr[2], hdr[3], hdr[4], hdr[5]]) as u64;
        let mut sink = tokio::io::sink();
        tokio::io::copy(&mut (&mut sock).take(len), &mut sink)
            .await
            .ok()?;
        send_and_close(&mut sock, &busy()).await;
        Some(())
    };
    let _ = tokio::time::timeout(deadline, task).await;
}

/// Wait until the whole A-ASSOCIATE-RQ whose header [`precheck`] accepted is in the socket's
/// receive queue (peeked, not read): only then does the connection take an association
/// slot, so connections that never send a request hold no slot. False when the peer
/// closes first. The caller's deadline bounds the wait.
pub async fn whole_request(sock: &mut TcpStream) -> bool {
    let mut hdr = [0u8; 6];
    if !matches!(sock.peek(&mut hdr).await, Ok(6)) {
        return false;
    }
    let len = u32::from_be_bytes([hdr[2], hdr[3], hdr[4], hdr[5]]).min(MAX_ASSOCIATE_RQ) as usize;
    let mut buf = vec![0u8; 6 + len];
    loop {
        match sock.peek(&mut buf).await {
            Ok(n) if n == buf.len() => return true,
            Ok(0) | Err(_) => return false,
            // Part of it: peek returns at once while any byte is queued.
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Connections accepted and not yet associated: at most `per_address` from one address and
/// `total` in all, each for at most the negotiation deadline. What an allowed address may
/// hold open without sending a request, so idle connections cannot take the association
/// slots a PACS needs, nor every descriptor.
pub struct Pending {
    per_address: usize,
    total: usize,
    held: std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>,
}

/// One pending connection's place in [`Pending`], given back when dropped.
pub struct PendingPermit {
    pending: Arc<Pending>,
    ip: IpAddr,
}

impl Pending {
    pub fn new(per_address: usize, total: usize) -> Arc<Pending> {
        Arc::new(Pending {
            per_address,
            total,
            held: Default::default(),
        })
    }

    /// The node's budget for `max_associations` slots: room for a burst of real requestors
    /// from one address, and [`Pending::most`] in all (the descriptors it may hold).
    pub fn for_slots(max_associations: usize) -> Arc<Pending> {
        Pending::new(
            (max_associations * 2).max(8),
            Pending::most(max_associations),
        )
    }

    /// Pending connections at most for `max_associations` slots.
    pub fn most(max_associations: usize) -> usize {
        (max_associations * 8).max(32)
    }

    /// A place for a connection from `ip`, if its address and the node have one left.
    pub fn take(self: &Arc<Self>, ip: IpAddr) -> Option<PendingPermit> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let all: usize = held.values().sum();
        let mine = held.get(&ip).copied().unwrap_or(0);
        if all >= self.total || mine >= self.per_address {
            return None;
        }
        held.insert(ip, mine + 1);
        Some(PendingPermit {
            pending: self.clone(),
            ip,
        })
    }
}

impl Drop for PendingPermit {
    fn drop(&mut self) {
        let mut held = self.pending.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = held.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.ip);
            }
        }
    }
}

/// Called AE must be ours; calling AE must be a `[[sources]]` entry whose host (if any)
/// matches the peer address.
pub struct SourceAcl {
    pub sources: Arc<Vec<ResolvedSource>>,
    pub peer: IpAddr,
    /// Where a rejection is recorded for the audit trail.
    pub state: Arc<crate::store::state::State>,
}

impl SourceAcl {
    fn rejected(&self, calling: &str, reason: &str, detail: &str) {
        crate::metrics::get().association("rejected", reason);
        let peer = self.peer.to_string();
        self.state
            .audit("association_rejected", Some(calling), Some(&peer), detail);
    }
}

impl AccessControl for SourceAcl {
    fn check_access(
        &self,
        this_ae_title: &str,
        calling_ae_title: &str,
        called_ae_title: &str,
        _user_identity: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        let calling = calling_ae_title.trim();
        let called = called_ae_title.trim();
        if called != this_ae_title.trim() {
            warn!(
                calling,
                called, "association rejected: called AE title not recognized"
            );
            self.rejected(
                calling,
                "called_ae",
                &format!("called AE title {called:?} not recognized"),
            );
            return Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized);
        }
        let known: Vec<ResolvedSource> = self
            .sources
            .iter()
            .filter(|s| s.ae_title.trim() == calling)
            .cloned()
            .collect();
        if known.is_empty() {
            warn!(
                calling,
                "association rejected: calling AE title not in [[sources]]"
            );
            self.rejected(calling, "calling_ae", "calling AE title not in [[sources]]");
            return Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized);
        }
        if !address_allowed(&known, self.peer) {
            warn!(
                calling,
                "association rejected: calling AE title known but not from this address"
            );
            self.rejected(
                calling,
                "address",
                "calling AE title known but not from this address",
            );
            return Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_connections_are_bounded_per_address_and_in_all() {
        let p = Pending::new(2, 3);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let a1 = p.take(a).unwrap();
        let _a2 = p.take(a).unwrap();
        assert!(p.take(a).is_none(), "per address");
        let _b1 = p.take(b).unwrap();
        assert!(p.take(b).is_none(), "in all");
        drop(a1);
        assert!(p.take(b).is_some(), "given back when dropped");
    }

    #[test]
    fn first_header_verdicts() {
        let h = |t: u8, len: u32| {
            let l = len.to_be_bytes();
            [t, 0, l[0], l[1], l[2], l[3]]
        };
        assert_eq!(judge_first_header(h(0x01, 300)), Ok(()));
        assert_eq!(judge_first_header(h(0x01, MAX_ASSOCIATE_RQ)), Ok(()));
        assert_eq!(
            judge_first_header(h(0x01, MAX_ASSOCIATE_RQ + 1)),
            Err(Refusal::TooLarge(MAX_ASSOCIATE_RQ + 1))
        );
        assert_eq!(
            judge_first_header(h(0x01, u32::MAX)),
            Err(Refusal::TooLarge(u32::MAX))
        );
        assert_eq!(
            judge_first_header(h(0x04, 10)),
            Err(Refusal::NotAssociateRq(0x04))
        );
    }

    #[test]
    fn addresses_admitted_by_sources() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let other: IpAddr = "192.0.2.7".parse().unwrap();
        let src = |addrs: Option<Vec<IpAddr>>| ResolvedSource {
            ae_title: "A".into(),
            addrs,
        };
        assert!(!address_allowed(&[], lo));
        assert!(!address_allowed(&[src(Some(vec![other]))], lo));
        assert!(address_allowed(&[src(Some(vec![other])), src(None)], lo));
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert!(address_allowed(&[src(Some(vec![lo]))], mapped));
    }
}
