//! The hostile-input cases, one file per thing they attack, and what they share: the
//! observation type, the node under test ([`Env`]) and the store helpers. The runner is
//! `integration-tests/hostile_input.rs`.
pub mod association;
pub mod dataset;
pub mod dimse;
pub mod pdu;
pub mod size;
pub mod structure;
pub mod uids;
pub mod wire;

use std::time::Duration;

use crate::common::*;
use wire::{associate, encode, store_cmd, Fields, Peer};

pub const MR: &str = "1.2.840.10008.5.1.4.1.1.4";
pub const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
pub const VERIFY: &str = "1.2.840.10008.1.1";
pub const EXPLICIT: &str = "1.2.840.10008.1.2.1";
pub const IMPLICIT: &str = "1.2.840.10008.1.2";
pub const ROOT: &str = "1.2.826.0.1.3680043.10.999";

/// Context ids every association of this suite proposes.
pub const PC_MR_EXPLICIT: u8 = 1;
pub const PC_MR_IMPLICIT: u8 = 3;
pub const PC_VERIFY: u8 = 5;
pub const PC_CT: u8 = 7;

/// What the node did, as seen on the wire.
#[derive(Debug, Clone, PartialEq)]
pub enum Obs {
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

pub fn uid(case: &str, kind: &str) -> String {
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

pub struct Env {
    pub port: u16,
    pub node: Node,
}

impl Env {
    pub fn spool_bytes(&self, sop: &str) -> Option<Vec<u8>> {
        std::fs::read(self.node.spool_path(sop)).ok()
    }
    pub fn tmp_empty(&self) -> Result<(), Obs> {
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
    pub fn hwm_kb(&self) -> u64 {
        vm_kb(self.node.pid().expect("node running"), "VmHWM:")
    }
}

pub fn vm_kb(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A store of `fields` on `pc` whose command carries the data set's own SOP Instance UID.
pub fn store_fields(env: &Env, pc: u8, class: &str, case: &str, f: &Fields, explicit: bool) -> Obs {
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
pub fn expect_spooled(env: &Env, case: &str, o: Obs, want: bool) -> Obs {
    if o != Obs::Status(0) {
        return o;
    }
    let have = env.spool_bytes(&uid(case, "sop")).is_some();
    if have != want {
        return Obs::Fail(format!("in spool: {have}, expected {want}"));
    }
    o
}

pub fn not_spooled(env: &Env, sop: &str, o: Obs) -> Obs {
    if env.spool_bytes(sop).is_some() {
        return Obs::Fail(format!("refused instance is in the spool ({o:?})"));
    }
    o
}

pub type Run = fn(&Env) -> Obs;

pub struct Case {
    pub name: &'static str,
    /// Expected outcome, as documented for the operator.
    pub expect: Obs,
    pub why: &'static str,
    pub run: Run,
}

pub const RJ_PERMANENT_USER: u8 = 1;
pub const RJ_SOURCE_USER: u8 = 1;

pub fn open(env: &Env) -> Result<Peer, Obs> {
    associate(env.port, SCU_AE, NODE_AE).map(|(p, _)| p)
}
