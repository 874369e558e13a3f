//! The node's basic behaviour with real DCMTK tools: C-ECHO, association rejections,
//! a full study delivered exactly once, `status`, `check-config`, live config reload.

mod common;
mod fixtures;

use common::*;
use std::time::Duration;

#[test]
fn echo_and_rejections() {
    if !have_dcmtk() {
        return;
    }
    let mut o = NodeOpts::default();
    o.sources
        .push(("ELSEWHERE".into(), Some("10.255.255.1".into())));
    let node = Node::start(o);
    let port = node.opts.port;

    let ok = echoscu(port, SCU_AE, NODE_AE);
    assert!(ok.status.success(), "echo failed:\n{}", text(&ok));

    let r = echoscu(port, "STRANGER", NODE_AE);
    assert!(!r.status.success());
    assert!(
        text(&r).contains("Calling AE Title Not Recognized"),
        "unexpected output:\n{}",
        text(&r)
    );

    let r = echoscu(port, SCU_AE, "NOT_PRIMA");
    assert!(!r.status.success());
    assert!(
        text(&r).contains("Called AE Title Not Recognized"),
        "unexpected output:\n{}",
        text(&r)
    );

    // A known AE title from an address its [[sources]] entry does not allow.
    let r = echoscu(port, "ELSEWHERE", NODE_AE);
    assert!(!r.status.success());
    assert!(
        text(&r).contains("Calling AE Title Not Recognized"),
        "{}",
        text(&r)
    );

    let log = node.log_text();
    assert!(log.contains("calling AE title not in [[sources]]"), "{log}");
    assert!(log.contains("not from this address"), "{log}");
}

#[test]
fn check_config_reports_precise_problems() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        config_text(&NodeOpts::default(), &dir.path().join("s")),
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .arg("check-config")
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("OK"));

    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/prima-node.toml");
    let out = std::process::Command::new(bin())
        .arg("check-config")
        .arg(&example)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    let bad = dir.path().join("bad.toml");
    let t = std::fs::read_to_string(&good)
        .unwrap()
        .replace(
            "ae_title = \"PRIMA\"",
            "ae_title = \"AN_AE_TITLE_FAR_TOO_LONG\"",
        )
        .replace("quiet_period_s = 1.5", "quiet_period_s = -1")
        .replace("port = ", "port = 0 #");
    std::fs::write(&bad, t).unwrap();
    let out = std::process::Command::new(bin())
        .arg("check-config")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let t = text(&out);
    assert!(t.contains("[node] ae_title"), "{t}");
    assert!(t.contains("maximum 16"), "{t}");
    assert!(t.contains("[assembly] quiet_period_s"), "{t}");
    assert!(t.contains("[[destinations]] #1 port"), "{t}");

    std::fs::write(&bad, "[node\nae_title=1").unwrap();
    let out = std::process::Command::new(bin())
        .arg("check-config")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("TOML"), "{}", text(&out));
}

#[test]
fn study_a_is_delivered_exactly_once() {
    let Some(fx) = fixtures::reference_dir() else {
        return;
    };
    if !have_dcmtk() {
        return;
    }
    let o = NodeOpts::default();
    let dest = StoreScp::start(o.dest_port);
    let mut node = Node::start(o);
    let series = study_series(&fx, "STUDY_A");
    let n_files: usize = series.iter().map(Vec::len).sum();
    let study_uid = study_uid_of(&series[0][0]);
    // Several associations, three at a time, as a PACS would.
    send_study(node.opts.port, &series, 3);
    assert_eq!(
        node.spool_objects().len(),
        n_files,
        "every instance spooled"
    );
    assert!(node.spool_tmp().is_empty());
    // The content hash recorded at reception is the instance's identity, computed from
    // the file as spooled (what a restart's rescan computes for a file it re-indexes).
    let db = rusqlite::Connection::open_with_flags(
        node.state_dir.join("state.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let rows: Vec<(String, String)> = db
        .prepare("SELECT path, content_hash FROM instances")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len(), n_files);
    for (path, hash) in rows {
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(
            hash,
            prima_node::store::identity::identity(&bytes).unwrap(),
            "{path}"
        );
    }
    drop(db);

    assert!(
        wait_until(Duration::from_secs(60), || !dest.received().is_empty()),
        "no output arrived:\n{}",
        node.status()
    );
    // Give a duplicate every chance to show up.
    std::thread::sleep(Duration::from_secs(2));
    let got = dest.received();
    assert_eq!(got.len(), 1, "exactly one output object: {got:?}");
    assert_eq!(got[0].1, study_uid, "output belongs to the study");

    let status = node.status();
    assert!(status.contains(&study_uid), "{status}");
    assert!(
        status
            .lines()
            .any(|l| l.contains(&study_uid) && l.contains(" done ")),
        "{status}"
    );
    assert!(
        status.contains(&got[0].0),
        "outbox lists the output:\n{status}"
    );
    assert!(
        status
            .lines()
            .any(|l| l.contains(&got[0].0) && l.contains(" done ")),
        "{status}"
    );

    // Predictions are kept beside the study.
    let results = walk_files(&node.state_dir.join("results"));
    assert!(
        results.iter().any(|p| p.ends_with("predictions.json")),
        "{results:?}"
    );

    // Private state: files 0600, directories 0700.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&node.state_dir), 0o700);
    assert_eq!(mode(&node.state_dir.join("state.db")), 0o600);
    let f = &node.spool_objects()[0];
    assert_eq!(mode(f), 0o600);
    assert_eq!(mode(f.parent().unwrap()), 0o700);

    // The PACS sends the whole study again: nothing changes, nothing is re-sent.
    send_study(node.opts.port, &series[..2], 2);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        dest.received().len(),
        1,
        "re-sent identical study not re-run"
    );

    // Graceful stop.
    assert_eq!(node.sigterm(), Some(0), "{}", node.log_text());
    assert!(node.log_text().contains("prima-node stopped"));
}

#[test]
fn config_changes_apply_live_and_invalid_ones_are_refused() {
    if !have_dcmtk() {
        return;
    }
    let node = Node::start(NodeOpts::default());
    let port = node.opts.port;
    let r = echoscu(port, "NEWSRC", NODE_AE);
    assert!(!r.status.success(), "not yet allowed");

    let mut o = node.opts.clone();
    o.sources.push(("NEWSRC".into(), None));
    node.rewrite_config(&config_text(&o, &node.state_dir));
    assert!(
        wait_until(Duration::from_secs(10), || echoscu(port, "NEWSRC", NODE_AE)
            .status
            .success()),
        "new source not applied:\n{}",
        node.log_text()
    );
    assert!(node.log_text().contains("configuration reloaded"));

    // An invalid file is refused and the previous configuration stays.
    node.rewrite_config("[node]\nae_title = \"\"\n");
    assert!(
        wait_until(Duration::from_secs(10), || node
            .log_text()
            .contains("configuration change refused")),
        "{}",
        node.log_text()
    );
    assert!(echoscu(port, "NEWSRC", NODE_AE).status.success());
    assert!(echoscu(port, SCU_AE, NODE_AE).status.success());
}

#[test]
fn systemd_unit_verifies() {
    if std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: systemd-analyze not installed");
        return;
    }
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/prima-node.service"),
    )
    .unwrap();
    for key in [
        "Type=notify",
        "WatchdogSec=",
        "StateDirectory=prima-node",
        "User=prima-node",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=",
    ] {
        assert!(unit.contains(key), "unit lacks {key}");
    }
    // verify insists that ExecStart's binary exists: point it at the one just built.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("prima-node.service");
    std::fs::write(
        &p,
        unit.replace("/usr/bin/prima-node", bin().to_str().unwrap()),
    )
    .unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&p)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "systemd-analyze verify:\n{}",
        text(&out)
    );
    assert!(text(&out).trim().is_empty(), "warnings:\n{}", text(&out));
}

#[test]
fn reopened_study_is_rerun_and_references_the_earlier_output() {
    let Some(fx) = fixtures::reference_dir() else {
        return;
    };
    if !have_dcmtk() {
        return;
    }
    use dicom_dictionary_std::tags;
    let o = NodeOpts::default();
    let dest = StoreScp::start(o.dest_port);
    let node = Node::start(o);
    let series = study_series(&fx, "STUDY_A");
    send_study(node.opts.port, &series[..2], 2);
    assert!(wait_until(Duration::from_secs(30), || dest
        .received()
        .len()
        == 1));
    let first = dest.received()[0].0.clone();

    // A late instance: a copy of one slice under a new SOP Instance UID.
    let mut obj = dicom_object::open_file(&series[2][0]).unwrap();
    let new_uid = "2.25.123456789012345678901234567890";
    obj.put(dicom_object::mem::InMemElement::new(
        tags::SOP_INSTANCE_UID,
        dicom_core::VR::UI,
        dicom_core::PrimitiveValue::from(new_uid),
    ));
    obj.meta_mut().media_storage_sop_instance_uid = new_uid.to_string();
    let late = node.dir.path().join("late.dcm");
    obj.write_to_file(&late).unwrap();
    let out = storescu(node.opts.port, SCU_AE, &[late]);
    assert!(out.status.success(), "{}", text(&out));

    assert!(
        wait_until(Duration::from_secs(30), || dest.received().len() == 2),
        "re-run output not delivered:\n{}",
        node.status()
    );
    let objs = dest.received_objects();
    let (_, _, second) = objs.iter().find(|(sop, _, _)| *sop != first).unwrap();
    let pred = second
        .element(tags::PREDECESSOR_DOCUMENTS_SEQUENCE)
        .expect("predecessor documents");
    let study_item = &pred.items().unwrap()[0];
    let series_item = &study_item
        .element(tags::REFERENCED_SERIES_SEQUENCE)
        .unwrap()
        .items()
        .unwrap()[0];
    let sop_item = &series_item
        .element(tags::REFERENCED_SOP_SEQUENCE)
        .unwrap()
        .items()
        .unwrap()[0];
    let referenced = sop_item
        .element(tags::REFERENCED_SOP_INSTANCE_UID)
        .unwrap()
        .to_str()
        .unwrap()
        .trim_end_matches('\0')
        .to_string();
    assert_eq!(referenced, first);
    let status = node.status();
    assert!(status.contains("runs=2"), "{status}");
}

#[test]
fn association_limit_rejects_transiently() {
    if !have_dcmtk() {
        return;
    }
    let node = Node::start(NodeOpts {
        max_associations: 1,
        ..NodeOpts::default()
    });
    // An association that then stays silent holds the only slot (until the read timeout);
    // a connection that never sends its request holds none (node_limits).
    let mut _hog = std::net::TcpStream::connect(("127.0.0.1", node.opts.port)).unwrap();
    {
        use std::io::{Read, Write};
        _hog.write_all(&associate_rq(SCU_AE)).unwrap();
        let mut ac = [0u8; 6];
        _hog.read_exact(&mut ac).unwrap();
        assert_eq!(ac[0], 0x02, "association accepted");
    }
    std::thread::sleep(Duration::from_millis(300));
    let r = echoscu(node.opts.port, SCU_AE, NODE_AE);
    assert!(!r.status.success());
    assert!(text(&r).contains("Local Limit Exceeded"), "{}", text(&r));
    drop(_hog);
    assert!(wait_until(Duration::from_secs(5), || echoscu(
        node.opts.port,
        SCU_AE,
        NODE_AE
    )
    .status
    .success()));
}
