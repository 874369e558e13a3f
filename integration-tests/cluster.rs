//! The cluster (`[cluster]`, docs/cluster.md) on loopback: three `nats-server`s, ingest
//! nodes and workers as real `prima-node serve` processes, a DCMTK `storescp` as the PACS.
mod common;
mod fixtures;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::nats::{have_nats_server, NatsCluster};
use common::{Node, NodeOpts, StoreScp};
use dicom_dictionary_std::tags;
use prima_node::synth::{write_study, Plane, SynthSeries, SynthStudy};

fn cluster_toml(nats: &NatsCluster, role: &str, name: &str, max_deliver: u32) -> String {
    format!(
        "\n[cluster]\nrole = \"{role}\"\nservers = [{}]\nname = \"{name}\"\nack_wait_s = 3\nclaim_lease_s = 10\nmax_deliver = {max_deliver}\n",
        nats.urls()
    )
}

/// Every node of these tests reports as one device, so outputs compare across nodes.
const SERIAL: &str = "PRIMA-TEST-1";

/// A node of the cluster; `model` = the converted fixture model, `None` = the stand-in.
fn member(
    nats: &NatsCluster,
    role: &str,
    name: &str,
    pacs_port: u16,
    model: Option<&Path>,
) -> Node {
    Node::start(NodeOpts {
        model_dir: model.map(Path::to_path_buf),
        ..member_opts(nats, role, name, pacs_port, 3)
    })
}

/// A member's options: the cluster section, the shared device identity, the PACS.
fn member_opts(
    nats: &NatsCluster,
    role: &str,
    name: &str,
    pacs_port: u16,
    max_deliver: u32,
) -> NodeOpts {
    NodeOpts {
        dest_port: pacs_port,
        extra_toml: cluster_toml(nats, role, name, max_deliver),
        serial_number: Some(SERIAL.into()),
        ..NodeOpts::default()
    }
}

fn ready(node: &Node) -> bool {
    node.log_text().contains("connected to the cluster")
}

fn wait_connected(nodes: &[&Node]) {
    for n in nodes {
        assert!(
            common::wait_until(Duration::from_secs(60), || ready(n)),
            "not connected to the cluster:\n{}",
            n.log_text()
        );
    }
}

/// Every attribute of a received object except the content date/time, which is when it
/// was made.
type Attributes = Vec<(dicom_core::Tag, Vec<u8>)>;

fn comparable(o: &dicom_object::DefaultDicomObject) -> Attributes {
    let mut v = Vec::new();
    for e in o.iter() {
        let t = e.header().tag;
        if t == tags::CONTENT_DATE || t == tags::CONTENT_TIME {
            continue;
        }
        v.push((t, format!("{:?}", e.value()).into_bytes()));
    }
    v
}

fn by_sop(pacs: &StoreScp) -> Vec<(String, Attributes)> {
    let mut v: Vec<_> = pacs
        .received_objects()
        .iter()
        .map(|(sop, _, o)| (sop.clone(), comparable(o)))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn spool_files(n: &Node) -> Vec<PathBuf> {
    n.spool_objects()
}

#[test]
fn a_study_split_over_two_ingest_nodes_gives_the_single_nodes_sr_and_kos_once() {
    let Some(root) = fixtures::reference_dir() else {
        return;
    };
    if !common::have_dcmtk() || !have_nats_server() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let model = fixtures::convert_fixture_model(&root, &tmp.path().join("model"));
    let series = common::study_series(&root, "STUDY_A");
    let study_uid = common::study_uid_of(&series[0][0]);

    // The single node, for reference.
    let single_pacs_port = common::free_port();
    let single_pacs = StoreScp::start(single_pacs_port);
    let single = Node::start(NodeOpts {
        dest_port: single_pacs_port,
        model_dir: Some(model.clone()),
        serial_number: Some(SERIAL.into()),
        ..NodeOpts::default()
    });
    common::send_study(single.opts.port, &series, 3);
    assert!(
        common::wait_until(Duration::from_secs(240), || single_pacs.received().len()
            >= 2),
        "single node gave no results:\n{}",
        single.log_text()
    );
    drop(single);

    let nats = NatsCluster::start();
    let pacs_port = common::free_port();
    let pacs = StoreScp::start(pacs_port);
    let a = member(&nats, "ingest", "ingest-a", pacs_port, None);
    let b = member(&nats, "ingest", "ingest-b", pacs_port, None);
    let w1 = member(&nats, "worker", "worker-1", pacs_port, Some(&model));
    let w2 = member(&nats, "worker", "worker-2", pacs_port, Some(&model));
    wait_connected(&[&a, &b, &w1, &w2]);
    let half = series.len() / 2;
    let (to_a, to_b) = series.split_at(half);
    std::thread::scope(|s| {
        s.spawn(|| common::send_study(a.opts.port, to_a, 2));
        s.spawn(|| common::send_study(b.opts.port, to_b, 2));
    });
    let ok = common::wait_until(Duration::from_secs(240), || pacs.received().len() >= 2);
    assert!(
        ok,
        "no results at the PACS:\n== a\n{}\n== b\n{}\n== w1\n{}\n== w2\n{}",
        a.log_text(),
        b.log_text(),
        w1.log_text(),
        w2.log_text()
    );
    // Time for a duplicate to show up, if one were coming.
    std::thread::sleep(Duration::from_secs(3));
    let got = by_sop(&pacs);
    let want = by_sop(&single_pacs);
    assert_eq!(
        got.len(),
        2,
        "exactly one SR and one KOS: {:?}",
        got.iter().map(|g| &g.0).collect::<Vec<_>>()
    );
    assert!(pacs.received().iter().all(|(_, s)| *s == study_uid));
    assert_eq!(
        got.iter().map(|g| &g.0).collect::<Vec<_>>(),
        want.iter().map(|g| &g.0).collect::<Vec<_>>(),
        "the single node's output UIDs"
    );
    for ((sop, g), (_, w)) in got.iter().zip(&want) {
        let diff: Vec<String> = g
            .iter()
            .filter(|e| !w.contains(e))
            .map(|(t, v)| format!("{t}: {}", String::from_utf8_lossy(v)))
            .chain(
                w.iter()
                    .filter(|e| !g.contains(e))
                    .map(|(t, v)| format!("single {t}: {}", String::from_utf8_lossy(v))),
            )
            .collect();
        assert!(
            diff.is_empty(),
            "output {sop} differs from the single node's:\n{}",
            diff.join("\n")
        );
    }
    // One job ran, on one worker; the local copies are gone from both ingest nodes.
    let runs = [&w1, &w2]
        .iter()
        .map(|w| {
            w.log_text()
                .matches("study processed: results in the cluster")
                .count()
        })
        .sum::<usize>();
    assert_eq!(runs, 1, "one model run");
    assert!(
        spool_files(&a).is_empty() && spool_files(&b).is_empty(),
        "local copies removed after replication"
    );
    let status = a.status();
    assert!(status.contains("cluster: node ingest-a"), "{status}");
    assert!(status.contains("results: delivered 1"), "{status}");
}

/// A small synthetic study (two series): its UID and its files by series.
fn small_study(dir: &Path, seed: u64) -> (String, Vec<Vec<PathBuf>>) {
    let s = SynthStudy {
        series: vec![
            SynthSeries::new(2, "AX T2 FLAIR", Plane::Axial, 64, 64, 6),
            SynthSeries::new(3, "COR T1", Plane::Coronal, 64, 64, 6),
        ],
        ..SynthStudy::brain(seed)
    };
    write_synth(&s, dir)
}

/// Write a synthetic study: its UID and its files by series (one folder each).
fn write_synth(s: &SynthStudy, dir: &Path) -> (String, Vec<Vec<PathBuf>>) {
    let files = write_study(s, dir).expect("write synthetic study");
    let uid = common::study_uid_of(&files[0]);
    let mut by_series: std::collections::BTreeMap<PathBuf, Vec<PathBuf>> = Default::default();
    for f in files {
        by_series
            .entry(f.parent().unwrap().to_owned())
            .or_default()
            .push(f);
    }
    (uid, by_series.into_values().collect())
}

/// A stand-in member whose model takes `delay_ms` per study.
fn slow_member(
    nats: &NatsCluster,
    role: &str,
    name: &str,
    pacs_port: u16,
    delay_ms: u64,
    max_deliver: u32,
) -> Node {
    Node::start(NodeOpts {
        env: vec![("PRIMA_NODE_FAKE_DELAY_MS".into(), delay_ms.to_string())],
        ..member_opts(nats, role, name, pacs_port, max_deliver)
    })
}

fn dump(nodes: &[(&str, &Node)]) -> String {
    nodes
        .iter()
        .map(|(n, node)| format!("== {n}\n{}", node.log_text()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Each study UID with the number of objects the PACS received for it.
fn received_by_study(pacs: &StoreScp) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for (_, study) in pacs.received() {
        *m.entry(study).or_insert(0) += 1;
    }
    m
}

/// The PACS has exactly one stand-in SR for each of `studies`, and nothing else, and still
/// has after a while (a duplicate would show up meanwhile).
fn assert_exactly_once(pacs: &StoreScp, studies: &[&str], logs: &str) {
    let all = || {
        let m = received_by_study(pacs);
        studies.iter().all(|s| m.contains_key(*s))
    };
    assert!(
        common::wait_until(Duration::from_secs(120), all),
        "results missing at the PACS (got {:?}):\n{logs}",
        received_by_study(pacs)
    );
    std::thread::sleep(Duration::from_secs(4));
    let m = received_by_study(pacs);
    let want: std::collections::BTreeMap<String, usize> =
        studies.iter().map(|s| (s.to_string(), 1)).collect();
    assert_eq!(m, want, "one SR per study, each once:\n{logs}");
    let sops: Vec<String> = pacs.received().into_iter().map(|(sop, _)| sop).collect();
    let mut unique = sops.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(sops.len(), unique.len(), "no SOP Instance UID twice");
}

fn which_holds_the_job<'a>(workers: &[(&'a str, &Node)]) -> Option<&'a str> {
    workers
        .iter()
        .find(|(_, w)| w.log_text().contains("processing study"))
        .map(|(n, _)| *n)
}

#[test]
fn a_worker_killed_mid_model_loses_its_job_to_the_other_and_the_result_lands_once() {
    if !common::have_dcmtk() || !have_nats_server() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (uid, series) = small_study(tmp.path(), 901);
    let nats = NatsCluster::start();
    let pacs_port = common::free_port();
    let pacs = StoreScp::start(pacs_port);
    let http_port = common::free_port();
    let mut opts = member_opts(&nats, "ingest", "ingest-a", pacs_port, 3);
    opts.extra_toml.push_str(&format!(
        "\n[http]\nlisten = \"127.0.0.1:{http_port}\"\nopen_reads = true\n"
    ));
    let a = Node::start(opts);
    let mut w1 = slow_member(&nats, "worker", "worker-1", pacs_port, 6000, 3);
    let mut w2 = slow_member(&nats, "worker", "worker-2", pacs_port, 6000, 3);
    wait_connected(&[&a, &w1, &w2]);
    common::send_study(a.opts.port, &series, 2);
    let mut holder = None;
    assert!(
        common::wait_until(Duration::from_secs(60), || {
            holder = which_holds_the_job(&[("worker-1", &w1), ("worker-2", &w2)]);
            holder.is_some()
        }),
        "no worker took the job:\n{}",
        dump(&[("a", &a), ("w1", &w1), ("w2", &w2)])
    );
    // Mid-model: the stand-in takes 6 s; kill the worker node (its model process dies
    // with it).
    std::thread::sleep(Duration::from_millis(1500));
    let (killed, other) = if holder == Some("worker-1") {
        w1.sigkill();
        (&w1, &w2)
    } else {
        w2.sigkill();
        (&w2, &w1)
    };
    assert!(
        pacs.received().is_empty(),
        "nothing delivered before the kill"
    );
    let logs = || dump(&[("a", &a), ("killed", killed), ("other", other)]);
    assert_exactly_once(&pacs, &[&uid], &logs());
    assert!(
        other
            .log_text()
            .contains("study processed: results in the cluster"),
        "the other worker finished it:\n{}",
        logs()
    );
    assert!(
        !killed.log_text().contains("study processed"),
        "the killed worker never finished:\n{}",
        logs()
    );
    let status = a.status();
    assert!(status.contains("results: delivered 1"), "{status}");
    // The status page shows the same view (refreshed every 5 s).
    let base = format!("http://127.0.0.1:{http_port}");
    let mut api = String::new();
    assert!(
        common::wait_until(Duration::from_secs(15), || {
            api = curl(&format!("{base}/api/cluster"));
            api.contains("\"delivered\":1")
        }),
        "/api/cluster: {api}"
    );
    let v: serde_json::Value = serde_json::from_str(&api).unwrap();
    assert_eq!(v["view"]["node"], "ingest-a", "{api}");
    assert_eq!(v["view"]["role"], "ingest", "{api}");
    assert_eq!(v["view"]["studies"]["done"], 1, "{api}");
    let page = curl(&format!("{base}/cluster"));
    assert!(
        page.contains("ingest-a (role ingest)") && page.contains("delivered 1"),
        "{page}"
    );
}

/// A page's body, fetched with curl.
fn curl(url: &str) -> String {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", url])
        .output()
        .expect("run curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_nats_server_killed_during_ingest_and_during_processing_loses_nothing() {
    if !common::have_dcmtk() || !have_nats_server() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (uid1, series1) = small_study(&tmp.path().join("s1"), 911);
    let (uid2, series2) = small_study(&tmp.path().join("s2"), 912);
    let mut nats = NatsCluster::start();
    let pacs_port = common::free_port();
    let pacs = StoreScp::start(pacs_port);
    let a = slow_member(&nats, "ingest", "ingest-a", pacs_port, 0, 3);
    let b = slow_member(&nats, "ingest", "ingest-b", pacs_port, 0, 3);
    let w = slow_member(&nats, "worker", "worker-1", pacs_port, 4000, 3);
    wait_connected(&[&a, &b, &w]);

    // During ingest: one series in, a server down, the other series in.
    common::send_study(a.opts.port, &series1[..1], 1);
    assert!(common::wait_until(Duration::from_secs(30), || a
        .log_text()
        .contains("instances replicated to the cluster")));
    nats.sigkill(0);
    common::send_study(b.opts.port, &series1[1..], 1);
    let logs = |nats: &NatsCluster| {
        format!(
            "{}\n== nats\n{}",
            dump(&[("a", &a), ("b", &b), ("w", &w)]),
            nats.logs()
        )
    };
    assert!(
        common::wait_until(Duration::from_secs(90), || !pacs.received().is_empty()),
        "no result with one server down:\n{}",
        logs(&nats)
    );

    // During processing: the server back, then another one down while the model runs.
    nats.start_server(0);
    std::thread::sleep(Duration::from_secs(3));
    let before = w.log_text().matches("processing study").count();
    common::send_study(a.opts.port, &series2, 2);
    assert!(
        common::wait_until(Duration::from_secs(60), || w
            .log_text()
            .matches("processing study")
            .count()
            > before),
        "second study not taken:\n{}",
        logs(&nats)
    );
    nats.sigkill(1);
    assert_exactly_once(&pacs, &[&uid1, &uid2], &logs(&nats));
    assert!(
        a.spool_objects().is_empty() && b.spool_objects().is_empty(),
        "every local copy replicated and removed"
    );
}

#[test]
fn an_ingest_node_killed_before_replicating_replicates_after_its_restart() {
    if !common::have_dcmtk() || !have_nats_server() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (uid, series) = small_study(tmp.path(), 921);
    let mut nats = NatsCluster::start();
    let pacs_port = common::free_port();
    let pacs = StoreScp::start(pacs_port);
    // The whole cluster unreachable: the node acknowledges from its local spool and
    // cannot replicate.
    for i in 0..3 {
        nats.sigkill(i);
    }
    let mut a = slow_member(&nats, "ingest", "ingest-a", pacs_port, 0, 3);
    common::send_study(a.opts.port, &series, 2);
    let n: usize = series.iter().map(Vec::len).sum();
    assert_eq!(
        a.spool_objects().len(),
        n,
        "every instance acknowledged is spooled"
    );
    a.sigkill();
    for i in 0..3 {
        nats.start_server(i);
    }
    a.restart();
    let w = slow_member(&nats, "worker", "worker-1", pacs_port, 0, 3);
    let logs = || {
        format!(
            "{}\n== nats\n{}",
            dump(&[("a", &a), ("w", &w)]),
            nats.logs()
        )
    };
    assert_exactly_once(&pacs, &[&uid], &logs());
    assert!(
        a.spool_objects().is_empty(),
        "replicated, then removed locally"
    );
    let replicated: usize = a
        .log_text()
        .lines()
        .filter(|l| l.contains("instances replicated to the cluster"))
        .filter_map(|l| {
            l.split("instances=")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|v| v.parse::<usize>().ok())
        })
        .sum();
    assert_eq!(replicated, n, "each instance replicated once:\n{}", logs());
}

#[test]
fn a_job_every_worker_dies_on_fails_with_its_reason_and_the_next_study_runs() {
    if !common::have_dcmtk() || !have_nats_server() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (uid, series) = small_study(&tmp.path().join("s1"), 931);
    let (uid2, series2) = small_study(&tmp.path().join("s2"), 932);
    let nats = NatsCluster::start();
    let pacs_port = common::free_port();
    let pacs = StoreScp::start(pacs_port);
    let a = slow_member(&nats, "ingest", "ingest-a", pacs_port, 0, 2);
    let mut w1 = slow_member(&nats, "worker", "worker-1", pacs_port, 60_000, 2);
    let mut w2 = slow_member(&nats, "worker", "worker-2", pacs_port, 60_000, 2);
    wait_connected(&[&a, &w1, &w2]);
    common::send_study(a.opts.port, &series, 2);
    // Each delivery's worker dies on the job (as on an input that takes the machine down).
    let first = {
        let mut holder = None;
        assert!(
            common::wait_until(Duration::from_secs(60), || {
                holder = which_holds_the_job(&[("worker-1", &w1), ("worker-2", &w2)]);
                holder.is_some()
            }),
            "no worker took the job:\n{}",
            dump(&[("a", &a), ("w1", &w1), ("w2", &w2)])
        );
        holder.unwrap()
    };
    let (dead, next) = if first == "worker-1" {
        (&mut w1, &mut w2)
    } else {
        (&mut w2, &mut w1)
    };
    dead.sigkill();
    assert!(
        common::wait_until(Duration::from_secs(60), || next
            .log_text()
            .contains("processing study")),
        "the job was not delivered again:\n{}",
        next.log_text()
    );
    next.sigkill();
    // A healthy worker comes back: the job is not delivered a third time (JetStream
    // announces that it reached max_deliver when the worker asks for work) and fails.
    w1.opts.env = vec![("PRIMA_NODE_FAKE_DELAY_MS".into(), "0".into())];
    w1.restart();
    let logs = || dump(&[("a", &a), ("w1", &w1), ("w2", &w2)]);
    assert!(
        common::wait_until(Duration::from_secs(60), || a.status().contains(&format!(
            "failed: {uid}: no worker finished it in 2 deliveries"
        ))),
        "the study is not marked failed:\n{}\n{}",
        a.status(),
        logs()
    );
    assert!(
        pacs.received().is_empty(),
        "nothing delivered for a failed study"
    );
    // The healthy worker takes the next study.
    common::send_study(a.opts.port, &series2, 2);
    assert_exactly_once(
        &pacs,
        &[&uid2],
        &dump(&[("a", &a), ("w1", &w1), ("w2", &w2)]),
    );
}

/// A log line's time of day in seconds (its leading RFC 3339 timestamp).
fn log_secs(line: &str) -> Option<f64> {
    let t = line
        .split_whitespace()
        .next()?
        .split('T')
        .nth(1)?
        .trim_end_matches('Z');
    let mut parts = t.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let sec: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + sec)
}

/// Median of the `ms=` values on the log lines that contain `marker`.
fn logged_ms(logs: &[String], marker: &str) -> Vec<u64> {
    let mut v: Vec<u64> = logs
        .iter()
        .flat_map(|l| l.lines())
        .filter(|l| l.contains(marker))
        .filter_map(|l| {
            l.split(" ms=")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|x| x.parse().ok())
        })
        .collect();
    v.sort();
    v
}

/// Send every study to `ports` (study i to ports[i % len]) one after the other, and wait
/// until the PACS has `outputs_per_study` objects of each. Returns the seconds from the
/// first send to the last result.
fn run_batch(
    pacs: &StoreScp,
    ports: &[u16],
    studies: &[(String, Vec<Vec<PathBuf>>)],
    outputs_per_study: usize,
) -> f64 {
    let t0 = std::time::Instant::now();
    for (i, (_, series)) in studies.iter().enumerate() {
        common::send_study(ports[i % ports.len()], series, 2);
    }
    let done = common::wait_until(Duration::from_secs(3600), || {
        let m = received_by_study(pacs);
        studies
            .iter()
            .all(|(uid, _)| m.get(uid).copied().unwrap_or(0) >= outputs_per_study)
    });
    assert!(
        done,
        "not every study got its results: {:?}",
        received_by_study(pacs)
    );
    t0.elapsed().as_secs_f64()
}

/// Benchmark (scripts/bench-cluster.sh; never in CI): studies per hour through the single
/// node, and through a cluster (3 NATS servers, 1 ingest node) with 1 and with 2 workers,
/// all with the fixture model on this machine, in one run; per-study costs for sizing.
#[test]
#[ignore]
fn cluster_throughput() {
    let Some(root) = fixtures::reference_dir() else {
        return;
    };
    assert!(common::have_dcmtk() && have_nats_server());
    let n: usize = std::env::var("BENCH_STUDIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let tmp = tempfile::tempdir().unwrap();
    let model = fixtures::convert_fixture_model(&root, &tmp.path().join("model"));
    // A typical small protocol per study: 4 series, 20-24 slices of 192-256 pixels.
    let batch = |tag: u64| -> Vec<(String, Vec<Vec<PathBuf>>)> {
        (0..n as u64)
            .map(|i| {
                let dir = tmp.path().join(format!("b{tag}-{i}"));
                write_synth(&SynthStudy::brain(tag * 1000 + i), &dir)
            })
            .collect()
    };
    let bytes_per_study = {
        let b = batch(99);
        let total: u64 = b
            .iter()
            .flat_map(|(_, s)| s.iter().flatten())
            .map(|f| std::fs::metadata(f).unwrap().len())
            .sum();
        total / n as u64
    };
    let instances_per_study = batch(98)[0].1.iter().map(Vec::len).sum::<usize>();
    let mut rows = Vec::new();

    // The single node: the reference.
    {
        let pacs_port = common::free_port();
        let pacs = StoreScp::start(pacs_port);
        let node = Node::start(NodeOpts {
            dest_port: pacs_port,
            model_dir: Some(model.clone()),
            ..NodeOpts::default()
        });
        let secs = run_batch(&pacs, &[node.opts.port], &batch(1), 2);
        let ms = logged_ms(&[node.log_text()], "study processed");
        rows.push(("single node".to_string(), secs, ms));
    }
    // The cluster: the studies are received, replicated and queued first, then the
    // workers start, so the time measured is the workers draining the queue (fetch,
    // model, publish) and the delivery, not how fast storescu sends.
    for workers in [1usize, 2] {
        let nats = NatsCluster::start();
        let pacs_port = common::free_port();
        let pacs = StoreScp::start(pacs_port);
        let ingest = member(&nats, "ingest", "ingest-a", pacs_port, None);
        wait_connected(&[&ingest]);
        let studies = batch(1 + workers as u64);
        for (_, series) in &studies {
            common::send_study(ingest.opts.port, series, 2);
        }
        assert!(
            common::wait_until(Duration::from_secs(600), || ingest
                .log_text()
                .matches("job published to the cluster")
                .count()
                >= n),
            "jobs not published:\n{}",
            ingest.log_text()
        );
        let ws: Vec<Node> = (0..workers)
            .map(|i| {
                member(
                    &nats,
                    "worker",
                    &format!("worker-{i}"),
                    pacs_port,
                    Some(&model),
                )
            })
            .collect();
        let done = common::wait_until(Duration::from_secs(3600), || {
            let m = received_by_study(&pacs);
            studies
                .iter()
                .all(|(uid, _)| m.get(uid).copied().unwrap_or(0) >= 2)
        });
        assert!(done, "not every study got its results");
        std::thread::sleep(Duration::from_secs(1));
        let logs: Vec<String> = ws.iter().map(Node::log_text).collect();
        let start = logs
            .iter()
            .flat_map(|l| l.lines())
            .filter(|l| l.contains("processing study"))
            .filter_map(log_secs)
            .fold(f64::MAX, f64::min);
        let end = ingest
            .log_text()
            .lines()
            .filter(|l| l.contains("result delivered"))
            .filter_map(log_secs)
            .fold(0.0, f64::max);
        let per_worker: Vec<usize> = logs
            .iter()
            .map(|l| l.matches("study processed: results in the cluster").count())
            .collect();
        let ms = logged_ms(&logs, "study processed: results in the cluster");
        rows.push((
            format!("cluster, {workers} worker(s) {per_worker:?}"),
            end - start,
            ms,
        ));
    }
    println!(
        "\ncluster throughput: {n} studies of {instances_per_study} instances ({:.1} MB) each, fixture model, this machine ({} cores)",
        bytes_per_study as f64 / 1e6,
        std::thread::available_parallelism().map(|p| p.get()).unwrap_or(0)
    );
    println!("single node: first send to last result (bound by how fast the studies arrive);");
    println!("cluster: first job taken to last result delivered, the queue full at the start;");
    println!(
        "busy ms: median time a study held the model process (cluster: with fetch and publish)"
    );
    println!(
        "{:<32} {:>9} {:>13} {:>8} {:>16}",
        "setup", "seconds", "studies/hour", "busy ms", "ratio (busy ms)"
    );
    let reference_ms = rows[0]
        .2
        .get(rows[0].2.len() / 2)
        .copied()
        .unwrap_or(1)
        .max(1);
    for (name, secs, ms) in &rows {
        let per_hour = n as f64 / secs * 3600.0;
        let median = ms.get(ms.len() / 2).copied().unwrap_or(0);
        println!(
            "{name:<32} {secs:>9.1} {per_hour:>13.0} {median:>8} {:>16.2}",
            median as f64 / reference_ms as f64
        );
    }
    println!("bytes per study: {bytes_per_study}");
}

#[test]
fn a_node_with_role_all_is_a_whole_cluster_and_a_second_ingest_node_shares_its_work() {
    if !common::have_dcmtk() || !have_nats_server() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (uid1, series1) = small_study(&tmp.path().join("s1"), 941);
    let (uid2, series2) = small_study(&tmp.path().join("s2"), 942);
    let nats = NatsCluster::start();
    let pacs_port = common::free_port();
    let pacs = StoreScp::start(pacs_port);
    // One process receives, runs the model and delivers.
    let all = slow_member(&nats, "all", "all-in-one", pacs_port, 0, 3);
    wait_connected(&[&all]);
    common::send_study(all.opts.port, &series1, 2);
    let logs = || dump(&[("all", &all)]);
    assert_exactly_once(&pacs, &[&uid1], &logs());
    assert!(all
        .log_text()
        .contains("study processed: results in the cluster"));
    // An ingest-only node joins; its study is run by the "all" node's worker.
    let b = slow_member(&nats, "ingest", "ingest-b", pacs_port, 0, 3);
    wait_connected(&[&b]);
    common::send_study(b.opts.port, &series2, 2);
    assert_exactly_once(&pacs, &[&uid1, &uid2], &dump(&[("all", &all), ("b", &b)]));
    assert!(
        !b.log_text().contains("study processed"),
        "an ingest node runs no model"
    );
}

/// Hostile input on the cluster's own paths, then through processing: garbage and
/// impossible jobs in the queue, unparsable study and result records in the buckets, and a
/// damaged study (no PixelSpacing, a lone slice, an absurd frame count) sent to an ingest
/// node and run by a worker with the small demo model. Each is answered with a log line or
/// a failure reason; the damaged study gets its SR and KOS; the nodes stay up and the next,
/// good study gets its results once.
#[test]
fn hostile_cluster_messages_and_a_damaged_study_leave_the_cluster_working() {
    if !common::have_dcmtk() || !have_nats_server() {
        return;
    }
    use dicom_core::{DataElement, PrimitiveValue as V, VR};
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    let o = std::process::Command::new(common::bin())
        .args(["model", "demo", "--size", "small", "--out"])
        .arg(&model)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let nats = NatsCluster::start();
    let pacs_port = common::free_port();
    let pacs = StoreScp::start(pacs_port);
    let a = member(&nats, "ingest", "ingest-a", pacs_port, None);
    let mut w = member(&nats, "worker", "worker-1", pacs_port, Some(&model));
    wait_connected(&[&a, &w]);

    // The cluster's inputs, written as any NATS client could.
    let url = format!("nats://127.0.0.1:{}", nats.servers[0].client_port);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = async_nats::connect(url).await.unwrap();
        let js = async_nats::jetstream::new(c);
        let impossible = serde_json::json!({
            "study_uid": "1.2.826.0.1.999",
            "input_hash": "00".repeat(32),
            "instances": {"1.2.826.0.1.999.1": {
                "series_uid": "1.2.826.0.1.999.2",
                "sop_class_uid": "1.2.840.10008.5.1.4.1.1.4",
                "modality": "MR",
                "content_hash": "blake3:00",
                "object": "no/such/object",
                "size": 1,
                "node": "nobody",
                "received_ms": 0
            }},
            "predecessors": [],
            "forced": false
        });
        for payload in [b"not a job {".to_vec(), impossible.to_string().into_bytes()] {
            js.publish("prima_jobs.study", payload.into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
        let studies = js.get_key_value("prima-studies").await.unwrap();
        studies.put("s.1.2.3.999", "{{{".into()).await.unwrap();
        let results = js.get_key_value("prima-results").await.unwrap();
        results.put("r.1.2.3.999.ab", "[]".into()).await.unwrap();
    });
    assert!(
        common::wait_until(Duration::from_secs(60), || w
            .log_text()
            .contains("unreadable job message: dropped")),
        "{}",
        w.log_text()
    );
    assert!(
        common::wait_until(Duration::from_secs(60), || a
            .status()
            .contains("failed: 1.2.826.0.1.999:")),
        "the impossible job is failed with its reason:\n{}\n{}",
        a.status(),
        w.log_text()
    );
    assert!(a.log_text().contains("unreadable cluster record ignored"));

    // A damaged study goes all the way through: replicated, decided, run, delivered.
    let mut by_series: Vec<Vec<PathBuf>> = {
        let s = SynthStudy {
            series: vec![
                SynthSeries::new(2, "AX T2 FLAIR", Plane::Axial, 64, 64, 8),
                SynthSeries::new(3, "AX T1", Plane::Axial, 64, 64, 8),
                SynthSeries::new(4, "COR T2", Plane::Coronal, 64, 64, 8),
                SynthSeries::new(5, "SAG T1", Plane::Sagittal, 64, 64, 8),
            ],
            ..SynthStudy::brain(951)
        };
        write_synth(&s, &tmp.path().join("bad")).1
    };
    for f in &by_series[0] {
        let mut o = dicom_object::open_file(f).unwrap();
        o.remove_element(tags::PIXEL_SPACING);
        o.write_to_file(f).unwrap();
    }
    by_series[1].truncate(1);
    let mut o = dicom_object::open_file(&by_series[2][0]).unwrap();
    o.put(DataElement::new(
        tags::NUMBER_OF_FRAMES,
        VR::IS,
        V::from("2147483647"),
    ));
    o.write_to_file(&by_series[2][0]).unwrap();
    let bad_uid = common::study_uid_of(&by_series[0][0]);
    common::send_study(a.opts.port, &by_series, 2);
    let logs = || dump(&[("a", &a), ("w", &w)]);
    assert!(
        common::wait_until(Duration::from_secs(180), || received_by_study(&pacs)
            .get(&bad_uid)
            .copied()
            .unwrap_or(0)
            >= 2),
        "no SR and KOS for the damaged study:\n{}",
        logs()
    );
    // The next, good study.
    let (good_uid, good) = small_study(&tmp.path().join("good"), 952);
    common::send_study(a.opts.port, &good, 2);
    assert!(
        common::wait_until(Duration::from_secs(180), || received_by_study(&pacs)
            .get(&good_uid)
            .copied()
            .unwrap_or(0)
            >= 2),
        "no results for the good study:\n{}",
        logs()
    );
    std::thread::sleep(Duration::from_secs(3));
    let m = received_by_study(&pacs);
    assert_eq!(m.get(&bad_uid), Some(&2), "{m:?}");
    assert_eq!(m.get(&good_uid), Some(&2), "{m:?}");
    assert_eq!(m.len(), 2, "nothing for the garbage: {m:?}");
    assert!(w.is_running(), "the worker node is still up");
}
