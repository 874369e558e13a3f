//! Crash and outage recovery: SIGKILL while receiving, restart, exactly-once delivery;
//! destination down at first and up later.

mod common;
mod fixtures;

use common::*;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[test]
fn sigkill_while_receiving_then_restart_delivers_once() {
    let Some(fx) = fixtures::reference_dir() else {
        return;
    };
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

/// The `retry_in_ms` of every "will retry" log line, in order.
fn retry_delays_ms(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains("delivery failed; will retry"))
        .filter_map(|l| l.split("retry_in_ms=").nth(1))
        .filter_map(|v| v.split_whitespace().next()?.parse().ok())
        .collect()
}

#[test]
fn destination_down_then_up_gets_the_results() {
    let Some(fx) = fixtures::reference_dir() else {
        return;
    };
    if !have_dcmtk() {
        return;
    }
    let node = Node::start(NodeOpts {
        retry_initial_s: 0.3,
        retry_max_s: 1.2,
        // An unreachable destination is retried without limit, whatever this says.
        max_attempts: 2,
        ..NodeOpts::default()
    });
    let series = study_series(&fx, "STUDY_A");
    // Two series are enough to qualify (min_series = 2) and keep the test short.
    send_study(node.opts.port, &series[..2], 2);
    // Down long enough for the backoff to grow to its cap and for more attempts than
    // max_attempts.
    assert!(
        wait_until(Duration::from_secs(40), || retry_delays_ms(
            &node.log_text()
        )
        .len()
            >= 4),
        "{}",
        node.log_text()
    );
    let delays = retry_delays_ms(&node.log_text());
    // Exponential backoff, capped: 300, 600, 1200, 1200 ms (give or take the clock).
    assert!(delays[1] > delays[0] && delays[2] > delays[1], "{delays:?}");
    assert!(delays.iter().all(|d| *d <= 1200), "{delays:?}");
    let status = node.status();
    let line = status
        .lines()
        .find(|l| l.contains(" -> "))
        .expect("outbox entry");
    assert!(line.contains(" pending "), "{status}");
    assert!(line.contains("next attempt in"), "{status}");
    assert!(line.contains("last_error: cannot associate"), "{status}");
    let attempts: u32 = line
        .split("attempts=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    assert!(attempts >= 4, "{status}");

    let dest = StoreScp::start(node.opts.dest_port);
    assert!(
        wait_until(Duration::from_secs(30), || !dest.received().is_empty()),
        "not delivered after the destination came up:\n{}",
        node.status()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(dest.received().len(), 1);
    assert!(node
        .status()
        .lines()
        .any(|l| l.contains(" -> ") && l.contains(" done ")));
}

/// Issue 29: a full PACS (A700, Refused: Out of Resources) must not lose results: its
/// deliveries are retried past `max_attempts`, stay pending, and arrive once it has room.
#[test]
fn destination_answering_a700_is_retried_until_it_has_room() {
    let Some(fx) = fixtures::reference_dir() else {
        return;
    };
    if !have_dcmtk() {
        return;
    }
    // Another node stands in for a destination whose disk is full: it accepts the
    // association and answers every C-STORE with A700 (Refused: Out of Resources).
    let mut full = Node::start(NodeOpts {
        ae_title: DEST_AE.into(),
        min_free_mb: 1 << 40,
        extra_sop_classes: vec!["1.2.840.10008.5.1.4.1.1.88.11".into()],
        sources: vec![(NODE_AE.into(), Some("127.0.0.1".into()))],
        ..NodeOpts::default()
    });
    let node = Node::start(NodeOpts {
        dest_port: full.opts.port,
        max_attempts: 3,
        retry_initial_s: 0.2,
        retry_max_s: 0.5,
        ..NodeOpts::default()
    });
    let series = study_series(&fx, "STUDY_A");
    send_study(node.opts.port, &series[..2], 2);
    assert!(
        wait_until(Duration::from_secs(60), || full
            .log_text()
            .matches("refusing (A700)")
            .count()
            >= 6),
        "not retried past max_attempts = 3:\n{}",
        node.log_text()
    );
    let status = node.status();
    let line = status
        .lines()
        .find(|l| l.contains(" -> "))
        .expect("outbox entry")
        .to_string();
    assert!(line.contains(" pending "), "{status}");
    assert!(line.contains("lack of resources"), "{status}");
    assert!(!node.log_text().contains("DELIVERY FAILED PERMANENTLY"));
    // The PACS gets room: what waited is delivered, once.
    full.sigterm();
    full.opts.min_free_mb = 1;
    full.rewrite_config(&config_text(&full.opts, &full.state_dir));
    full.restart();
    assert!(
        wait_until(Duration::from_secs(30), || {
            let st = node.status();
            st.lines().filter(|l| l.contains(" -> ")).count() > 0
                && st
                    .lines()
                    .filter(|l| l.contains(" -> "))
                    .all(|l| l.contains(" done "))
        }),
        "not delivered once the destination had room:\n{}",
        node.status()
    );
    assert_eq!(full.spool_objects().len(), 1, "{}", full.log_text());
}

#[test]
fn permanent_rejection_by_destination_is_bounded() {
    let Some(fx) = fixtures::reference_dir() else {
        return;
    };
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
    let (status, line) = failed_after_three_attempts(&node);
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
    let Some(fx) = fixtures::reference_dir() else {
        return;
    };
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

/// Waits for the node to give up on its output; the status text and the outbox line,
/// after checking that the entry is `failed` after exactly 3 attempts.
fn failed_after_three_attempts(node: &Node) -> (String, String) {
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
        .expect("outbox entry")
        .to_string();
    assert!(line.contains(" failed "), "{status}");
    assert!(line.contains("attempts=3"), "{status}");
    (status, line)
}

/// A fresh synthetic study (`seed`) sent to the node gets its results at `dest`.
fn next_study_is_answered(node: &Node, dest: &StoreScp, seed: &str) {
    let other = tempfile::tempdir().unwrap();
    assert!(Command::new(bin())
        .args(["synth-study", "--seed", seed, "--out"])
        .arg(other.path())
        .status()
        .unwrap()
        .success());
    let files = walk_files(other.path());
    send_study(node.opts.port, std::slice::from_ref(&files), 1);
    let uid = study_uid_of(&files[0]);
    assert!(
        wait_until(Duration::from_secs(60), || dest
            .received_objects()
            .iter()
            .any(|(_, _, o)| o
                .element(dicom_dictionary_std::tags::STUDY_INSTANCE_UID)
                .ok()
                .and_then(|e| e.to_str().ok())
                .is_some_and(|s| s.trim_end_matches('\0') == uid))),
        "{}\n{}",
        node.status(),
        node.log_text()
    );
}

/// Sends `signal` to the node's worker process once it is running a job.
fn signal_worker(node: &Node, ready_before: usize, signal: &str) {
    assert!(
        wait_until(Duration::from_secs(30), || node
            .log_text()
            .matches("worker process ready")
            .count()
            > ready_before),
        "{}",
        node.log_text()
    );
    // The job reaches the worker right after it is ready (or right after dispatch).
    std::thread::sleep(Duration::from_millis(500));
    let kids = children_of(node.pid().unwrap());
    assert_eq!(kids.len(), 1, "one worker process: {kids:?}");
    let _ = Command::new("kill")
        .args([signal, &kids[0].to_string()])
        .status();
}

/// Kills the node's worker process, as the OOM killer would, once it is running a job.
fn kill_worker(node: &Node, ready_before: usize) {
    signal_worker(node, ready_before, "-9");
}

/// Stops the node's worker process (SIGSTOP), as a wedged driver or a livelocked library
/// would leave it, once it is running a job.
fn stop_worker(node: &Node, ready_before: usize) {
    signal_worker(node, ready_before, "-STOP");
}

#[test]
fn a_study_that_keeps_killing_the_worker_fails_and_the_next_study_gets_its_results() {
    let Some(fx) = fixtures::reference_dir() else {
        return;
    };
    if !have_dcmtk() {
        return;
    }
    let o = NodeOpts {
        // A window in which the job is inside the worker process.
        env: vec![("PRIMA_NODE_FAKE_DELAY_MS".into(), "3000".into())],
        ..NodeOpts::default()
    };
    let dest = StoreScp::start(o.dest_port);
    let node = Node::start(o);
    let a = study_series(&fx, "STUDY_A");
    send_study(node.opts.port, &a[..2], 2);
    assert!(wait_until(Duration::from_secs(30), || node
        .log_text()
        .contains("processing study")));
    // Every try of the study dies in the worker (the default allows 2).
    kill_worker(&node, 0);
    kill_worker(&node, 1);
    assert!(
        wait_until(Duration::from_secs(30), || node
            .status()
            .lines()
            .any(|l| l.contains(" failed ") && l.contains("crashed 2 time(s)"))),
        "{}\n{}",
        node.status(),
        node.log_text()
    );
    assert!(echoscu(node.opts.port, SCU_AE, NODE_AE).status.success());
    assert!(
        dest.received().is_empty(),
        "nothing sent for the failed study"
    );
    // The node goes on: a fresh worker takes the next study, whose results arrive.
    next_study_is_answered(&node, &dest, "7");
    assert_eq!(node.log_text().matches("worker process ready").count(), 3);
}

#[test]
fn a_stopped_worker_is_killed_the_study_tried_again_then_failed_and_the_next_study_answered() {
    let Some(fx) = fixtures::reference_dir() else {
        return;
    };
    if !have_dcmtk() {
        return;
    }
    let o = NodeOpts {
        env: vec![("PRIMA_NODE_FAKE_DELAY_MS".into(), "2000".into())],
        model_toml: "heartbeat_timeout_s = 3".into(),
        ..NodeOpts::default()
    };
    let dest = StoreScp::start(o.dest_port);
    let node = Node::start(o);
    let a = study_series(&fx, "STUDY_A");
    send_study(node.opts.port, &a[..2], 2);
    assert!(wait_until(Duration::from_secs(30), || node
        .log_text()
        .contains("processing study")));
    // Both tries stall (the default allows 2): each worker is killed after 3 s of silence.
    let t0 = std::time::Instant::now();
    stop_worker(&node, 0);
    stop_worker(&node, 1);
    assert!(
        wait_until(Duration::from_secs(30), || node.status().lines().any(|l| l
            .contains(" failed ")
            && l.contains("no sign of life for 3 s"))),
        "{}\n{}",
        node.status(),
        node.log_text()
    );
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "two stalls detected in {:?}",
        t0.elapsed()
    );
    assert!(
        dest.received().is_empty(),
        "nothing sent for the failed study"
    );
    // A fresh worker answers the next study.
    next_study_is_answered(&node, &dest, "8");
    assert_eq!(node.log_text().matches("worker process ready").count(), 3);
    assert_eq!(
        node.log_text()
            .matches("worker process stalled on this study")
            .count(),
        2
    );
}

#[test]
fn a_worker_stopped_while_idle_does_not_hold_a_job_larger_than_its_socket_buffer() {
    if !have_dcmtk() {
        return;
    }
    let o = NodeOpts {
        model_toml: "heartbeat_timeout_s = 3".into(),
        ..NodeOpts::default()
    };
    let dest = StoreScp::start(o.dest_port);
    let node = Node::start(o);
    stop_worker(&node, 0);
    // 1,500 instances: the job message (~0.5 MB) outgrows the socket's buffer, so writing
    // it to the stopped process cannot complete.
    let study = tempfile::tempdir().unwrap();
    assert!(Command::new(bin())
        .args([
            "synth-study",
            "--seed",
            "9",
            "--instances",
            "1500",
            "--series",
            "2"
        ])
        .args(["--rows", "16", "--cols", "16", "--out"])
        .arg(study.path())
        .status()
        .unwrap()
        .success());
    let files = walk_files(study.path());
    send_study(node.opts.port, std::slice::from_ref(&files), 4);
    assert!(
        wait_until(Duration::from_secs(90), || !dest.received().is_empty()),
        "{}\n{}",
        node.status(),
        node.log_text()
    );
    assert!(node.log_text().contains("no sign of life for 3 s"));
    assert_eq!(node.log_text().matches("worker process ready").count(), 2);
}

#[test]
fn a_job_past_its_deadline_is_killed_and_failed_with_the_reason() {
    let Some(fx) = fixtures::reference_dir() else {
        return;
    };
    if !have_dcmtk() {
        return;
    }
    // The worker stays alive (its heartbeat goes on) but never finishes: a livelock.
    let o = NodeOpts {
        env: vec![("PRIMA_NODE_FAKE_DELAY_MS".into(), "60000".into())],
        model_toml: "job_timeout_s = 10\nmax_crashes = 1".into(),
        ..NodeOpts::default()
    };
    let _dest = StoreScp::start(o.dest_port);
    let node = Node::start(o);
    let a = study_series(&fx, "STUDY_A");
    send_study(node.opts.port, &a[..2], 2);
    assert!(
        wait_until(Duration::from_secs(40), || node.status().lines().any(|l| l
            .contains(" failed ")
            && l.contains(
                "did not finish the job within its deadline of 10 s"
            ))),
        "{}\n{}",
        node.status(),
        node.log_text()
    );
    assert!(echoscu(node.opts.port, SCU_AE, NODE_AE).status.success());
}

/// Replaces `from` by `to` in the configuration file, sends a two-series study and kills
/// the worker process once it runs the job: the fresh worker must still run the study with
/// the configuration the node runs with. Returns the node once the results arrived.
fn edit_then_crash(from: &str, to: &str, expect_in_log: &str) -> (Node, StoreScp) {
    let fx = fixtures::reference_dir().expect("fixtures");
    let o = NodeOpts {
        env: vec![("PRIMA_NODE_FAKE_DELAY_MS".into(), "2000".into())],
        ..NodeOpts::default()
    };
    let dest = StoreScp::start(o.dest_port);
    let node = Node::start(o);
    let text = std::fs::read_to_string(&node.config).unwrap();
    assert!(text.contains(from));
    std::fs::write(&node.config, text.replace(from, to)).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || node
            .log_text()
            .contains(expect_in_log)),
        "{}",
        node.log_text()
    );
    let a = study_series(&fx, "STUDY_A");
    send_study(node.opts.port, &a[..2], 2);
    assert!(wait_until(Duration::from_secs(30), || node
        .log_text()
        .contains("processing study")));
    kill_worker(&node, 0);
    assert!(
        wait_until(Duration::from_secs(60), || !dest.received().is_empty()),
        "{}\n{}",
        node.status(),
        node.log_text()
    );
    (node, dest)
}

#[test]
fn an_invalid_edit_and_a_worker_crash_do_not_fail_the_study() {
    if fixtures::reference_dir().is_none() || !have_dcmtk() {
        return;
    }
    let (node, _dest) = edit_then_crash(
        "state_dir",
        "state_directory",
        "configuration change refused",
    );
    assert_eq!(node.log_text().matches("worker process ready").count(), 2);
    assert!(!node.log_text().contains("died while loading"));
}

#[test]
fn a_restart_only_change_does_not_reach_a_restarted_worker() {
    if fixtures::reference_dir().is_none() || !have_dcmtk() {
        return;
    }
    let (node, _dest) = edit_then_crash(
        "/nonexistent/model",
        "/nonexistent/other-model",
        "need a restart and were not applied",
    );
    let log = node.log_text();
    let ready: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("worker process ready"))
        .collect();
    assert_eq!(ready.len(), 2, "{log}");
    assert!(
        ready
            .iter()
            .all(|l| l.contains("/nonexistent/model") && !l.contains("other-model")),
        "{ready:#?}"
    );
}

/// A destination that answers every C-STORE with Success but names another request
/// (Message ID Being Responded To off by 100): raw PDUs, accepting every context proposed
/// with its first transfer syntax. Returns the number of data sets it was sent.
fn misanswering_destination(port: u16) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
    scripted_destination(port, 100, 0x0000)
}

/// A destination that accepts every association and answers each C-STORE with `status`,
/// naming the request `id_offset` after the one it answers (0: the right one).
fn scripted_destination(
    port: u16,
    id_offset: u16,
    status: u16,
) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let seen = std::sync::Arc::new(AtomicUsize::new(0));
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let count = seen.clone();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            let count = count.clone();
            std::thread::spawn(move || {
                let read_pdu = |s: &mut std::net::TcpStream| -> Option<(u8, Vec<u8>)> {
                    let mut h = [0u8; 6];
                    s.read_exact(&mut h).ok()?;
                    let mut b = vec![0; u32::from_be_bytes([h[2], h[3], h[4], h[5]]) as usize];
                    s.read_exact(&mut b).ok()?;
                    Some((h[0], b))
                };
                let pdu = |ty: u8, body: &[u8]| {
                    let mut v = vec![ty, 0];
                    v.extend_from_slice(&(body.len() as u32).to_be_bytes());
                    v.extend_from_slice(body);
                    v
                };
                let item = |ty: u8, body: &[u8]| {
                    let mut v = vec![ty, 0];
                    v.extend_from_slice(&(body.len() as u16).to_be_bytes());
                    v.extend_from_slice(body);
                    v
                };
                let Some((0x01, rq)) = read_pdu(&mut s) else {
                    return;
                };
                let mut ac = rq[..68].to_vec();
                ac.extend(item(0x10, b"1.2.840.10008.3.1.1.1"));
                let mut i = 68;
                while i + 4 <= rq.len() {
                    let len = u16::from_be_bytes([rq[i + 2], rq[i + 3]]) as usize;
                    if rq[i] == 0x20 {
                        let pc = &rq[i + 4..i + 4 + len];
                        // Sub-items after the 4-byte head: abstract syntax, then syntaxes.
                        let mut j = 4;
                        let mut ts = None;
                        while j + 4 <= pc.len() {
                            let l = u16::from_be_bytes([pc[j + 2], pc[j + 3]]) as usize;
                            if pc[j] == 0x40 && ts.is_none() {
                                ts = Some(pc[j + 4..j + 4 + l].to_vec());
                            }
                            j += 4 + l;
                        }
                        let mut body = vec![pc[0], 0, 0, 0];
                        body.extend(item(0x40, &ts.unwrap_or_default()));
                        ac.extend(item(0x21, &body));
                    }
                    i += 4 + len;
                }
                ac.extend(item(0x50, &item(0x51, &65536u32.to_be_bytes())));
                if s.write_all(&pdu(0x02, &ac)).is_err() {
                    return;
                }
                let mut cmd = Vec::new();
                let mut msg_id = 0u16;
                let mut class = Vec::new();
                let mut inst = Vec::new();
                while let Some((ty, body)) = read_pdu(&mut s) {
                    if ty != 0x04 {
                        let _ = s.write_all(&pdu(0x06, &[0; 4]));
                        return;
                    }
                    let mut i = 0;
                    while i + 6 <= body.len() {
                        let len =
                            u32::from_be_bytes([body[i], body[i + 1], body[i + 2], body[i + 3]])
                                as usize;
                        let (pc, hdr) = (body[i + 4], body[i + 5]);
                        let v = &body[i + 6..i + 4 + len];
                        i += 4 + len;
                        if hdr & 1 == 1 {
                            cmd.extend_from_slice(v);
                            if hdr & 2 == 2 {
                                let mut k = 0;
                                while k + 8 <= cmd.len() {
                                    let e = u16::from_le_bytes([cmd[k + 2], cmd[k + 3]]);
                                    let l = u32::from_le_bytes([
                                        cmd[k + 4],
                                        cmd[k + 5],
                                        cmd[k + 6],
                                        cmd[k + 7],
                                    ]) as usize;
                                    let val = &cmd[k + 8..k + 8 + l];
                                    match e {
                                        0x0002 => class = val.to_vec(),
                                        0x0110 => msg_id = u16::from_le_bytes([val[0], val[1]]),
                                        0x1000 => inst = val.to_vec(),
                                        _ => {}
                                    }
                                    k += 8 + l;
                                }
                                cmd.clear();
                            }
                        } else if hdr & 2 == 2 {
                            count.fetch_add(1, Ordering::SeqCst);
                            let el = |out: &mut Vec<u8>, e: u16, v: &[u8]| {
                                out.extend_from_slice(&0u16.to_le_bytes());
                                out.extend_from_slice(&e.to_le_bytes());
                                out.extend_from_slice(&(v.len() as u32).to_le_bytes());
                                out.extend_from_slice(v);
                            };
                            let mut b = Vec::new();
                            el(&mut b, 0x0002, &class);
                            el(&mut b, 0x0100, &0x8001u16.to_le_bytes());
                            el(
                                &mut b,
                                0x0120,
                                &msg_id.wrapping_add(id_offset).to_le_bytes(),
                            );
                            el(&mut b, 0x0800, &0x0101u16.to_le_bytes());
                            el(&mut b, 0x0900, &status.to_le_bytes());
                            el(&mut b, 0x1000, &inst);
                            let mut rsp = Vec::new();
                            el(&mut rsp, 0x0000, &(b.len() as u32).to_le_bytes());
                            rsp.extend(b);
                            let mut pdv = ((rsp.len() + 2) as u32).to_be_bytes().to_vec();
                            pdv.extend_from_slice(&[pc, 0x03]);
                            pdv.extend(rsp);
                            if s.write_all(&pdu(0x04, &pdv)).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    seen
}

#[test]
fn success_naming_another_request_is_not_a_delivery() {
    let Some(fx) = fixtures::reference_dir() else {
        return;
    };
    if !have_dcmtk() {
        return;
    }
    let opts = NodeOpts {
        max_attempts: 3,
        retry_initial_s: 0.2,
        retry_max_s: 0.5,
        ..NodeOpts::default()
    };
    let seen = misanswering_destination(opts.dest_port);
    let node = Node::start(opts);
    let series = study_series(&fx, "STUDY_A");
    send_study(node.opts.port, &series[..2], 2);
    let (status, line) = failed_after_three_attempts(&node);
    assert!(
        line.contains(
            "C-STORE response does not match the request: Message ID Being Responded To is 101, the request was 1"
        ),
        "{status}"
    );
    assert!(
        seen.load(std::sync::atomic::Ordering::SeqCst) >= 3,
        "{status}"
    );
    assert!(
        !status
            .lines()
            .any(|l| l.contains(" -> ") && l.contains(" done attempts=")),
        "an output counted as delivered:\n{status}"
    );
}

#[test]
fn a_delivery_accepted_with_a_warning_status_is_audited_with_it() {
    // Before: marked done with no audit row (only a log line said the PACS coerced it).
    let Some(fx) = fixtures::reference_dir() else {
        return;
    };
    if !have_dcmtk() {
        return;
    }
    let opts = NodeOpts::default();
    let seen = scripted_destination(opts.dest_port, 0, 0xB000);
    let node = Node::start(opts);
    let series = study_series(&fx, "STUDY_A");
    send_study(node.opts.port, &series[..2], 2);
    let rows = || -> Vec<String> {
        let db = rusqlite::Connection::open_with_flags(
            node.state_dir.join("state.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let mut st = db
            .prepare("SELECT detail FROM audit WHERE event = 'delivery_attempt' ORDER BY id")
            .unwrap();
        st.query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    assert!(
        wait_until(Duration::from_secs(120), || !rows().is_empty()),
        "{:?}\n{}",
        rows(),
        node.log_text()
    );
    let rows = rows();
    assert!(
        rows.iter()
            .all(|r| r.ends_with("attempt 1: delivered with warning status 0xB000")),
        "{rows:?}"
    );
    assert!(seen.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    assert!(
        node.status().contains(" done attempts=1"),
        "{}",
        node.status()
    );
}

#[test]
fn unreadable_spool_files_are_quarantined_at_restart_not_deleted() {
    let Some(fx) = fixtures::reference_dir() else {
        return;
    };
    if !have_dcmtk() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let mut node = Node::start(NodeOpts::default());
    node.sigkill();
    let series = study_series(&fx, "STUDY_A");
    // A torn copy of a real instance at its own path, and garbage under a plausible name.
    let real = std::fs::read(&series[0][0]).unwrap();
    let torn = node.spool_path(&sop_uid_of(&series[0][0]));
    std::fs::write(&torn, &real[..300]).unwrap();
    let garbage = node
        .state_dir
        .join("spool/objects/00")
        .join(format!("{}.dcm", "0".repeat(64)));
    std::fs::write(&garbage, b"\x00garbage, not DICOM").unwrap();
    for p in [&torn, &garbage] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    node.restart();
    assert!(
        !torn.exists() && !garbage.exists(),
        "moved out of the spool"
    );
    let q = node.state_dir.join("quarantine");
    let kept = walk_files(&q);
    assert_eq!(kept.len(), 2, "{kept:?}\n{}", node.log_text());
    let mut contents: Vec<Vec<u8>> = kept.iter().map(|p| std::fs::read(p).unwrap()).collect();
    contents.sort();
    let mut want = vec![b"\x00garbage, not DICOM".to_vec(), real[..300].to_vec()];
    want.sort();
    assert_eq!(contents, want, "bytes kept as they were");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&q), 0o700);
    assert!(kept.iter().all(|p| mode(p) == 0o600));
    let log = node.log_text();
    assert_eq!(
        log.matches("spool file cannot be indexed: moved to quarantine")
            .count(),
        2,
        "{log}"
    );
    assert!(log.contains("unreadable_files_quarantined=2"), "{log}");
    assert!(
        node.status().contains("quarantined files: 2"),
        "{}",
        node.status()
    );
    // The node serves: an echo, and the real instance stored again.
    assert!(echoscu(node.opts.port, SCU_AE, NODE_AE).status.success());
    let out = storescu(node.opts.port, SCU_AE, &series[0][..1]);
    assert!(text(&out).contains("(Success)"), "{}", text(&out));
    assert!(torn.exists());
}

/// The `attempts=` of the only outbox line of `status`, and the line.
fn outbox_attempts(status: &str) -> (u32, String) {
    let line = status
        .lines()
        .find(|l| l.contains(" -> "))
        .unwrap_or_else(|| panic!("no outbox entry:\n{status}"))
        .to_string();
    let n = line
        .split("attempts=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    (n, line)
}

#[test]
fn a_pending_delivery_survives_a_destination_edit_and_reaches_it_when_restored() {
    let Some(fx) = fixtures::reference_dir() else {
        return;
    };
    if !have_dcmtk() {
        return;
    }
    let node = Node::start(NodeOpts {
        retry_initial_s: 0.3,
        // Parked entries wait this long: delivery after the restore within the test's
        // wait needs the restored destination's entries retried at once.
        retry_max_s: 30.0,
        // A restored destination that had counted the unconfigured time would give up at
        // its first failure.
        max_attempts: 2,
        ..NodeOpts::default()
    });
    let series = study_series(&fx, "STUDY_A");
    send_study(node.opts.port, &series[..2], 2);
    // The destination is down: the delivery is pending, tried and counted.
    assert!(
        wait_until(Duration::from_secs(40), || node
            .status()
            .contains("last_error: cannot associate")),
        "{}",
        node.status()
    );
    // Edit the destination (another port) while the delivery is pending.
    let edited = NodeOpts {
        dest_port: free_port(),
        ..node.opts.clone()
    };
    node.rewrite_config(&config_text(&edited, &node.state_dir));
    assert!(
        wait_until(Duration::from_secs(20), || node
            .status()
            .contains("is not configured: kept until it is again")),
        "{}\n{}",
        node.status(),
        node.log_text()
    );
    let (parked, line) = outbox_attempts(&node.status());
    assert!(line.contains(" pending "), "{line}");
    // Exactly the connection attempts made, each logged as a failed try.
    let tries = node
        .log_text()
        .matches("delivery failed; will retry")
        .count() as u32;
    assert_eq!(parked, tries, "{line}");
    // The sender keeps looking at the outbox: the count stays put.
    std::thread::sleep(Duration::from_secs(3));
    let (still, line) = outbox_attempts(&node.status());
    assert_eq!(still, parked, "attempts counted while unconfigured: {line}");
    assert!(line.contains(" pending "), "{line}");

    // Restore the destination, and bring it up: the object is delivered.
    let dest = StoreScp::start(node.opts.dest_port);
    node.rewrite_config(&config_text(&node.opts, &node.state_dir));
    assert!(
        wait_until(Duration::from_secs(20), || !dest.received().is_empty()),
        "not delivered after the destination was restored:\n{}\n{}",
        node.status(),
        node.log_text()
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(dest.received().len(), 1);
    let (done, line) = outbox_attempts(&node.status());
    assert!(line.contains(" done "), "{line}");
    assert_eq!(done, parked + 1, "{line}");
    assert!(node
        .log_text()
        .contains("destination configured: its pending deliveries are retried now"));
}

/// What the rescan sees after a power loss took the record of a replacement (same SOP
/// Instance UID, new content, acknowledged): the spool file is newer than its database
/// row. The study must be processed again with the new content.
#[test]
fn a_replacement_whose_record_was_lost_is_reindexed_and_its_study_processed_again() {
    let Some(fx) = fixtures::reference_dir() else {
        return;
    };
    if !have_dcmtk() {
        return;
    }
    let mut node = Node::start(NodeOpts::default());
    let series = study_series(&fx, "STUDY_A");
    send_study(node.opts.port, &series[..2], 2);
    let study = study_uid_of(&series[0][0]);
    let runs = |node: &Node, n: &str| {
        node.status()
            .lines()
            .any(|l| l.contains(&study) && l.contains(" done ") && l.contains(n))
    };
    assert!(
        wait_until(Duration::from_secs(30), || runs(&node, "runs=1")),
        "{}",
        node.status()
    );
    node.sigkill();
    // The replacement, as the SCP would have left it: new content under the same path.
    let spooled = node.spool_path(&sop_uid_of(&series[0][0]));
    let mut obj = dicom_object::open_file(&spooled).unwrap();
    obj.put(dicom_object::mem::InMemElement::new(
        dicom_dictionary_std::tags::IMAGE_COMMENTS,
        dicom_core::VR::LT,
        dicom_core::PrimitiveValue::from("replaced"),
    ));
    std::thread::sleep(Duration::from_millis(20));
    let tmp = node.state_dir.join("spool/tmp/replacement.part");
    obj.write_to_file(&tmp).unwrap();
    std::fs::rename(&tmp, &spooled).unwrap();
    node.restart();
    assert!(
        node.log_text().contains("replaced_instances_reindexed=1"),
        "{}",
        node.log_text()
    );
    assert!(
        wait_until(Duration::from_secs(30), || runs(&node, "runs=2")),
        "{}",
        node.status()
    );
    // A second restart finds the record as recent as the file: nothing to redo.
    node.sigkill();
    node.restart();
    assert!(node.log_text().contains("replaced_instances_reindexed=0"));
}

/// A destination that accepts connections and never answers: each is held open, nothing is
/// read or written. Returns its port.
fn silent_destination() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in l.incoming().flatten() {
            held.push(c);
        }
    });
    port
}

/// A destination that answers, one byte every 50 ms: a proxy in front of a storescp that
/// passes the node's bytes at once and the storescp's a byte at a time. Returns its port.
fn trickling_destination(to: u16) -> u16 {
    trickling_destination_every(to, Duration::from_millis(50), Arc::default())
}

/// [`trickling_destination`] with a byte every `every`; `connections` counts the
/// connections it accepted.
fn trickling_destination_every(to: u16, every: Duration, connections: Arc<AtomicUsize>) -> u16 {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            connections.fetch_add(1, Ordering::SeqCst);
            let Ok(up) = std::net::TcpStream::connect(("127.0.0.1", to)) else {
                continue;
            };
            let (mut c_in, mut up_out) = (c.try_clone().unwrap(), up.try_clone().unwrap());
            std::thread::spawn(move || std::io::copy(&mut c_in, &mut up_out));
            let (mut up_in, mut c_out) = (up, c);
            std::thread::spawn(move || {
                let mut b = [0u8; 1];
                while up_in.read_exact(&mut b).is_ok() {
                    std::thread::sleep(every);
                    if c_out.write_all(&b).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

/// Issue 29: a silent and a trickling destination beside a healthy one. The healthy one
/// gets every result within its normal latency + 10 s, each stuck one is backed off with a
/// reason that says what happened, and SIGTERM stops the node in under 30 s. (Before: one
/// sender thread waited out each destination in turn, 120 s per read.)
#[test]
fn a_silent_and_a_trickling_destination_do_not_hold_up_a_healthy_one() {
    if !have_dcmtk() {
        return;
    }
    let (healthy_port, behind_port) = (free_port(), free_port());
    let healthy = StoreScp::start(healthy_port);
    let _behind_trickle = StoreScp::start(behind_port);
    let silent = silent_destination();
    let trickle = trickling_destination(behind_port);
    let mut node = Node::start(NodeOpts {
        dest_port: healthy_port,
        quiet_s: 0.5,
        retry_initial_s: 1.0,
        retry_max_s: 2.0,
        outbox_toml: "response_timeout_s = 3\ntransfer_timeout_s = 6".into(),
        extra_toml: format!(
            "\n[[destinations]]\nae_title = \"SILENT\"\nhost = \"127.0.0.1\"\nport = {silent}\n\
             \n[[destinations]]\nae_title = \"TRICKLE\"\nhost = \"127.0.0.1\"\nport = {trickle}\n"
        ),
        ..NodeOpts::default()
    });
    let tmp = tempfile::tempdir().unwrap();
    for seed in 1..=3u64 {
        let dir = tmp.path().join(format!("s{seed}"));
        let o = Command::new(bin())
            .args(["synth-study", "--seed", &(40 + seed).to_string()])
            .args([
                "--instances",
                "6",
                "--series",
                "2",
                "--rows",
                "64",
                "--cols",
                "64",
            ])
            .arg("--out")
            .arg(&dir)
            .output()
            .unwrap();
        assert!(o.status.success());
        let files = walk_files(&dir);
        let study = study_uid_of(&files[0]);
        let sent = std::time::Instant::now();
        assert!(storescu(node.opts.port, SCU_AE, &files).status.success());
        // Normal latency here: the quiet period (0.5 s) and well under a second more.
        assert!(
            wait_until(Duration::from_secs(12), || healthy
                .received()
                .iter()
                .any(|(_, s)| *s == study)),
            "study {seed}: no result at the healthy destination {:.1} s after sending:\n{}",
            sent.elapsed().as_secs_f64(),
            node.log_text()
        );
        eprintln!(
            "study {seed}: at the healthy destination {:.1} s after sending",
            sent.elapsed().as_secs_f64()
        );
    }
    assert!(
        wait_until(Duration::from_secs(20), || {
            let st = node.status();
            st.contains("no answer to the association request within response_timeout_s = 3 s")
                && st.contains("did not finish within transfer_timeout_s = 6 s")
        }),
        "no precise reasons:\n{}",
        node.status()
    );
    let t = std::time::Instant::now();
    assert_eq!(node.sigterm(), Some(0), "{}", node.log_text());
    let stop_s = t.elapsed().as_secs_f64();
    eprintln!("SIGTERM to exit: {stop_s:.1} s");
    assert!(stop_s < 30.0, "SIGTERM took {stop_s:.1} s");
}

/// Issue 29: a destination that trickles its A-ASSOCIATE-AC a byte a second, beside a
/// healthy one. Its attempt ends by `transfer_timeout_s` with a reason that says so and is
/// backed off (tried again, and cut again); the healthy one gets every result within its
/// normal latency + 10 s. (Before: dicom-ul's client bounds the negotiation per read only,
/// so the attempt lasted as long as the trickle, minutes for a few hundred bytes.)
#[test]
fn an_acceptance_trickled_a_byte_a_second_is_cut_at_the_deadline() {
    if !have_dcmtk() {
        return;
    }
    let (healthy_port, behind_port) = (free_port(), free_port());
    let healthy = StoreScp::start(healthy_port);
    let _behind_trickle = StoreScp::start(behind_port);
    let connections = Arc::new(AtomicUsize::new(0));
    let trickle =
        trickling_destination_every(behind_port, Duration::from_secs(1), connections.clone());
    let mut node = Node::start(NodeOpts {
        dest_port: healthy_port,
        quiet_s: 0.5,
        retry_initial_s: 1.0,
        retry_max_s: 2.0,
        outbox_toml: "response_timeout_s = 3\ntransfer_timeout_s = 6".into(),
        extra_toml: format!(
            "\n[[destinations]]\nae_title = \"TRICKLE\"\nhost = \"127.0.0.1\"\nport = {trickle}\n"
        ),
        ..NodeOpts::default()
    });
    let tmp = tempfile::tempdir().unwrap();
    let o = Command::new(bin())
        .args(["synth-study", "--seed", "61", "--instances", "3"])
        .args(["--series", "2", "--rows", "64", "--cols", "64", "--out"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(o.status.success());
    let files = walk_files(tmp.path());
    let study = study_uid_of(&files[0]);
    let sent = std::time::Instant::now();
    assert!(storescu(node.opts.port, SCU_AE, &files).status.success());
    assert!(
        wait_until(Duration::from_secs(10), || connections
            .load(Ordering::SeqCst)
            >= 1),
        "no attempt on the trickling destination:\n{}",
        node.log_text()
    );
    let attempt = std::time::Instant::now();
    assert!(
        wait_until(Duration::from_secs(12), || healthy
            .received()
            .iter()
            .any(|(_, s)| *s == study)),
        "no result at the healthy destination {:.1} s after sending:\n{}",
        sent.elapsed().as_secs_f64(),
        node.log_text()
    );
    let healthy_s = sent.elapsed().as_secs_f64();
    let reason =
        "association request: the destination did not finish within transfer_timeout_s = 6 s";
    assert!(
        wait_until(Duration::from_secs(10), || node.status().contains(reason)),
        "the trickled acceptance was not cut by the deadline {:.1} s after the attempt began:\n{}",
        attempt.elapsed().as_secs_f64(),
        node.status()
    );
    // From the connection to the reason on the status page (an upper bound when the
    // healthy destination's wait above took longer).
    let cut_s = attempt.elapsed().as_secs_f64();
    assert!(cut_s < 6.0 + 3.0, "attempt cut {cut_s:.1} s after it began");
    // Backed off, then tried again on a new connection.
    assert!(
        wait_until(Duration::from_secs(12), || connections
            .load(Ordering::SeqCst)
            >= 2),
        "no second attempt:\n{}",
        node.log_text()
    );
    eprintln!(
        "TRICKLED-AC-SUMMARY healthy_s={healthy_s:.1} cut_after_s={cut_s:.1} attempts_so_far={}",
        connections.load(Ordering::SeqCst)
    );
    let t = std::time::Instant::now();
    assert_eq!(node.sigterm(), Some(0), "{}", node.log_text());
    let stop_s = t.elapsed().as_secs_f64();
    assert!(stop_s < 30.0, "SIGTERM took {stop_s:.1} s");
}

fn http_get(url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}", url])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Issue 29: `/readyz`, the status page and `stalled{stage}` say whether the pipeline makes
/// progress, not only whether the process answers: a model process stopped mid-study makes
/// the node not ready until it is killed for its silence, and ready again after.
#[test]
fn a_stopped_worker_makes_the_node_not_ready_until_it_is_replaced() {
    let Some(fx) = fixtures::reference_dir() else {
        return;
    };
    if !have_dcmtk() {
        return;
    }
    let http = free_port();
    let o = NodeOpts {
        env: vec![("PRIMA_NODE_FAKE_DELAY_MS".into(), "20000".into())],
        model_toml: "heartbeat_timeout_s = 10".into(),
        extra_toml: format!("\n[http]\nlisten = \"127.0.0.1:{http}\"\nopen_reads = true\n"),
        ..NodeOpts::default()
    };
    let _dest = StoreScp::start(o.dest_port);
    let node = Node::start(o);
    let base = format!("http://127.0.0.1:{http}");
    assert_eq!(http_get(&format!("{base}/readyz")).0, 200);
    let a = study_series(&fx, "STUDY_A");
    send_study(node.opts.port, &a[..2], 2);
    assert!(wait_until(Duration::from_secs(30), || node
        .log_text()
        .contains("processing study")));
    stop_worker(&node, 0);
    let t0 = std::time::Instant::now();
    assert!(
        wait_until(Duration::from_secs(8), || {
            let (code, body) = http_get(&format!("{base}/readyz"));
            code == 503 && body.contains("model stalled: the model process has been silent")
        }),
        "/readyz did not say the model stalled: {:?}",
        http_get(&format!("{base}/readyz"))
    );
    eprintln!(
        "not ready {:.1} s after the stop",
        t0.elapsed().as_secs_f64()
    );
    let page = http_get(&format!("{base}/")).1;
    assert!(page.contains("Stalled: model"), "{page}");
    // The metric follows within its 5 s refresh.
    assert!(wait_until(Duration::from_secs(8), || http_get(&format!(
        "{base}/metrics"
    ))
    .1
    .contains("prima_node_stalled{stage=\"model\"} 1")));
    // Killed for its silence and replaced: ready again.
    assert!(
        wait_until(Duration::from_secs(30), || node
            .log_text()
            .contains("worker process stalled on this study")),
        "{}",
        node.log_text()
    );
    assert!(
        wait_until(Duration::from_secs(10), || http_get(&format!(
            "{base}/readyz"
        ))
        .0 == 200),
        "{:?}",
        http_get(&format!("{base}/readyz"))
    );
    assert!(node.log_text().contains("pipeline stage stalled"));
}
