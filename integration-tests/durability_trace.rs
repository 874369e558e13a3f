//! Durability, not only crash safety: SIGKILL leaves the page cache intact, so the crash
//! trials cannot see a missing fsync. This test records the node's system calls with
//! `strace` while it receives a study and delivers its result, and checks the order that
//! makes an acknowledged instance and a delivered output survive a power loss:
//!
//! - every instance: its data written to the temporary file, that file's fdatasync/fsync,
//!   the rename onto its spool path, and the fsync of the directory it was renamed into,
//!   all finished before the C-STORE response carrying its SOP Instance UID is written;
//! - every output: written, synced, renamed into the outbox and its directory synced before
//!   the first byte of its C-STORE to the destination; the study's predictions and run
//!   record the same way, in a `results/<hash>` directory that was itself synced into
//!   `results/` after it was created.
mod common;
mod fixtures;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// One completed system call: who, when it started and ended, its name and arguments.
#[derive(Debug, Clone)]
struct Call {
    start: f64,
    end: f64,
    name: String,
    args: String,
}

/// `strace -f -ttt -yy` output → calls, with `<unfinished ...>`/`resumed` pairs joined.
fn parse(trace: &str) -> Vec<Call> {
    let mut open: HashMap<String, (f64, String, String)> = HashMap::new();
    let mut calls = Vec::new();
    for line in trace.lines() {
        // "PID TIME call(...)": strace pads PID to a common width.
        let Some((pid, rest)) = line.trim_start().split_once(char::is_whitespace) else {
            continue;
        };
        let Some((t, rest)) = rest.trim_start().split_once(' ') else {
            continue;
        };
        let Ok(t) = t.parse::<f64>() else { continue };
        if let Some(r) = rest.strip_prefix("<... ") {
            let Some((name, tail)) = r.split_once(" resumed>") else {
                continue;
            };
            if let Some((start, n, args)) = open.remove(pid) {
                if n == name {
                    calls.push(Call {
                        start,
                        end: t,
                        name: n,
                        args: format!("{args}{tail}"),
                    });
                }
            }
        } else if let Some((name, args)) = rest.split_once('(') {
            if let Some(a) = args.strip_suffix(" <unfinished ...>") {
                open.insert(pid.to_string(), (t, name.to_string(), a.to_string()));
            } else {
                calls.push(Call {
                    start: t,
                    end: t,
                    name: name.to_string(),
                    args: args.to_string(),
                });
            }
        }
    }
    calls
}

fn ok(c: &Call) -> bool {
    !c.args.contains(") = -1")
}

/// The file descriptor argument's path as `strace -yy` prints it: `fd</path>`.
fn fd_path(c: &Call) -> Option<&str> {
    let a = c.args.split_once('<')?.1;
    Some(a.split_once('>')?.0)
}

/// Checks that the file renamed onto `dst` was written and synced before the rename and
/// its directory synced after it, all before `deadline` (the first call that publishes it);
/// returns what is missing.
fn durable_before(calls: &[Call], dst: &Path, deadline: &Call) -> Result<(), String> {
    let dst = dst.to_string_lossy();
    let rename = calls
        .iter()
        .find(|c| c.name.starts_with("rename") && ok(c) && c.args.contains(&format!("\"{dst}\"")))
        .ok_or_else(|| format!("no rename onto {dst}"))?;
    let tmp = rename
        .args
        .split('"')
        .nth(1)
        .ok_or("rename without a source path")?
        .to_string();
    let on_tmp = |names: &[&str]| {
        calls
            .iter()
            .filter(|c| names.contains(&c.name.as_str()) && ok(c) && fd_path(c) == Some(&tmp))
            .cloned()
            .collect::<Vec<_>>()
    };
    let writes = on_tmp(&["write", "pwrite64", "writev"]);
    let last_write = writes
        .iter()
        .filter(|c| c.end <= rename.start)
        .map(|c| c.end)
        .fold(None, |a: Option<f64>, b| Some(a.map_or(b, |a| a.max(b))))
        .ok_or_else(|| format!("no data written to {tmp} before its rename"))?;
    on_tmp(&["fdatasync", "fsync"])
        .iter()
        .find(|c| c.start >= last_write && c.end <= rename.start)
        .ok_or_else(|| format!("no fdatasync of {tmp} between its last write and its rename"))?;
    let dir = Path::new(dst.as_ref())
        .parent()
        .unwrap()
        .to_string_lossy()
        .to_string();
    calls
        .iter()
        .find(|c| c.name == "fsync" && ok(c) && fd_path(c) == Some(&dir) && c.start >= rename.end)
        .filter(|c| c.end <= deadline.start)
        .ok_or_else(|| format!("no fsync of {dir} after the rename and before it was published"))?;
    if rename.end > deadline.start {
        return Err(format!("{dst} renamed after it was published"));
    }
    Ok(())
}

/// The first write of the node to a TCP socket whose bytes hold `uid`.
fn first_send_with<'a>(calls: &'a [Call], uid: &str) -> Option<&'a Call> {
    calls.iter().find(|c| {
        matches!(c.name.as_str(), "write" | "writev" | "sendto" | "sendmsg")
            && fd_path(c).is_some_and(|p| p.starts_with("TCP:"))
            && c.args.contains(uid)
    })
}

/// strace is there; without it the test is skipped, except under CI, where it fails.
fn have_strace() -> bool {
    if Command::new("strace").arg("-V").output().is_ok() {
        return true;
    }
    assert!(
        std::env::var("CI").is_err(),
        "strace is missing (scripts/setup.sh installs it)"
    );
    eprintln!("strace not installed: skipped");
    false
}

/// `strace -f -yy` attached to the running node, tracing `calls`, writing up to 8 KiB of
/// each buffer (a WAL page and its frame header): (strace, its trace, its own log).
fn attach_strace(node: &Node, calls: &str) -> (std::process::Child, PathBuf, PathBuf) {
    let trace = node.state_dir.parent().unwrap().join("trace.txt");
    let strace_log = node.state_dir.parent().unwrap().join("strace.log");
    let strace = Command::new("strace")
        .args(["-f", "-ttt", "-yy", "-s", "8192", "-o"])
        .arg(&trace)
        .args(["-e", &format!("trace={calls}"), "-p"])
        .arg(node.pid().unwrap().to_string())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&strace_log).unwrap())
        .spawn()
        .unwrap();
    // strace says "Process N attached" for each thread it attaches to.
    let attached = wait_until(Duration::from_secs(20), || {
        std::fs::read_to_string(&strace_log).is_ok_and(|l| l.contains("attached"))
    });
    assert!(
        attached,
        "strace did not attach: {}",
        std::fs::read_to_string(&strace_log).unwrap_or_default()
    );
    std::thread::sleep(Duration::from_millis(500));
    (strace, trace, strace_log)
}

#[test]
fn acknowledged_instances_and_delivered_outputs_are_durable_first() {
    let Some(fx) = fixtures::reference_dir() else {
        return;
    };
    if !have_dcmtk() {
        return;
    }
    if !have_strace() {
        return;
    }
    let o = NodeOpts::default();
    let dest = StoreScp::start(o.dest_port);
    let node = Node::start(o);
    let (mut strace, trace, strace_log) = attach_strace(
        &node,
        "write,writev,pwrite64,sendto,sendmsg,fdatasync,fsync,rename,renameat,renameat2,mkdir,mkdirat",
    );
    let series = study_series(&fx, "STUDY_A");
    let sent: Vec<_> = series[..2].to_vec();
    send_study(node.opts.port, &sent, 1);
    assert!(
        wait_until(Duration::from_secs(60), || !dest.received().is_empty()),
        "no output delivered:\n{}",
        node.log_text()
    );
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: a signal to our own child; SIGINT makes strace detach and flush.
    unsafe {
        libc::kill(strace.id() as i32, libc::SIGINT);
    }
    let _ = strace.wait();
    let calls = parse(&std::fs::read_to_string(&trace).unwrap());
    assert!(
        calls.len() > 100,
        "trace too short: {} calls; strace said: {}",
        calls.len(),
        std::fs::read_to_string(&strace_log).unwrap_or_default()
    );

    let objects = node.state_dir.join("spool/objects");
    let mut checked = 0;
    for file in sent.iter().flatten() {
        let uid = sop_uid_of(file);
        let h = prima_node::store::hash::sha256_hex(uid.as_bytes());
        let dst = objects.join(&h[0..2]).join(format!("{h}.dcm"));
        let rsp = first_send_with(&calls, &uid)
            .unwrap_or_else(|| panic!("no C-STORE response for {uid} in the trace"));
        if let Err(e) = durable_before(&calls, &dst, rsp) {
            panic!("instance {uid} acknowledged before it was durable: {e}");
        }
        checked += 1;
    }
    let outbox = node.state_dir.join("outbox");
    for (uid, _) in dest.received() {
        let h = prima_node::store::hash::sha256_hex(uid.as_bytes());
        let dst = outbox.join(format!("{h}.dcm"));
        let send = first_send_with(&calls, &uid)
            .unwrap_or_else(|| panic!("no C-STORE of output {uid} in the trace"));
        if let Err(e) = durable_before(&calls, &dst, send) {
            panic!("output {uid} sent before it was durable: {e}");
        }
        checked += 1;
    }
    // The predictions and run record kept for audit, before the first output is sent.
    let (first_uid, study) = dest.received()[0].clone();
    let first_send = first_send_with(&calls, &first_uid).unwrap();
    let results = node.state_dir.join("results");
    let dir = results.join(prima_node::store::hash::sha256_hex(study.as_bytes()));
    for name in ["predictions.json", "run.json"] {
        if let Err(e) = durable_before(&calls, &dir.join(name), first_send) {
            panic!("{name} not durable before the first output was sent: {e}");
        }
        checked += 1;
    }
    let d = dir.to_string_lossy();
    let made = calls
        .iter()
        .find(|c| c.name.starts_with("mkdir") && ok(c) && c.args.contains(&format!("\"{d}\"")))
        .unwrap_or_else(|| panic!("no mkdir of {d}"));
    let r = results.to_string_lossy();
    assert!(
        calls.iter().any(|c| c.name == "fsync"
            && ok(c)
            && fd_path(c) == Some(r.as_ref())
            && c.start >= made.end
            && c.end <= first_send.start),
        "results/ not synced after {d} was created and before the first send"
    );
    eprintln!(
        "{checked} objects checked against {} traced calls",
        calls.len()
    );
}

/// The directories the node creates at its first start (state, spool, outbox, results and
/// the spool's shards) are each synced, and so is the directory that gained them, before
/// the node says it is ready: after a power loss the tree the first instance is renamed
/// into still exists.
#[test]
fn directories_created_at_first_start_are_synced_into_their_parents() {
    if !have_dcmtk() {
        return;
    }
    if !have_strace() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = dir.path().join("prima-node.toml");
    std::fs::write(&config, config_text(&NodeOpts::default(), &state)).unwrap();
    let trace = dir.path().join("trace.txt");
    let log = dir.path().join("node.log");
    let mut node = Command::new("strace")
        .args(["-f", "-qq", "-ttt", "-yy", "-o"])
        .arg(&trace)
        .args(["-e", "trace=mkdir,mkdirat,fsync", "--"])
        .arg(bin())
        .args(["serve", "--config"])
        .arg(&config)
        .env("PRIMA_NODE_FAKE_PROCESSOR", "1")
        .env("RUST_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let ready = wait_until(Duration::from_secs(60), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("prima-node ready"))
    });
    // SIGTERM to strace's tracee: the node stops as usual, then strace exits.
    let pid = children_of(node.id());
    for p in &pid {
        // SAFETY: a signal to a process this test started (through strace).
        unsafe {
            libc::kill(*p as i32, libc::SIGTERM);
        }
    }
    let _ = node.wait();
    assert!(
        ready,
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let calls = parse(&std::fs::read_to_string(&trace).unwrap());
    let synced_after = |path: &Path, after: f64| {
        let p = path.to_string_lossy();
        calls
            .iter()
            .any(|c| c.name == "fsync" && ok(c) && fd_path(c) == Some(&p) && c.start >= after)
    };
    let shard = state.join("spool/objects/00");
    for d in [
        state.clone(),
        state.join("spool"),
        state.join("spool/tmp"),
        state.join("spool/objects"),
        shard,
        state.join("outbox"),
        state.join("results"),
    ] {
        let p = d.to_string_lossy();
        let made = calls
            .iter()
            .find(|c| c.name.starts_with("mkdir") && ok(c) && c.args.contains(&format!("\"{p}\"")))
            .unwrap_or_else(|| panic!("no mkdir of {p}"));
        assert!(
            synced_after(&d, made.end),
            "{p} not synced after it was made"
        );
        let parent = d.parent().unwrap();
        assert!(
            synced_after(parent, made.end),
            "{} not synced after {p} was added to it",
            parent.display()
        );
    }
}

/// Retention removes received instances only after its intent is durable, and forgets
/// them only after their removal is: the eviction's intent (a WAL frame naming the files)
/// is fsynced before the first file is unlinked, and every shard directory that lost a
/// file is fsynced before the commit that deletes the rows (the frame with the eviction's
/// audit row). Without the first, a power loss right after the unlinks leaves rows whose
/// files are gone and no intent to finish; without the second, files come back that no
/// row names, and the rescan takes them for new arrivals.
#[test]
fn an_eviction_is_recorded_durably_before_files_go_and_their_removal_before_rows_go() {
    if !have_dcmtk() || !have_strace() {
        return;
    }
    let o = NodeOpts {
        quiet_s: 0.5,
        force_complete_s: 1.0,
        retention_toml: Some(
            "evict_below_free_mb = 2\nevict_until_free_mb = 2\nkeep_days = 0.00005".into(),
        ),
        ..NodeOpts::default()
    };
    let dest = StoreScp::start(o.dest_port);
    let node = Node::start(o);
    let (mut strace, trace, _) = attach_strace(
        &node,
        "write,writev,pwrite64,sendto,sendmsg,fdatasync,fsync,unlink,unlinkat",
    );
    let dir = node.state_dir.parent().unwrap().join("study");
    let out = Command::new(bin())
        .args([
            "synth-study",
            "--seed",
            "5",
            "--instances",
            "8",
            "--series",
            "2",
        ])
        .args(["--rows", "64", "--cols", "64", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut files = walk_files(&dir);
    files.sort();
    let o = storescu(node.opts.port, SCU_AE, &files);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        wait_until(Duration::from_secs(60), || node
            .log_text()
            .contains("removed by the retention policy")),
        "not evicted:\n{}",
        node.log_text()
    );
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: a signal to our own child; SIGINT makes strace detach and flush.
    unsafe {
        libc::kill(strace.id() as i32, libc::SIGINT);
    }
    let _ = strace.wait();
    assert!(!dest.received().is_empty());
    let calls = parse(&std::fs::read_to_string(&trace).unwrap());
    let wal = node.state_dir.join("state.db-wal");
    let wal = wal.to_string_lossy();
    let on_wal = |c: &Call| fd_path(c) == Some(wal.as_ref());
    let objects = node.state_dir.join("spool/objects");
    let paths: Vec<String> = files
        .iter()
        .map(|f| {
            let h = prima_node::store::hash::sha256_hex(sop_uid_of(f).as_bytes());
            objects
                .join(&h[0..2])
                .join(format!("{h}.dcm"))
                .to_string_lossy()
                .to_string()
        })
        .collect();
    let unlinks: Vec<&Call> = paths
        .iter()
        .map(|p| {
            calls
                .iter()
                .find(|c| c.name.starts_with("unlink") && ok(c) && c.args.contains(p.as_str()))
                .unwrap_or_else(|| panic!("{p} never unlinked"))
        })
        .collect();
    let first_unlink = unlinks.iter().map(|c| c.start).fold(f64::MAX, f64::min);
    let last_unlink = unlinks.iter().map(|c| c.end).fold(0.0, f64::max);
    // The intent: the last WAL write naming an evicted file before the first unlink,
    // then a sync of the WAL, all before that unlink.
    let name = paths[0].rsplit('/').next().unwrap();
    let intent = calls
        .iter()
        .rfind(|c| {
            on_wal(c) && c.name.contains("write") && c.end <= first_unlink && c.args.contains(name)
        })
        .expect("no WAL write naming the files before they were unlinked");
    assert!(
        calls
            .iter()
            .any(|c| matches!(c.name.as_str(), "fsync" | "fdatasync")
                && on_wal(c)
                && ok(c)
                && c.start >= intent.end
                && c.end <= first_unlink),
        "the eviction's intent was not synced before its first file was unlinked"
    );
    // The end: the WAL frame carrying the eviction's audit row, after every shard
    // directory that lost a file was synced.
    let end = calls
        .iter()
        .find(|c| {
            on_wal(c)
                && c.name.contains("write")
                && c.start >= last_unlink
                && c.args.contains("reason=age instances=8")
        })
        .expect("no WAL write of the eviction's end");
    let shards: BTreeSet<String> = paths
        .iter()
        .map(|p| p.rsplit_once('/').unwrap().0.to_string())
        .collect();
    for d in &shards {
        assert!(
            calls.iter().any(|c| c.name == "fsync"
                && ok(c)
                && fd_path(c) == Some(d.as_str())
                && c.start >= last_unlink
                && c.end <= end.start),
            "{d} not synced between the unlinks and the rows' removal"
        );
    }
    eprintln!(
        "eviction of {} files in {} shards checked against {} traced calls",
        paths.len(),
        shards.len(),
        calls.len()
    );
}
