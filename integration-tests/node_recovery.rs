//! Crash and outage recovery: SIGKILL while receiving, restart, exactly-once delivery;
//! destination down at first and up later.

mod common;

use common::*;
use std::path::PathBuf;
use std::time::Duration;

#[test]
fn sigkill_while_receiving_then_restart_delivers_once() {
    let Some(fx) = fixtures() else { return };
    if !have_dcmtk() {
        return;
    }
    let o = NodeOpts {
        quiet_s: 2.0,
        ..NodeOpts::default()
    };
    let dest = StoreScp::start(o.dest_port);
    let mut node = Node::start(o);
    let series = study_series(&fx, "STUDY_A");
    let all: Vec<PathBuf> = series.iter().flatten().cloned().collect();

    // Kill the node while storescu is in the middle of the study.
    let log = node.dir.path().join("storescu-1.log");
    let mut scu = storescu_spawn(node.opts.port, SCU_AE, &all, &log);
    let spool_has_some = wait_until(Duration::from_secs(30), || node.spool_objects().len() >= 40);
    node.sigkill();
    let _ = scu.wait();
    assert!(spool_has_some, "storescu did not get going");
    let acked = acknowledged_files(&std::fs::read_to_string(&log).unwrap());
    assert!(
        !acked.is_empty() && acked.len() < all.len(),
        "killed mid-study: {} acked",
        acked.len()
    );

    // Every acknowledged instance survived, byte for byte in its data set.
    for f in &acked {
        let p = node.spool_path(&sop_uid_of(f));
        assert!(p.exists(), "acknowledged instance {} lost", f.display());
    }

    node.restart();
    assert!(
        node.spool_tmp().is_empty(),
        "stale temp files removed at start"
    );
    // The PACS retries the whole study, as it would after a failed association.
    send_study(node.opts.port, &series, 3);
    assert!(
        wait_until(Duration::from_secs(60), || !dest.received().is_empty()),
        "no output after restart:\n{}",
        node.status()
    );
    std::thread::sleep(Duration::from_secs(1));

    // Crash again after delivery; the restarted node must not send anything twice.
    node.sigkill();
    node.restart();
    std::thread::sleep(Duration::from_secs(4));
    let got = dest.received();
    assert_eq!(got.len(), 1, "exactly one delivery: {got:?}");
    for f in &all {
        assert!(node.spool_path(&sop_uid_of(f)).exists());
    }
    let status = node.status();
    assert!(
        status
            .lines()
            .any(|l| l.contains(&got[0].0) && l.contains(" done ")),
        "{status}"
    );
}

#[test]
fn destination_down_then_up_gets_the_results() {
    let Some(fx) = fixtures() else { return };
    if !have_dcmtk() {
        return;
    }
    let node = Node::start(NodeOpts::default());
    let series = study_series(&fx, "STUDY_A");
    // Two series are enough to qualify (min_series = 2) and keep the test short.
    send_study(node.opts.port, &series[..2], 2);
    assert!(
        wait_until(Duration::from_secs(30), || node
            .log_text()
            .contains("delivery failed; will retry")),
        "{}",
        node.log_text()
    );
    let status = node.status();
    assert!(status.contains("pending"), "{status}");
    assert!(status.contains("last_error"), "{status}");

    let dest = StoreScp::start(node.opts.dest_port);
    assert!(
        wait_until(Duration::from_secs(30), || !dest.received().is_empty()),
        "not delivered after the destination came up:\n{}",
        node.status()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(dest.received().len(), 1);
}

#[test]
fn permanent_rejection_by_destination_is_bounded() {
    let Some(fx) = fixtures() else { return };
    if !have_dcmtk() {
        return;
    }
    // The destination is the node itself, which does not list its own AE title in
    // [[sources]]: every association is rejected permanently.
    let port = free_port();
    let node = Node::start(NodeOpts {
        port,
        dest_port: port,
        max_attempts: 3,
        ..NodeOpts::default()
    });
    let series = study_series(&fx, "STUDY_A");
    send_study(node.opts.port, &series[..2], 2);
    assert!(
        wait_until(Duration::from_secs(30), || node
            .log_text()
            .contains("DELIVERY FAILED PERMANENTLY")),
        "{}",
        node.log_text()
    );
    let status = node.status();
    let line = status
        .lines()
        .find(|l| l.contains(" -> "))
        .expect("outbox entry");
    assert!(line.contains(" failed "), "{status}");
    assert!(line.contains("attempts=3"), "{status}");
    assert!(
        line.contains("association rejected (permanent)"),
        "{status}"
    );
    // No endless loop: the count stays put.
    std::thread::sleep(Duration::from_secs(3));
    assert!(node.status().contains("attempts=3"));
}

#[test]
fn processing_failure_is_recorded_and_the_node_stays_up() {
    let Some(fx) = fixtures() else { return };
    if !have_dcmtk() {
        return;
    }
    let node = Node::start(NodeOpts {
        env: vec![("PRIMA_NODE_FAKE_FAIL".into(), "1".into())],
        ..NodeOpts::default()
    });
    let series = study_series(&fx, "STUDY_A");
    send_study(node.opts.port, &series[..2], 2);
    assert!(
        wait_until(Duration::from_secs(30), || node.status().lines().any(|l| l
            .contains(" failed ")
            && l.contains("fake failure requested"))),
        "{}",
        node.status()
    );
    assert!(echoscu(node.opts.port, SCU_AE, NODE_AE).status.success());
}
