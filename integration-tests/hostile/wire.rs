//! The raw peer: PDUs, command sets and data sets encoded by hand (so a case can get any
//! byte wrong), and reading what the node answers as an [`Obs`].
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use super::{
    uid, Obs, CT, EXPLICIT, IMPLICIT, MR, PC_CT, PC_MR_EXPLICIT, PC_MR_IMPLICIT, PC_VERIFY, VERIFY,
};

// ---------------------------------------------------------------- PDU encoding

pub fn pdu(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![ty, 0];
    v.extend_from_slice(&(body.len() as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

pub fn item(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![ty, 0];
    v.extend_from_slice(&(body.len() as u16).to_be_bytes());
    v.extend_from_slice(body);
    v
}

pub fn ae16(s: &str) -> [u8; 16] {
    let mut a = [b' '; 16];
    a[..s.len()].copy_from_slice(s.as_bytes());
    a
}

pub fn assoc_rq(calling: &str, called: &str, ctxs: &[(u8, &str, &[&str])]) -> Vec<u8> {
    let mut b = vec![0, 1, 0, 0];
    b.extend_from_slice(&ae16(called));
    b.extend_from_slice(&ae16(calling));
    b.extend_from_slice(&[0; 32]);
    b.extend(item(0x10, b"1.2.840.10008.3.1.1.1"));
    for (id, abs, tss) in ctxs {
        let mut pc = vec![*id, 0, 0, 0];
        pc.extend(item(0x30, abs.as_bytes()));
        for ts in *tss {
            pc.extend(item(0x40, ts.as_bytes()));
        }
        b.extend(item(0x20, &pc));
    }
    let mut ui = item(0x51, &16384u32.to_be_bytes());
    ui.extend(item(0x52, b"1.2.826.0.1.3680043.10.999.1"));
    b.extend(item(0x50, &ui));
    pdu(0x01, &b)
}

pub fn std_ctxs() -> Vec<(u8, &'static str, &'static [&'static str])> {
    vec![
        (PC_MR_EXPLICIT, MR, &[EXPLICIT]),
        (PC_MR_IMPLICIT, MR, &[IMPLICIT]),
        (PC_VERIFY, VERIFY, &[IMPLICIT]),
        (PC_CT, CT, &[EXPLICIT]),
    ]
}

/// One P-DATA-TF holding the given PDVs (context id, is command, is last, bytes).
pub fn pdata(pdvs: &[(u8, bool, bool, &[u8])]) -> Vec<u8> {
    let mut b = Vec::new();
    for (pc, cmd, last, data) in pdvs {
        b.extend_from_slice(&(data.len() as u32 + 2).to_be_bytes());
        b.push(*pc);
        b.push(u8::from(*cmd) | (u8::from(*last) << 1));
        b.extend_from_slice(data);
    }
    pdu(0x04, &b)
}

// ---------------------------------------------------------------- DIMSE / data set encoding

pub fn cmd_el(out: &mut Vec<u8>, e: u16, v: &[u8]) {
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&e.to_le_bytes());
    out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    out.extend_from_slice(v);
}

pub fn even(s: &str, pad: u8) -> Vec<u8> {
    let mut b = s.as_bytes().to_vec();
    if b.len() % 2 == 1 {
        b.push(pad);
    }
    b
}

/// A command set (implicit VR LE, with group length).
pub fn command(field: u16, class: &str, inst: Option<&str>, with_data: bool) -> Vec<u8> {
    let mut b = Vec::new();
    cmd_el(&mut b, 0x0002, &even(class, 0));
    cmd_el(&mut b, 0x0100, &field.to_le_bytes());
    cmd_el(&mut b, 0x0110, &7u16.to_le_bytes());
    if field == 0x0001 {
        cmd_el(&mut b, 0x0700, &0u16.to_le_bytes());
    }
    cmd_el(
        &mut b,
        0x0800,
        &(if with_data { 0x0000u16 } else { 0x0101 }).to_le_bytes(),
    );
    if let Some(i) = inst {
        cmd_el(&mut b, 0x1000, &even(i, 0));
    }
    let mut out = Vec::new();
    cmd_el(&mut out, 0x0000, &(b.len() as u32).to_le_bytes());
    out.extend(b);
    out
}

pub fn store_cmd(class: &str, inst: &str) -> Vec<u8> {
    command(0x0001, class, Some(inst), true)
}

/// Data set elements: (group, element, VR, value); encoded in the order given.
pub type Fields = Vec<(u16, u16, &'static str, Vec<u8>)>;

pub fn mr_fields(case: &str, rows: u16, cols: u16, frames: Option<&str>, pixels: usize) -> Fields {
    let mut f: Fields = vec![
        (0x0008, 0x0016, "UI", even(MR, 0)),
        (0x0008, 0x0018, "UI", even(&uid(case, "sop"), 0)),
        (0x0008, 0x0060, "CS", even("MR", b' ')),
        (0x0008, 0x103E, "LO", even(case, b' ')),
        (0x0020, 0x000D, "UI", even(&uid(case, "study"), 0)),
        (0x0020, 0x000E, "UI", even(&uid(case, "series"), 0)),
        (0x0020, 0x0011, "IS", even("1", b' ')),
        (0x0028, 0x0002, "US", 1u16.to_le_bytes().to_vec()),
    ];
    if let Some(n) = frames {
        f.push((0x0028, 0x0008, "IS", even(n, b' ')));
    }
    f.extend([
        (0x0028, 0x0010, "US", rows.to_le_bytes().to_vec()),
        (0x0028, 0x0011, "US", cols.to_le_bytes().to_vec()),
        (0x0028, 0x0100, "US", 16u16.to_le_bytes().to_vec()),
        (0x0028, 0x0101, "US", 12u16.to_le_bytes().to_vec()),
        (0x0028, 0x0102, "US", 11u16.to_le_bytes().to_vec()),
        (0x0028, 0x0103, "US", 0u16.to_le_bytes().to_vec()),
        (0x7FE0, 0x0010, "OW", vec![0x11; pixels]),
    ]);
    f
}

pub fn mr(case: &str) -> Fields {
    mr_fields(case, 4, 4, None, 32)
}

pub fn set(f: &mut Fields, g: u16, e: u16, v: Vec<u8>) {
    for x in f.iter_mut() {
        if x.0 == g && x.1 == e {
            x.3 = v;
            return;
        }
    }
    panic!("no ({g:04X},{e:04X}) to set");
}

pub fn remove(f: &mut Fields, g: u16, e: u16) {
    f.retain(|x| !(x.0 == g && x.1 == e));
}

pub fn encode(f: &Fields, explicit: bool) -> Vec<u8> {
    let mut b = Vec::new();
    for (g, e, vr, v) in f {
        b.extend_from_slice(&g.to_le_bytes());
        b.extend_from_slice(&e.to_le_bytes());
        if explicit {
            b.extend_from_slice(vr.as_bytes());
            if matches!(*vr, "OB" | "OW" | "OF" | "SQ" | "UT" | "UN") {
                b.extend_from_slice(&[0, 0]);
                b.extend_from_slice(&(v.len() as u32).to_le_bytes());
            } else {
                b.extend_from_slice(&(v.len() as u16).to_le_bytes());
            }
        } else {
            b.extend_from_slice(&(v.len() as u32).to_le_bytes());
        }
        b.extend_from_slice(v);
    }
    b
}

// ---------------------------------------------------------------- reading the node

pub struct Peer {
    pub s: TcpStream,
}

pub fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Read one PDU: Ok((type, body)) or the terminal observation.
pub fn read_pdu(s: &mut TcpStream) -> Result<(u8, Vec<u8>), Obs> {
    let mut h = [0u8; 6];
    match s.read_exact(&mut h) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(Obs::Closed),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Err(Obs::Closed),
        Err(e) => return Err(Obs::Fail(format!("reading PDU header: {e}"))),
    }
    let len = u32::from_be_bytes([h[2], h[3], h[4], h[5]]) as usize;
    if len > 1 << 20 {
        return Err(Obs::Fail(format!("node sent a PDU of {len} bytes")));
    }
    let mut body = vec![0; len];
    s.read_exact(&mut body)
        .map_err(|e| Obs::Fail(format!("reading PDU body: {e}")))?;
    Ok((h[0], body))
}

/// Turn a non-data PDU into its observation.
pub fn terminal(ty: u8, body: &[u8]) -> Obs {
    match ty {
        0x03 if body.len() >= 4 => Obs::Rj(body[1], body[2], body[3]),
        0x06 => Obs::ReleaseRp,
        0x07 => Obs::Abort,
        t => Obs::Fail(format!("unexpected PDU type {t:#04x}")),
    }
}

pub fn parse_ac(body: &[u8]) -> Vec<(u8, u8)> {
    let mut v = Vec::new();
    let mut i = 68;
    while i + 4 <= body.len() {
        let ty = body[i];
        let len = u16::from_be_bytes([body[i + 2], body[i + 3]]) as usize;
        if ty == 0x21 && len >= 4 {
            v.push((body[i + 4], body[i + 6]));
        }
        i += 4 + len;
    }
    v.sort();
    v
}

pub fn associate(port: u16, calling: &str, called: &str) -> Result<(Peer, Vec<(u8, u8)>), Obs> {
    let mut s = connect(port);
    s.write_all(&assoc_rq(calling, called, &std_ctxs()))
        .map_err(|e| Obs::Fail(e.to_string()))?;
    let (ty, body) = read_pdu(&mut s)?;
    if ty != 0x02 {
        return Err(terminal(ty, &body));
    }
    Ok((Peer { s }, parse_ac(&body)))
}

impl Peer {
    pub fn send(&mut self, b: &[u8]) -> Result<(), Obs> {
        self.s
            .write_all(b)
            .map_err(|e| Obs::Fail(format!("write: {e}")))
    }

    /// The next observation: a DIMSE status out of a (possibly fragmented) command, or a
    /// terminal PDU / close.
    pub fn outcome(&mut self) -> Obs {
        let mut cmd = Vec::new();
        loop {
            let (ty, body) = match read_pdu(&mut self.s) {
                Ok(x) => x,
                Err(o) => return o,
            };
            if ty != 0x04 {
                return terminal(ty, &body);
            }
            let mut i = 0;
            while i + 6 <= body.len() {
                let len =
                    u32::from_be_bytes([body[i], body[i + 1], body[i + 2], body[i + 3]]) as usize;
                let hdr = body[i + 5];
                cmd.extend_from_slice(&body[i + 6..i + 4 + len]);
                i += 4 + len;
                if hdr & 0x03 == 0x03 {
                    return status_of(&cmd);
                }
            }
        }
    }

    pub fn release(mut self) {
        let _ = self.send(&pdu(0x05, &[0; 4]));
        let _ = read_pdu(&mut self.s);
    }

    /// A C-STORE with whole PDVs; returns the status, then releases.
    pub fn store(mut self, pc: u8, cmd: &[u8], data: &[u8]) -> Obs {
        if let Err(o) = self.send(&pdata(&[(pc, true, true, cmd)])) {
            return o;
        }
        if let Err(o) = self.send(&pdata(&[(pc, false, true, data)])) {
            return o;
        }
        let o = self.outcome();
        if matches!(o, Obs::Status(_)) {
            self.release();
        }
        o
    }
}

pub fn status_of(cmd: &[u8]) -> Obs {
    let mut i = 0;
    while i + 8 <= cmd.len() {
        let e = u16::from_le_bytes([cmd[i + 2], cmd[i + 3]]);
        let len = u32::from_le_bytes([cmd[i + 4], cmd[i + 5], cmd[i + 6], cmd[i + 7]]) as usize;
        if e == 0x0900 && len == 2 && i + 10 <= cmd.len() {
            return Obs::Status(u16::from_le_bytes([cmd[i + 8], cmd[i + 9]]));
        }
        i += 8 + len;
    }
    Obs::Fail("response without a Status".into())
}
