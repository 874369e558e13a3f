//! Hostile and broken input against one running node: a table of cases, each talking raw
//! TCP (PDU bytes written by hand) and each with its expected outcome written in the table.
//! After all of them the spool's tmp dir must be empty, the node alive with bounded memory,
//! and a normal study (DCMTK storescu) still stored with Success.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use common::*;

const MR: &str = "1.2.840.10008.5.1.4.1.1.4";
const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
const VERIFY: &str = "1.2.840.10008.1.1";
const EXPLICIT: &str = "1.2.840.10008.1.2.1";
const IMPLICIT: &str = "1.2.840.10008.1.2";
const ROOT: &str = "1.2.826.0.1.3680043.10.999";

/// Context ids every association of this suite proposes.
const PC_MR_EXPLICIT: u8 = 1;
const PC_MR_IMPLICIT: u8 = 3;
const PC_VERIFY: u8 = 5;
const PC_CT: u8 = 7;

/// What the node did, as seen on the wire.
#[derive(Debug, Clone, PartialEq)]
enum Obs {
    /// A-ASSOCIATE-RJ (result, source, reason).
    Rj(u8, u8, u8),
    /// A-ASSOCIATE-AC; (context id, result) for every context, sorted.
    Ac(Vec<(u8, u8)>),
    /// A-ABORT from the node.
    Abort,
    /// TCP closed without any PDU.
    Closed,
    /// A DIMSE response with this status.
    Status(u16),
    /// A-RELEASE-RP.
    ReleaseRp,
    /// A check of the case's own failed.
    Fail(String),
}

fn uid(case: &str, kind: &str) -> String {
    // Distinct per case so no study gathers two series (min_series = 2) and gets processed.
    let n: u64 = case.bytes().fold(7u64, |h, b| {
        h.wrapping_mul(131).wrapping_add(b as u64) % 1_000_000_007
    });
    let k = match kind {
        "study" => 1,
        "series" => 2,
        _ => 3,
    };
    format!("{ROOT}.{n}.{k}")
}

// ---------------------------------------------------------------- PDU encoding

fn pdu(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![ty, 0];
    v.extend_from_slice(&(body.len() as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn item(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![ty, 0];
    v.extend_from_slice(&(body.len() as u16).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn ae16(s: &str) -> [u8; 16] {
    let mut a = [b' '; 16];
    a[..s.len()].copy_from_slice(s.as_bytes());
    a
}

fn assoc_rq(calling: &str, called: &str, ctxs: &[(u8, &str, &[&str])]) -> Vec<u8> {
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

fn std_ctxs() -> Vec<(u8, &'static str, &'static [&'static str])> {
    vec![
        (PC_MR_EXPLICIT, MR, &[EXPLICIT]),
        (PC_MR_IMPLICIT, MR, &[IMPLICIT]),
        (PC_VERIFY, VERIFY, &[IMPLICIT]),
        (PC_CT, CT, &[EXPLICIT]),
    ]
}

/// One P-DATA-TF holding the given PDVs (context id, is command, is last, bytes).
fn pdata(pdvs: &[(u8, bool, bool, &[u8])]) -> Vec<u8> {
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

fn cmd_el(out: &mut Vec<u8>, e: u16, v: &[u8]) {
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&e.to_le_bytes());
    out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    out.extend_from_slice(v);
}

fn even(s: &str, pad: u8) -> Vec<u8> {
    let mut b = s.as_bytes().to_vec();
    if b.len() % 2 == 1 {
        b.push(pad);
    }
    b
}

/// A command set (implicit VR LE, with group length).
fn command(field: u16, class: &str, inst: Option<&str>, with_data: bool) -> Vec<u8> {
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

fn store_cmd(class: &str, inst: &str) -> Vec<u8> {
    command(0x0001, class, Some(inst), true)
}

/// Data set elements: (group, element, VR, value); encoded in the order given.
type Fields = Vec<(u16, u16, &'static str, Vec<u8>)>;

fn mr_fields(case: &str, rows: u16, cols: u16, frames: Option<&str>, pixels: usize) -> Fields {
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

fn mr(case: &str) -> Fields {
    mr_fields(case, 4, 4, None, 32)
}

fn set(f: &mut Fields, g: u16, e: u16, v: Vec<u8>) {
    for x in f.iter_mut() {
        if x.0 == g && x.1 == e {
            x.3 = v;
            return;
        }
    }
    panic!("no ({g:04X},{e:04X}) to set");
}

fn remove(f: &mut Fields, g: u16, e: u16) {
    f.retain(|x| !(x.0 == g && x.1 == e));
}

fn encode(f: &Fields, explicit: bool) -> Vec<u8> {
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

// ---------------------------------------------------------------- a raw peer

struct Peer {
    s: TcpStream,
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Read one PDU: Ok((type, body)) or the terminal observation.
fn read_pdu(s: &mut TcpStream) -> Result<(u8, Vec<u8>), Obs> {
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
fn terminal(ty: u8, body: &[u8]) -> Obs {
    match ty {
        0x03 if body.len() >= 4 => Obs::Rj(body[1], body[2], body[3]),
        0x06 => Obs::ReleaseRp,
        0x07 => Obs::Abort,
        t => Obs::Fail(format!("unexpected PDU type {t:#04x}")),
    }
}

fn parse_ac(body: &[u8]) -> Vec<(u8, u8)> {
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

fn associate(port: u16, calling: &str, called: &str) -> Result<(Peer, Vec<(u8, u8)>), Obs> {
    let mut s = connect(port);
    s.write_all(&assoc_rq(calling, called, &std_ctxs()))
        .map_err(|e| Obs::Fail(e.to_string()))?;
    let (ty, body) = read_pdu(&mut s)?;
    if ty != 0x02 {
        return Err(terminal(ty, &body));
    }
    Ok((Peer { s }, parse_ac(&body)))
}

fn open(env: &Env) -> Result<Peer, Obs> {
    associate(env.port, SCU_AE, NODE_AE).map(|(p, _)| p)
}

impl Peer {
    fn send(&mut self, b: &[u8]) -> Result<(), Obs> {
        self.s
            .write_all(b)
            .map_err(|e| Obs::Fail(format!("write: {e}")))
    }

    /// The next observation: a DIMSE status out of a (possibly fragmented) command, or a
    /// terminal PDU / close.
    fn outcome(&mut self) -> Obs {
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

    fn release(mut self) {
        let _ = self.send(&pdu(0x05, &[0; 4]));
        let _ = read_pdu(&mut self.s);
    }

    /// A C-STORE with whole PDVs; returns the status, then releases.
    fn store(mut self, pc: u8, cmd: &[u8], data: &[u8]) -> Obs {
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

fn status_of(cmd: &[u8]) -> Obs {
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

// ---------------------------------------------------------------- the cases

struct Env {
    port: u16,
    node: Node,
}

impl Env {
    fn spool_bytes(&self, sop: &str) -> Option<Vec<u8>> {
        std::fs::read(self.node.spool_path(sop)).ok()
    }
    fn tmp_empty(&self) -> Result<(), Obs> {
        // The node removes a dropped temp file right after the association ends.
        if wait_until(Duration::from_secs(3), || self.node.spool_tmp().is_empty()) {
            Ok(())
        } else {
            Err(Obs::Fail(format!(
                "spool/tmp not empty: {:?}",
                self.node.spool_tmp()
            )))
        }
    }
    fn hwm_kb(&self) -> u64 {
        vm_kb(self.node.pid().expect("node running"), "VmHWM:")
    }
}

fn vm_kb(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A store of `fields` on `pc` whose command carries the data set's own SOP Instance UID.
fn store_fields(env: &Env, pc: u8, class: &str, case: &str, f: &Fields, explicit: bool) -> Obs {
    let p = match open(env) {
        Ok(p) => p,
        Err(o) => return o,
    };
    p.store(
        pc,
        &store_cmd(class, &uid(case, "sop")),
        &encode(f, explicit),
    )
}

/// Status, then "stored in the spool" (or not) as a second check.
fn expect_spooled(env: &Env, case: &str, o: Obs, want: bool) -> Obs {
    if o != Obs::Status(0) {
        return o;
    }
    let have = env.spool_bytes(&uid(case, "sop")).is_some();
    if have != want {
        return Obs::Fail(format!("in spool: {have}, expected {want}"));
    }
    o
}

fn not_spooled(env: &Env, sop: &str, o: Obs) -> Obs {
    if env.spool_bytes(sop).is_some() {
        return Obs::Fail(format!("refused instance is in the spool ({o:?})"));
    }
    o
}

type Run = fn(&Env) -> Obs;

struct Case {
    name: &'static str,
    /// Expected outcome, as documented for the operator.
    expect: Obs,
    why: &'static str,
    run: Run,
}

const RJ_PERMANENT_USER: u8 = 1;
const RJ_SOURCE_USER: u8 = 1;

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "c_echo",
            expect: Obs::Status(0x0000),
            why: "C-ECHO on the Verification context",
            run: |env| {
                let mut p = match open(env) {
                    Ok(p) => p,
                    Err(o) => return o,
                };
                let c = command(0x0030, VERIFY, None, false);
                if let Err(o) = p.send(&pdata(&[(PC_VERIFY, true, true, &c)])) {
                    return o;
                }
                let o = p.outcome();
                p.release();
                o
            },
        },
        Case {
            name: "unknown_called_ae",
            expect: Obs::Rj(RJ_PERMANENT_USER, RJ_SOURCE_USER, 7),
            why: "A-ASSOCIATE-RJ permanent, service user, called AE not recognized",
            run: |env| match associate(env.port, SCU_AE, "NOTPRIMA") {
                Ok(_) => Obs::Fail("accepted".into()),
                Err(o) => o,
            },
        },
        Case {
            name: "unknown_calling_ae",
            expect: Obs::Rj(RJ_PERMANENT_USER, RJ_SOURCE_USER, 3),
            why: "A-ASSOCIATE-RJ permanent, service user, calling AE not recognized",
            run: |env| match associate(env.port, "STRANGER", NODE_AE) {
                Ok(_) => Obs::Fail("accepted".into()),
                Err(o) => o,
            },
        },
        Case {
            name: "ct_context_not_negotiated",
            expect: Obs::Ac(vec![(1, 0), (3, 0), (5, 0), (7, 3)]),
            why: "A-ASSOCIATE-AC; CT context rejected: abstract syntax not supported (3)",
            run: |env| match associate(env.port, SCU_AE, NODE_AE) {
                Ok((p, ctx)) => {
                    p.release();
                    Obs::Ac(ctx)
                }
                Err(o) => o,
            },
        },
        Case {
            name: "normal_explicit",
            expect: Obs::Status(0x0000),
            why: "baseline: well-formed MR instance, Explicit VR LE → stored",
            run: |env| {
                let c = "normal_explicit";
                let o = store_fields(env, PC_MR_EXPLICIT, MR, c, &mr(c), true);
                expect_spooled(env, c, o, true)
            },
        },
        Case {
            name: "normal_implicit",
            expect: Obs::Status(0x0000),
            why: "baseline: well-formed MR instance, Implicit VR LE → stored",
            run: |env| {
                let c = "normal_implicit";
                let o = store_fields(env, PC_MR_IMPLICIT, MR, c, &mr(c), false);
                expect_spooled(env, c, o, true)
            },
        },
        Case {
            name: "one_byte_pdvs_one_pdu",
            expect: Obs::Status(0x0000),
            why: "command and data split into 1-byte PDVs inside one P-DATA-TF → stored",
            run: |env| {
                let c = "one_byte_pdvs_one_pdu";
                let mut p = match open(env) {
                    Ok(p) => p,
                    Err(o) => return o,
                };
                let cmd = store_cmd(MR, &uid(c, "sop"));
                let data = encode(&mr(c), true);
                let mut pdvs = Vec::new();
                for (i, b) in cmd.iter().enumerate() {
                    pdvs.push((PC_MR_EXPLICIT, true, i + 1 == cmd.len(), std::slice::from_ref(b)));
                }
                for (i, b) in data.iter().enumerate() {
                    pdvs.push((PC_MR_EXPLICIT, false, i + 1 == data.len(), std::slice::from_ref(b)));
                }
                if let Err(o) = p.send(&pdata(&pdvs)) {
                    return o;
                }
                let o = p.outcome();
                p.release();
                expect_spooled(env, c, o, true)
            },
        },
        Case {
            name: "one_byte_pdvs_own_pdus",
            expect: Obs::Status(0x0000),
            why: "every 1-byte PDV in its own P-DATA-TF, written byte-by-byte → stored",
            run: |env| {
                let c = "one_byte_pdvs_own_pdus";
                let mut p = match open(env) {
                    Ok(p) => p,
                    Err(o) => return o,
                };
                let cmd = store_cmd(MR, &uid(c, "sop"));
                let data = encode(&mr(c), true);
                let mut wire = Vec::new();
                for (i, b) in cmd.iter().enumerate() {
                    wire.extend(pdata(&[(PC_MR_EXPLICIT, true, i + 1 == cmd.len(), std::slice::from_ref(b))]));
                }
                for (i, b) in data.iter().enumerate() {
                    wire.extend(pdata(&[(PC_MR_EXPLICIT, false, i + 1 == data.len(), std::slice::from_ref(b))]));
                }
                // Odd TCP segmentation too: 3 bytes per write.
                for chunk in wire.chunks(3) {
                    if let Err(o) = p.send(chunk) {
                        return o;
                    }
                }
                let o = p.outcome();
                p.release();
                expect_spooled(env, c, o, true)
            },
        },
        Case {
            name: "command_without_affected_sop_instance",
            expect: Obs::Status(0xC001),
            why: "C-STORE-RQ lacking (0000,1000) → C001 (bad UID), not stored",
            run: |env| {
                let c = "command_without_affected_sop_instance";
                let p = match open(env) {
                    Ok(p) => p,
                    Err(o) => return o,
                };
                let o = p.store(PC_MR_EXPLICIT, &command(0x0001, MR, None, true), &encode(&mr(c), true));
                not_spooled(env, &uid(c, "sop"), o)
            },
        },
        Case {
            name: "garbage_dataset",
            expect: Obs::Status(0xC000),
            why: "data set bytes that do not parse → C000 cannot understand",
            run: |env| {
                let c = "garbage_dataset";
                let p = match open(env) {
                    Ok(p) => p,
                    Err(o) => return o,
                };
                let junk: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
                let o = p.store(PC_MR_EXPLICIT, &store_cmd(MR, &uid(c, "sop")), &junk);
                not_spooled(env, &uid(c, "sop"), o)
            },
        },
        Case {
            name: "zero_length_dataset",
            expect: Obs::Status(0xC001),
            why: "empty data set: no SOP Class/Instance UID → C001 (missing UID), not stored",
            run: |env| {
                let c = "zero_length_dataset";
                let p = match open(env) {
                    Ok(p) => p,
                    Err(o) => return o,
                };
                let o = p.store(PC_MR_EXPLICIT, &store_cmd(MR, &uid(c, "sop")), &[]);
                not_spooled(env, &uid(c, "sop"), o)
            },
        },
        Case {
            name: "missing_sop_instance_uid",
            expect: Obs::Status(0xC001),
            why: "data set without (0008,0018) → C001",
            run: |env| {
                let c = "missing_sop_instance_uid";
                let mut f = mr(c);
                remove(&mut f, 0x0008, 0x0018);
                let o = store_fields(env, PC_MR_EXPLICIT, MR, c, &f, true);
                not_spooled(env, &uid(c, "sop"), o)
            },
        },
        Case {
            name: "missing_series_uid",
            expect: Obs::Status(0xC001),
            why: "data set without (0020,000E) → C001",
            run: |env| {
                let c = "missing_series_uid";
                let mut f = mr(c);
                remove(&mut f, 0x0020, 0x000E);
                let o = store_fields(env, PC_MR_EXPLICIT, MR, c, &f, true);
                not_spooled(env, &uid(c, "sop"), o)
            },
        },
        Case {
            name: "missing_study_uid",
            expect: Obs::Status(0xC001),
            why: "data set without (0020,000D) → C001",
            run: |env| {
                let c = "missing_study_uid";
                let mut f = mr(c);
                remove(&mut f, 0x0020, 0x000D);
                let o = store_fields(env, PC_MR_EXPLICIT, MR, c, &f, true);
                not_spooled(env, &uid(c, "sop"), o)
            },
        },
        Case {
            name: "study_uid_with_slash",
            expect: Obs::Status(0xC001),
            why: "Study UID '1.2/../3' → C001",
            run: |env| {
                let c = "study_uid_with_slash";
                let mut f = mr(c);
                set(&mut f, 0x0020, 0x000D, even("1.2/../3", 0));
                let o = store_fields(env, PC_MR_EXPLICIT, MR, c, &f, true);
                not_spooled(env, &uid(c, "sop"), o)
            },
        },
        Case {
            name: "series_uid_with_dotdot",
            expect: Obs::Status(0xC001),
            why: "Series UID '1.2..3' → C001",
            run: |env| {
                let c = "series_uid_with_dotdot";
                let mut f = mr(c);
                set(&mut f, 0x0020, 0x000E, even("1.2..3", 0));
                let o = store_fields(env, PC_MR_EXPLICIT, MR, c, &f, true);
                not_spooled(env, &uid(c, "sop"), o)
            },
        },
        Case {
            name: "sop_uid_with_nul",
            expect: Obs::Status(0xC001),
            why: "Affected SOP Instance UID with an embedded NUL → C001",
            run: |env| {
                let c = "sop_uid_with_nul";
                let bad = format!("{}\u{0}9", uid(c, "sop"));
                let mut f = mr(c);
                set(&mut f, 0x0008, 0x0018, even(&bad, 0));
                let p = match open(env) {
                    Ok(p) => p,
                    Err(o) => return o,
                };
                let o = p.store(PC_MR_EXPLICIT, &store_cmd(MR, &bad), &encode(&f, true));
                not_spooled(env, &bad, o)
            },
        },
        Case {
            name: "sop_uid_65_chars",
            expect: Obs::Status(0xC001),
            why: "Affected SOP Instance UID of 65 characters → C001",
            run: |env| {
                let bad = format!("1.{}", "2".repeat(63));
                assert_eq!(bad.len(), 65);
                let mut f = mr("sop_uid_65_chars");
                set(&mut f, 0x0008, 0x0018, even(&bad, 0));
                let p = match open(env) {
                    Ok(p) => p,
                    Err(o) => return o,
                };
                let o = p.store(PC_MR_EXPLICIT, &store_cmd(MR, &bad), &encode(&f, true));
                not_spooled(env, &bad, o)
            },
        },
        Case {
            name: "study_uid_70_chars",
            expect: Obs::Status(0xC001),
            why: "Study UID of 70 characters in the data set → C001",
            run: |env| {
                let c = "study_uid_70_chars";
                let mut f = mr(c);
                set(&mut f, 0x0020, 0x000D, even(&format!("1.{}", "3".repeat(68)), 0));
                let o = store_fields(env, PC_MR_EXPLICIT, MR, c, &f, true);
                not_spooled(env, &uid(c, "sop"), o)
            },
        },
        Case {
            name: "study_uid_with_letters",
            expect: Obs::Status(0xC001),
            why: "Study UID '1.2.abc.4' → C001",
            run: |env| {
                let c = "study_uid_with_letters";
                let mut f = mr(c);
                set(&mut f, 0x0020, 0x000D, even("1.2.abc.4", 0));
                let o = store_fields(env, PC_MR_EXPLICIT, MR, c, &f, true);
                not_spooled(env, &uid(c, "sop"), o)
            },
        },
        Case {
            name: "command_uid_path_traversal",
            expect: Obs::Status(0xC001),
            why: "Affected SOP Instance UID '../../etc/passwd' → C001, nothing written",
            run: |env| {
                let bad = "../../etc/passwd";
                let mut f = mr("command_uid_path_traversal");
                set(&mut f, 0x0008, 0x0018, even(bad, 0));
                let p = match open(env) {
                    Ok(p) => p,
                    Err(o) => return o,
                };
                let o = p.store(PC_MR_EXPLICIT, &store_cmd(MR, bad), &encode(&f, true));
                not_spooled(env, bad, o)
            },
        },
        Case {
            name: "dataset_sop_uid_differs",
            expect: Obs::Status(0xC002),
            why: "data set SOP Instance UID ≠ command's → C002 (UID mismatch), neither stored",
            run: |env| {
                let c = "dataset_sop_uid_differs";
                let other = format!("{}.5", uid(c, "sop"));
                let mut f = mr(c);
                set(&mut f, 0x0008, 0x0018, even(&other, 0));
                let o = store_fields(env, PC_MR_EXPLICIT, MR, c, &f, true);
                not_spooled(env, &other, not_spooled(env, &uid(c, "sop"), o))
            },
        },
        Case {
            name: "dataset_sop_class_ct",
            expect: Obs::Status(0xA900),
            why: "CT SOP Class in the data set, MR in the command → A900 data set mismatch",
            run: |env| {
                let c = "dataset_sop_class_ct";
                let mut f = mr(c);
                set(&mut f, 0x0008, 0x0016, even(CT, 0));
                let o = store_fields(env, PC_MR_EXPLICIT, MR, c, &f, true);
                not_spooled(env, &uid(c, "sop"), o)
            },
        },
        Case {
            name: "ct_instance_on_mr_context",
            expect: Obs::Status(0x0122),
            why: "C-STORE of a CT SOP class on the MR context → 0122 SOP class not supported",
            run: |env| {
                let c = "ct_instance_on_mr_context";
                let mut f = mr(c);
                set(&mut f, 0x0008, 0x0016, even(CT, 0));
                set(&mut f, 0x0008, 0x0060, even("CT", b' '));
                let o = store_fields(env, PC_MR_EXPLICIT, CT, c, &f, true);
                not_spooled(env, &uid(c, "sop"), o)
            },
        },
        Case {
            name: "same_sop_uid_new_content",
            expect: Obs::Status(0x0000),
            why: "same SOP Instance UID twice, different content → both 0000, spool holds the second",
            run: |env| {
                let c = "same_sop_uid_new_content";
                let mut first = mr(c);
                set(&mut first, 0x0008, 0x103E, even("FIRST COPY", b' '));
                let o = store_fields(env, PC_MR_EXPLICIT, MR, c, &first, true);
                if o != Obs::Status(0) {
                    return o;
                }
                let mut second = mr(c);
                set(&mut second, 0x0008, 0x103E, even("SECOND COPY", b' '));
                set(&mut second, 0x7FE0, 0x0010, vec![0x22; 32]);
                let o = store_fields(env, PC_MR_EXPLICIT, MR, c, &second, true);
                if o != Obs::Status(0) {
                    return o;
                }
                let Some(b) = env.spool_bytes(&uid(c, "sop")) else {
                    return Obs::Fail("not in spool".into());
                };
                let tail = encode(&second, true);
                if !b.ends_with(&tail) {
                    return Obs::Fail("spool does not hold the second copy's bytes".into());
                }
                o
            },
        },
        Case {
            name: "pixel_data_short",
            expect: Obs::Status(0x0000),
            why: "8 bytes of pixels for 4×4×16 bit → stored (skipped later by imaging)",
            run: |env| {
                let c = "pixel_data_short";
                let f = mr_fields(c, 4, 4, None, 8);
                let o = store_fields(env, PC_MR_EXPLICIT, MR, c, &f, true);
                expect_spooled(env, c, o, true)
            },
        },
        Case {
            name: "pixel_data_long",
            expect: Obs::Status(0x0000),
            why: "4 KiB of pixels for 4×4×16 bit → stored (skipped later by imaging)",
            run: |env| {
                let c = "pixel_data_long";
                let f = mr_fields(c, 4, 4, None, 4096);
                let o = store_fields(env, PC_MR_EXPLICIT, MR, c, &f, true);
                expect_spooled(env, c, o, true)
            },
        },
        Case {
            name: "huge_dimensions_claimed",
            expect: Obs::Status(0x0000),
            why: "65535×65535×4000 frames claimed, 32 bytes sent → stored, no allocation (VmHWM +<64 MiB)",
            run: |env| {
                let c = "huge_dimensions_claimed";
                let before = env.hwm_kb();
                let f = mr_fields(c, 65535, 65535, Some("4000"), 32);
                let o = store_fields(env, PC_MR_EXPLICIT, MR, c, &f, true);
                let grew = env.hwm_kb().saturating_sub(before);
                if grew > 64 * 1024 {
                    return Obs::Fail(format!("VmHWM grew by {grew} kB"));
                }
                expect_spooled(env, c, o, true)
            },
        },
        Case {
            name: "element_length_lies_4gb",
            expect: Obs::Status(0xC000),
            why: "an implicit-VR element claims 0xFFFFFFF0 bytes → C000, no allocation",
            run: |env| {
                let c = "element_length_lies_4gb";
                let before = env.hwm_kb();
                let mut data = encode(&mr(c)[..4].to_vec(), false);
                // (0009,0010) private element claiming ~4 GiB, followed by a little data.
                data.extend_from_slice(&0x0009u16.to_le_bytes());
                data.extend_from_slice(&0x1010u16.to_le_bytes());
                data.extend_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
                data.extend_from_slice(&[0x41; 64]);
                let p = match open(env) {
                    Ok(p) => p,
                    Err(o) => return o,
                };
                let o = p.store(PC_MR_IMPLICIT, &store_cmd(MR, &uid(c, "sop")), &data);
                let grew = env.hwm_kb().saturating_sub(before);
                if grew > 64 * 1024 {
                    return Obs::Fail(format!("VmHWM grew by {grew} kB"));
                }
                not_spooled(env, &uid(c, "sop"), o)
            },
        },
        Case {
            name: "explicit_bytes_on_implicit_context",
            expect: Obs::Status(0xC000),
            why: "Explicit VR encoding sent on the Implicit VR context → C000",
            run: |env| {
                let c = "explicit_bytes_on_implicit_context";
                let o = store_fields(env, PC_MR_IMPLICIT, MR, c, &mr(c), true);
                not_spooled(env, &uid(c, "sop"), o)
            },
        },
        Case {
            name: "implicit_bytes_on_explicit_context",
            expect: Obs::Status(0xC000),
            why: "Implicit VR encoding sent on the Explicit VR context → C000",
            run: |env| {
                let c = "implicit_bytes_on_explicit_context";
                let o = store_fields(env, PC_MR_EXPLICIT, MR, c, &mr(c), false);
                not_spooled(env, &uid(c, "sop"), o)
            },
        },
        Case {
            name: "c_store_without_dataset",
            expect: Obs::Status(0xC000),
            why: "C-STORE-RQ with CommandDataSetType 0101 (no data set) → C000",
            run: |env| {
                let mut p = match open(env) {
                    Ok(p) => p,
                    Err(o) => return o,
                };
                let c = command(0x0001, MR, Some(&uid("c_store_without_dataset", "sop")), false);
                if let Err(o) = p.send(&pdata(&[(PC_MR_EXPLICIT, true, true, &c)])) {
                    return o;
                }
                let o = p.outcome();
                p.release();
                o
            },
        },
        Case {
            name: "unsupported_dimse_c_find",
            expect: Obs::Status(0x0211),
            why: "C-FIND-RQ (no data set) on the MR context → 0211 unrecognized operation",
            run: |env| {
                let mut p = match open(env) {
                    Ok(p) => p,
                    Err(o) => return o,
                };
                let c = command(0x0020, MR, None, false);
                if let Err(o) = p.send(&pdata(&[(PC_MR_EXPLICIT, true, true, &c)])) {
                    return o;
                }
                let o = p.outcome();
                p.release();
                o
            },
        },
        Case {
            name: "pdata_unnegotiated_context",
            expect: Obs::Abort,
            why: "P-DATA on context id 99 (never proposed) → A-ABORT",
            run: |env| {
                let mut p = match open(env) {
                    Ok(p) => p,
                    Err(o) => return o,
                };
                let c = store_cmd(MR, &uid("pdata_unnegotiated_context", "sop"));
                if let Err(o) = p.send(&pdata(&[(99, true, true, &c)])) {
                    return o;
                }
                p.outcome()
            },
        },
        Case {
            name: "pdata_rejected_context",
            expect: Obs::Abort,
            why: "P-DATA on the CT context the node rejected → A-ABORT",
            run: |env| {
                let mut p = match open(env) {
                    Ok(p) => p,
                    Err(o) => return o,
                };
                let c = store_cmd(CT, &uid("pdata_rejected_context", "sop"));
                if let Err(o) = p.send(&pdata(&[(PC_CT, true, true, &c)])) {
                    return o;
                }
                p.outcome()
            },
        },
        Case {
            name: "data_pdv_without_command",
            expect: Obs::Abort,
            why: "data PDV with no command before it → A-ABORT",
            run: |env| {
                let mut p = match open(env) {
                    Ok(p) => p,
                    Err(o) => return o,
                };
                let d = encode(&mr("data_pdv_without_command"), true);
                if let Err(o) = p.send(&pdata(&[(PC_MR_EXPLICIT, false, true, &d)])) {
                    return o;
                }
                p.outcome()
            },
        },
        Case {
            name: "garbage_command_set",
            expect: Obs::Abort,
            why: "command PDV that is not a command set → A-ABORT",
            run: |env| {
                let mut p = match open(env) {
                    Ok(p) => p,
                    Err(o) => return o,
                };
                if let Err(o) = p.send(&pdata(&[(PC_MR_EXPLICIT, true, true, b"\x08\x00\xff\xffhello world!")])) {
                    return o;
                }
                p.outcome()
            },
        },
        Case {
            name: "unknown_pdu_type_in_association",
            expect: Obs::Abort,
            why: "PDU type 0x55 after association → A-ABORT",
            run: |env| {
                let mut p = match open(env) {
                    Ok(p) => p,
                    Err(o) => return o,
                };
                if let Err(o) = p.send(&pdu(0x55, &[1, 2, 3, 4])) {
                    return o;
                }
                p.outcome()
            },
        },
        Case {
            name: "unknown_pdu_type_first",
            expect: Obs::Abort,
            why: "PDU type 0x55 instead of A-ASSOCIATE-RQ → A-ABORT",
            run: |env| {
                let mut s = connect(env.port);
                let _ = s.write_all(&pdu(0x55, &[1, 2, 3, 4]));
                let _ = s.shutdown(Shutdown::Write);
                match read_pdu(&mut s) {
                    Ok((ty, b)) => terminal(ty, &b),
                    Err(o) => o,
                }
            },
        },
        Case {
            name: "truncated_associate_rq",
            expect: Obs::Closed,
            why: "A-ASSOCIATE-RQ cut short, then EOF → connection closed, nothing else",
            run: |env| {
                let mut s = connect(env.port);
                let rq = assoc_rq(SCU_AE, NODE_AE, &std_ctxs());
                let _ = s.write_all(&rq[..40]);
                let _ = s.shutdown(Shutdown::Write);
                match read_pdu(&mut s) {
                    Ok((ty, b)) => terminal(ty, &b),
                    Err(o) => o,
                }
            },
        },
        Case {
            name: "oversize_associate_rq",
            expect: Obs::Closed,
            why: "A-ASSOCIATE-RQ claiming 0xFFFFFFF0 bytes → closed by dicom-ul before association, no allocation",
            run: |env| {
                let before = env.hwm_kb();
                let mut s = connect(env.port);
                let mut rq = assoc_rq(SCU_AE, NODE_AE, &std_ctxs());
                rq[2..6].copy_from_slice(&0xFFFF_FFF0u32.to_be_bytes());
                let _ = s.write_all(&rq);
                let _ = s.shutdown(Shutdown::Write);
                let o = match read_pdu(&mut s) {
                    Ok((ty, b)) => terminal(ty, &b),
                    Err(o) => o,
                };
                let grew = env.hwm_kb().saturating_sub(before);
                if grew > 64 * 1024 {
                    return Obs::Fail(format!("VmHWM grew by {grew} kB"));
                }
                o
            },
        },
        Case {
            name: "oversize_pdata",
            expect: Obs::Abort,
            why: "P-DATA-TF claiming 0xFFFFFFF0 bytes → A-ABORT, no allocation, no tmp file",
            run: |env| {
                let before = env.hwm_kb();
                let mut p = match open(env) {
                    Ok(p) => p,
                    Err(o) => return o,
                };
                let mut b = pdata(&[(PC_MR_EXPLICIT, true, true, &store_cmd(MR, &uid("oversize_pdata", "sop")))]);
                b[2..6].copy_from_slice(&0xFFFF_FFF0u32.to_be_bytes());
                b.extend_from_slice(&[0u8; 1024]);
                if let Err(o) = p.send(&b) {
                    return o;
                }
                let _ = p.s.shutdown(Shutdown::Write);
                let o = p.outcome();
                let grew = env.hwm_kb().saturating_sub(before);
                if grew > 64 * 1024 {
                    return Obs::Fail(format!("VmHWM grew by {grew} kB"));
                }
                o
            },
        },
        Case {
            name: "truncated_pdata_mid_dataset",
            expect: Obs::Abort,
            why: "data P-DATA-TF cut short, then EOF → A-ABORT, no partial file",
            run: |env| {
                let c = "truncated_pdata_mid_dataset";
                let mut p = match open(env) {
                    Ok(p) => p,
                    Err(o) => return o,
                };
                let cmd = store_cmd(MR, &uid(c, "sop"));
                let d = encode(&mr(c), true);
                if let Err(o) = p.send(&pdata(&[(PC_MR_EXPLICIT, true, true, &cmd)])) {
                    return o;
                }
                let (a, b) = d.split_at(d.len() / 2);
                let _ = p.send(&pdata(&[(PC_MR_EXPLICIT, false, false, a)]));
                let full = pdata(&[(PC_MR_EXPLICIT, false, true, b)]);
                let _ = p.send(&full[..full.len() / 2]);
                let _ = p.s.shutdown(Shutdown::Write);
                let o = p.outcome();
                if let Err(f) = env.tmp_empty() {
                    return f;
                }
                not_spooled(env, &uid(c, "sop"), o)
            },
        },
        Case {
            name: "abort_mid_dataset",
            expect: Obs::Closed,
            why: "peer A-ABORT after half the data set → node closes, no partial file",
            run: |env| {
                let c = "abort_mid_dataset";
                let mut p = match open(env) {
                    Ok(p) => p,
                    Err(o) => return o,
                };
                let cmd = store_cmd(MR, &uid(c, "sop"));
                let d = encode(&mr(c), true);
                if let Err(o) = p.send(&pdata(&[(PC_MR_EXPLICIT, true, true, &cmd)])) {
                    return o;
                }
                let _ = p.send(&pdata(&[(PC_MR_EXPLICIT, false, false, &d[..d.len() / 2])]));
                let _ = p.send(&pdu(0x07, &[0, 0, 0, 0]));
                let o = p.outcome();
                if let Err(f) = env.tmp_empty() {
                    return f;
                }
                not_spooled(env, &uid(c, "sop"), o)
            },
        },
        Case {
            name: "release_mid_dataset",
            expect: Obs::ReleaseRp,
            why: "A-RELEASE-RQ after half the data set → A-RELEASE-RP, partial instance dropped",
            run: |env| {
                let c = "release_mid_dataset";
                let mut p = match open(env) {
                    Ok(p) => p,
                    Err(o) => return o,
                };
                let cmd = store_cmd(MR, &uid(c, "sop"));
                let d = encode(&mr(c), true);
                if let Err(o) = p.send(&pdata(&[(PC_MR_EXPLICIT, true, true, &cmd)])) {
                    return o;
                }
                let _ = p.send(&pdata(&[(PC_MR_EXPLICIT, false, false, &d[..d.len() / 2])]));
                let _ = p.send(&pdu(0x05, &[0, 0, 0, 0]));
                let o = p.outcome();
                if let Err(f) = env.tmp_empty() {
                    return f;
                }
                not_spooled(env, &uid(c, "sop"), o)
            },
        },
        Case {
            name: "command_pdv_while_data_expected",
            expect: Obs::Abort,
            why: "a new command PDV before the previous data set ended → A-ABORT, no partial file",
            run: |env| {
                let c = "command_pdv_while_data_expected";
                let mut p = match open(env) {
                    Ok(p) => p,
                    Err(o) => return o,
                };
                let cmd = store_cmd(MR, &uid(c, "sop"));
                let d = encode(&mr(c), true);
                let _ = p.send(&pdata(&[(PC_MR_EXPLICIT, true, true, &cmd)]));
                let _ = p.send(&pdata(&[(PC_MR_EXPLICIT, false, false, &d[..10])]));
                let _ = p.send(&pdata(&[(PC_MR_EXPLICIT, true, true, &cmd)]));
                let o = p.outcome();
                if let Err(f) = env.tmp_empty() {
                    return f;
                }
                not_spooled(env, &uid(c, "sop"), o)
            },
        },
    ]
}

#[test]
fn hostile_input_table() {
    if !have_dcmtk() {
        return;
    }
    let Some(fx) = fixtures() else { return };
    let t0 = Instant::now();
    let node = Node::start(NodeOpts::default());
    let env = Env {
        port: node.opts.port,
        node,
    };
    let hwm0 = env.hwm_kb();
    let cases = cases();
    assert!(cases.len() >= 30, "only {} cases", cases.len());
    let mut failures = Vec::new();
    println!("{:<40} {:<28} {:<28} why", "case", "expected", "observed");
    for c in &cases {
        let got = (c.run)(&env);
        let ok = got == c.expect;
        println!(
            "{:<40} {:<28} {:<28} {}{}",
            c.name,
            format!("{:?}", c.expect),
            format!("{got:?}"),
            c.why,
            if ok { "" } else { "   <-- MISMATCH" }
        );
        if !ok {
            failures.push(format!("{}: expected {:?}, got {got:?}", c.name, c.expect));
        }
    }
    let mut env = env;
    assert!(env.node.is_running(), "node died during the hostile cases");
    assert!(
        wait_until(Duration::from_secs(3), || env.node.spool_tmp().is_empty()),
        "spool/tmp not empty: {:?}",
        env.node.spool_tmp()
    );
    let hwm1 = env.hwm_kb();
    println!("node VmHWM: {hwm0} kB before, {hwm1} kB after");
    assert!(
        hwm1 < hwm0 + 256 * 1024,
        "node peak memory grew by {} kB",
        hwm1 - hwm0
    );

    // The node still serves a normal study.
    let series = study_series(&fx, "STUDY_A");
    let files: Vec<_> = series[0].iter().take(3).cloned().collect();
    let o = storescu(env.port, SCU_AE, &files);
    let out = text(&o);
    assert!(o.status.success(), "storescu failed:\n{out}");
    assert_eq!(acknowledged_files(&out).len(), files.len(), "{out}");
    for f in &files {
        assert!(
            env.node.spool_path(&sop_uid_of(f)).exists(),
            "{f:?} not in spool"
        );
    }
    println!(
        "{} hostile cases, {} failed, {:.1} s",
        cases.len(),
        failures.len(),
        t0.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "hostile cases failed:\n{}",
        failures.join("\n")
    );
}

/// The element-length guard added for `element_length_lies_4gb` must not refuse real data:
/// every fixture file (implicit, explicit, JPEG 2000 encapsulated) passes it.
#[test]
fn length_guard_accepts_every_fixture() {
    let Some(fx) = fixtures() else { return };
    let mut n = 0;
    for p in walk_files(&fx) {
        let mut head = [0u8; 132];
        let is_dicom = std::fs::File::open(&p)
            .and_then(|mut f| f.read_exact(&mut head))
            .is_ok()
            && &head[128..132] == b"DICM";
        if !is_dicom {
            continue;
        }
        prima_node::store::spool::check_element_lengths(&p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        n += 1;
    }
    assert!(n > 0, "no DICOM fixtures found");
    println!("{n} fixture files pass the element-length guard");
}
