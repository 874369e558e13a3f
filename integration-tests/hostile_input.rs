//! Hostile and broken input against one running node: the cases of `hostile/` (one file per
//! thing they attack), each talking raw TCP (PDU bytes written by hand) and each with its
//! expected outcome written next to it.
//! After all of them the spool's tmp dir must be empty, the node alive with bounded memory,
//! and a normal study (DCMTK storescu) still stored with Success.

mod common;
mod fixtures;
mod hostile;

use std::io::Read;
use std::time::{Duration, Instant};

use common::*;
use hostile::{Case, Env};

/// Every case, grouped by what it attacks; all run one after another against one node.
fn cases() -> Vec<Case> {
    [
        hostile::association::cases(),
        hostile::dataset::cases(),
        hostile::dimse::cases(),
        hostile::uids::cases(),
        hostile::size::cases(),
        hostile::structure::cases(),
        hostile::pdu::cases(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

#[test]
fn hostile_input_table() {
    if !have_dcmtk() {
        return;
    }
    let Some(fx) = fixtures::reference_dir() else {
        return;
    };
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
    let Some(fx) = fixtures::reference_dir() else {
        return;
    };
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
        prima_node::store::length_guard::check_element_lengths(&p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        n += 1;
    }
    assert!(n > 0, "no DICOM fixtures found");
    println!("{n} fixture files pass the element-length guard");
}
