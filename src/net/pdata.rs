//! P-DATA-TF PDUs read in place.
//!
//! dicom-ul's `receive` copies every PDU twice before handing over its PDVs (the whole
//! PDU out of the read buffer, then each value into a fresh `Vec`); for C-STORE data
//! that was the largest CPU cost of ingest after hashing. Here a P-DATA-TF PDU is parsed
//! where it lies in the association's read buffer and its data PDVs are written to the
//! spool file from there. Every other PDU type is left in the buffer for dicom-ul, which
//! keeps the association state machine (release, abort, malformed PDUs).
//!
//! PS3.8 §9.3.5: type 0x04, one reserved byte, a 4-byte big-endian length, then items of
//! a 4-byte length (counting the context id and the control byte), the presentation
//! context id, the message control header (bit 0: command, bit 1: last fragment), data.
//!
//! Depends on tokio and bytes only (not dicom-ul), so the fuzz crate compiles it as is.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

const HEADER: usize = 6;
const P_DATA_TF: u8 = 0x04;

/// One presentation data value, borrowed from the PDU it came in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PdvRef<'a> {
    pub presentation_context_id: u8,
    /// A command fragment (else a data set fragment).
    pub is_command: bool,
    pub is_last: bool,
    pub data: &'a [u8],
}

/// What is next on the wire.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// A complete P-DATA-TF PDU of this many bytes (header included) at the buffer's start.
    PData(usize),
    /// Another PDU type: let dicom-ul read it from the buffer.
    Other,
}

#[derive(Debug, thiserror::Error)]
pub enum PDataError {
    #[error("PDU of type {ty:#04x} and {len} bytes exceeds the negotiated maximum of {max}")]
    TooLarge { ty: u8, len: u32, max: u32 },
    #[error("malformed P-DATA-TF PDU: {0}")]
    Malformed(&'static str),
    #[error("connection closed")]
    Closed,
    #[error("read timed out")]
    TimedOut,
    #[error("read failed: {0}")]
    Io(#[source] std::io::Error),
}

/// Read failures are equal when of the same kind: `std::io::Error` has no equality.
impl PartialEq for PDataError {
    fn eq(&self, other: &Self) -> bool {
        use PDataError::*;
        match (self, other) {
            (
                TooLarge { ty, len, max },
                TooLarge {
                    ty: t,
                    len: l,
                    max: m,
                },
            ) => (ty, len, max) == (t, l, m),
            (Malformed(a), Malformed(b)) => a == b,
            (Closed, Closed) | (TimedOut, TimedOut) => true,
            (Io(a), Io(b)) => a.kind() == b.kind(),
            _ => false,
        }
    }
}

impl Eq for PDataError {}

/// Read until the buffer holds a whole P-DATA-TF PDU, or the header of any other PDU.
/// `max_pdu` is the length we announced (the PDU's variable part; dicom-ul's strict check).
/// It bounds every PDU type: dicom-ul runs non-strict here and would buffer whatever
/// length another PDU announces (release and abort PDUs have 4 bytes).
pub async fn fill<R: AsyncRead + Unpin>(
    sock: &mut R,
    buf: &mut BytesMut,
    max_pdu: u32,
) -> Result<Next, PDataError> {
    loop {
        if buf.len() >= HEADER {
            let len = u32::from_be_bytes([buf[2], buf[3], buf[4], buf[5]]);
            if len > max_pdu {
                return Err(PDataError::TooLarge {
                    ty: buf[0],
                    len,
                    max: max_pdu,
                });
            }
            if buf[0] != P_DATA_TF {
                return Ok(Next::Other);
            }
            let total = HEADER + len as usize;
            if buf.len() >= total {
                return Ok(Next::PData(total));
            }
            // Room for the whole PDU at once: one read per socket buffer's worth, not per
            // default-sized chunk.
            buf.reserve(total - buf.len());
        } else {
            // Not knowing the length yet, room for a usual PDU, not for the largest allowed
            // (up to 16 MiB per association, which idle associations would keep).
            buf.reserve(HEADER + (max_pdu as usize).min(64 * 1024));
        }
        let n = sock.read_buf(buf).await.map_err(PDataError::Io)?;
        if n == 0 {
            return Err(PDataError::Closed);
        }
    }
}

/// The PDVs of the P-DATA-TF PDU that `pdu` holds exactly (header included).
pub fn parse(pdu: &[u8]) -> Result<Vec<PdvRef<'_>>, PDataError> {
    if pdu.len() < HEADER || pdu[0] != P_DATA_TF {
        return Err(PDataError::Malformed("not a P-DATA-TF PDU"));
    }
    let len = u32::from_be_bytes([pdu[2], pdu[3], pdu[4], pdu[5]]) as usize;
    if pdu.len() != HEADER + len {
        return Err(PDataError::Malformed("PDU length differs from its content"));
    }
    let mut rest = &pdu[HEADER..];
    let mut out = Vec::with_capacity(1);
    while !rest.is_empty() {
        if rest.len() < 6 {
            return Err(PDataError::Malformed("truncated PDV item header"));
        }
        let item_len = (&rest[..4]).get_u32() as usize;
        if item_len < 2 {
            return Err(PDataError::Malformed("PDV item shorter than its header"));
        }
        if item_len > rest.len() - 4 {
            return Err(PDataError::Malformed("PDV item runs past the PDU"));
        }
        let control = rest[5];
        out.push(PdvRef {
            presentation_context_id: rest[4],
            is_command: control & 0x01 != 0,
            is_last: control & 0x02 != 0,
            data: &rest[6..4 + item_len],
        });
        rest = &rest[4 + item_len..];
    }
    if out.is_empty() {
        return Err(PDataError::Malformed("P-DATA-TF PDU without a PDV"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_ul::pdu::{write_pdu, PDataValue, PDataValueType, Pdu};

    fn encode(values: Vec<PDataValue>) -> Vec<u8> {
        let mut v = Vec::new();
        write_pdu(&mut v, &Pdu::PData { data: values }).unwrap();
        v
    }

    fn pdv(pc: u8, ty: PDataValueType, last: bool, data: &[u8]) -> PDataValue {
        PDataValue {
            presentation_context_id: pc,
            value_type: ty,
            is_last: last,
            data: data.to_vec(),
        }
    }

    /// Whatever dicom-ul writes, this parses to the same values dicom-ul's reader gives.
    #[test]
    fn parses_what_dicom_ul_writes() {
        let values = vec![
            pdv(1, PDataValueType::Command, true, b"cmd bytes"),
            pdv(3, PDataValueType::Data, false, &[7u8; 1000]),
            pdv(3, PDataValueType::Data, true, b""),
        ];
        let wire = encode(values.clone());
        let got = parse(&wire).unwrap();
        let theirs = match dicom_ul::pdu::read_pdu(&wire[..], 1 << 20, true)
            .unwrap()
            .unwrap()
        {
            Pdu::PData { data } => data,
            other => panic!("{other:?}"),
        };
        assert_eq!(got.len(), theirs.len());
        for (a, b) in got.iter().zip(&theirs) {
            assert_eq!(a.presentation_context_id, b.presentation_context_id);
            assert_eq!(a.is_command, b.value_type == PDataValueType::Command);
            assert_eq!(a.is_last, b.is_last);
            assert_eq!(a.data, &b.data[..]);
        }
        assert_eq!(got[1].data, &[7u8; 1000][..]);
    }

    #[test]
    fn malformed_items_are_refused() {
        let good = encode(vec![pdv(1, PDataValueType::Data, true, b"abcdef")]);
        // Item length beyond the PDU.
        let mut bad = good.clone();
        bad[9] = 0xff;
        assert!(parse(&bad).is_err());
        // Item length below its own header.
        let mut bad = good.clone();
        bad[6..10].copy_from_slice(&1u32.to_be_bytes());
        assert!(parse(&bad).is_err());
        // Trailing garbage shorter than an item header.
        let mut bad = good.clone();
        bad.extend_from_slice(&[0, 0]);
        let len = (bad.len() - HEADER) as u32;
        bad[2..6].copy_from_slice(&len.to_be_bytes());
        assert!(parse(&bad).is_err());
        // No PDV at all.
        assert!(parse(&[4, 0, 0, 0, 0, 0]).is_err());
        assert_eq!(parse(&good).unwrap().len(), 1);
    }

    #[tokio::test]
    async fn fill_waits_for_whole_pdus_and_leaves_others() {
        let a = encode(vec![pdv(1, PDataValueType::Data, true, &[1u8; 300])]);
        let mut wire = a.clone();
        wire.extend_from_slice(&[0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0]); // A-RELEASE-RQ
                                                                    // Delivered a few bytes at a time.
        let mut sock = tokio_test_reader(wire, 7);
        let mut buf = BytesMut::new();
        assert_eq!(
            fill(&mut sock, &mut buf, 16384).await.unwrap(),
            Next::PData(a.len())
        );
        assert_eq!(parse(&buf[..a.len()]).unwrap()[0].data, &[1u8; 300][..]);
        buf.advance(a.len());
        assert_eq!(fill(&mut sock, &mut buf, 16384).await.unwrap(), Next::Other);
        // So are other PDU types, before dicom-ul would buffer them.
        let mut sock = tokio_test_reader(vec![0x05, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0], 3);
        let mut buf = BytesMut::new();
        assert_eq!(
            fill(&mut sock, &mut buf, 16384).await,
            Err(PDataError::TooLarge {
                ty: 0x05,
                len: u32::MAX,
                max: 16384
            })
        );
        // Oversized PDUs are refused before they are read.
        let mut sock = tokio_test_reader(a.clone(), 64);
        let mut buf = BytesMut::new();
        assert!(matches!(
            fill(&mut sock, &mut buf, 100).await,
            Err(PDataError::TooLarge { .. })
        ));
        // A connection closed mid-PDU.
        let mut sock = tokio_test_reader(a[..20].to_vec(), 64);
        let mut buf = BytesMut::new();
        assert_eq!(
            fill(&mut sock, &mut buf, 16384).await,
            Err(PDataError::Closed)
        );
    }

    /// A reader that yields `chunk` bytes per read.
    fn tokio_test_reader(data: Vec<u8>, chunk: usize) -> impl AsyncRead + Unpin {
        struct Chunked(std::io::Cursor<Vec<u8>>, usize);
        impl AsyncRead for Chunked {
            fn poll_read(
                mut self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
                buf: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                let n = self.1.min(buf.remaining());
                let mut tmp = vec![0u8; n];
                let got = std::io::Read::read(&mut self.0, &mut tmp)?;
                buf.put_slice(&tmp[..got]);
                std::task::Poll::Ready(Ok(()))
            }
        }
        Chunked(std::io::Cursor::new(data), chunk)
    }
}
