//! The cluster under network partitions (issue 33): the servers' routes and every node's
//! NATS connections go through fault-injecting proxies on loopback
//! (`common::faults::FaultProxy`, `NatsCluster::start_partitionable`), as does each ingest
//! node's path to the PACS. Processes stay alive while they cannot hear each other, which
//! the kill tests of `cluster.rs` never show: a silent server, a node cut off after its
//! announcement, a claim whose holder is cut off, a delivery path that is down.
//!
//! Every scenario ends with the exactly-once check at the PACS (a DCMTK storescp with
//! unique file names, so a second copy shows): per study one original report, amended
//! reports (after late series) counted apart, no SOP Instance UID twice, and the delivered
//! report covering every acknowledged instance (the stand-in SR says "N instances in M
//! series").
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::faults::{Direction, FaultProxy};
use common::nats::{have_nats_server, nats_server_bin, NatsCluster};
use common::{Node, NodeOpts, StoreScp};
use dicom_dictionary_std::tags;
use prima_node::synth::{write_study, Plane, SynthSeries, SynthStudy};

/// Every node reports as one device, so outputs compare across nodes.
const SERIAL: &str = "PRIMA-TEST-1";
const KOS_CLASS: &str = "1.2.840.10008.5.1.4.1.1.88.59";
const SR_CLASSES: [&str; 3] = [
    "1.2.840.10008.5.1.4.1.1.88.11",
    "1.2.840.10008.5.1.4.1.1.88.22",
    "1.2.840.10008.5.1.4.1.1.88.33",
];

// ---------------------------------------------------------------------------------------
// The proxy itself, on an echo server.

/// An echo server on loopback: its port.
fn echo_server() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let mut s = s;
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

/// Write `msg` and read the echo back within `wait`; `None` if it did not come.
fn round_trip(s: &mut std::net::TcpStream, msg: &[u8], wait: Duration) -> Option<Vec<u8>> {
    use std::io::{Read, Write};
    s.write_all(msg).ok()?;
    s.set_read_timeout(Some(wait)).unwrap();
    let mut got = vec![0u8; msg.len()];
    let mut n = 0;
    while n < got.len() {
        match s.read(&mut got[n..]) {
            Ok(0) | Err(_) => return None,
            Ok(k) => n += k,
        }
    }
    Some(got)
}

fn read_rest(s: &mut std::net::TcpStream, len: usize, wait: Duration) -> Option<Vec<u8>> {
    use std::io::Read;
    s.set_read_timeout(Some(wait)).unwrap();
    let mut got = vec![0u8; len];
    let mut n = 0;
    while n < len {
        match s.read(&mut got[n..]) {
            Ok(0) | Err(_) => return None,
            Ok(k) => n += k,
        }
    }
    Some(got)
}

#[test]
fn the_fault_proxy_passes_holds_delays_and_resets() {
    let p = FaultProxy::start(echo_server());
    let connect = || std::net::TcpStream::connect(("127.0.0.1", p.port())).unwrap();
    let mut s = connect();
    let short = Duration::from_millis(400);
    assert_eq!(
        round_trip(&mut s, b"one", short).as_deref(),
        Some(&b"one"[..])
    );

    // Held: nothing comes back, the connection stays open; the heal releases the bytes.
    p.hold();
    std::thread::sleep(Duration::from_millis(60));
    assert_eq!(round_trip(&mut s, b"two", short), None);
    // A new connection is accepted and left waiting too.
    let mut s2 = connect();
    assert_eq!(round_trip(&mut s2, b"new", short), None);
    p.pass();
    assert_eq!(
        read_rest(&mut s, 3, Duration::from_secs(2)).as_deref(),
        Some(&b"two"[..])
    );
    assert_eq!(
        read_rest(&mut s2, 3, Duration::from_secs(2)).as_deref(),
        Some(&b"new"[..])
    );

    // One way: what goes to the echo server is lost for now, then arrives.
    p.hold_one_way(Direction::ToTarget);
    std::thread::sleep(Duration::from_millis(60));
    assert_eq!(round_trip(&mut s, b"3", short), None);
    p.hold_one_way(Direction::FromTarget);
    // Forwarded to the echo server now, its answer held on the way back.
    assert_eq!(read_rest(&mut s, 1, short), None);
    p.pass();
    assert_eq!(
        read_rest(&mut s, 1, Duration::from_secs(2)).as_deref(),
        Some(&b"3"[..])
    );

    // Latency: each way, in order.
    p.latency(Duration::from_millis(300));
    let t0 = Instant::now();
    let got = round_trip(&mut s, b"slow", Duration::from_secs(3));
    let took = t0.elapsed();
    assert_eq!(got.as_deref(), Some(&b"slow"[..]));
    assert!(
        took >= Duration::from_millis(550) && took < Duration::from_millis(2000),
        "round trip took {took:?} with 300 ms each way"
    );
    // A narrow link: 64 KiB at 128 KiB/s each way (the echo comes back as it goes out).
    p.pass_at(128 * 1024);
    let big: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    let t0 = Instant::now();
    let got = round_trip(&mut s, &big, Duration::from_secs(5));
    let took = t0.elapsed();
    assert!(got.as_deref() == Some(&big[..]), "64 KiB not echoed whole");
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(3000),
        "64 KiB took {took:?} at 128 KiB/s"
    );
    p.pass();

    // Reset: the open connections are closed; new ones work.
    assert_eq!(p.active(), 2);
    p.reset();
    assert_eq!(round_trip(&mut s, b"x", short), None);
    let mut s3 = connect();
    assert_eq!(
        round_trip(&mut s3, b"after", Duration::from_secs(2)).as_deref(),
        Some(&b"after"[..])
    );
    // Refused: closed at once.
    p.refuse();
    let mut s4 = connect();
    assert_eq!(round_trip(&mut s4, b"no", Duration::from_secs(2)), None);
    assert!(common::wait_until(Duration::from_secs(2), || p.active() == 0));
}

// ---------------------------------------------------------------------------------------
// The world of a scenario: three servers, ingest nodes and workers, a PACS.

/// The `[cluster]` keys the partition behaviour is configured by: written only when this
/// build of the node knows them (its config rejects unknown keys), so the suite runs, and
/// shows what fails, on a node without them.
fn partition_knobs_supported() -> bool {
    static KNOWN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *KNOWN.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let opts = NodeOpts {
            extra_toml: "\n[cluster]\nrole = \"ingest\"\nservers = [\"nats://127.0.0.1:4222\"]\n\
                 node_silent_s = 3\npartition_wait_s = 60\nhandover_after_failures = 3\n"
                .into(),
            ..NodeOpts::default()
        };
        let file = dir.path().join("c.toml");
        std::fs::write(&file, common::config_text(&opts, &dir.path().join("s"))).unwrap();
        let o = std::process::Command::new(common::bin())
            .arg("check-config")
            .arg(&file)
            .output()
            .unwrap();
        let text = common::text(&o);
        let known = !text.contains("unknown field");
        eprintln!("partition knobs known to this node: {known}");
        known
    })
}

#[derive(Clone)]
struct Cfg {
    /// `[assembly] quiet_period_s`.
    quiet_s: f64,
    node_silent_s: f64,
    partition_wait_s: f64,
    handover_after_failures: u32,
    claim_lease_s: f64,
    /// The stand-in model's time per study, per worker name (default 0).
    delay_ms: BTreeMap<String, u64>,
}

/// The server each node first connects to (the others refuse it until it is connected),
/// so that what a cut reaches does not depend on the client's random pick.
fn home_server(name: &str) -> usize {
    match name {
        "ingest-a" => 0,
        "ingest-b" => 2,
        "worker-1" => 2,
        _ => 1,
    }
}

impl Default for Cfg {
    fn default() -> Self {
        Cfg {
            // Longer than node_silent_s, as the node asks: a node cut off in the middle of
            // a study is known unreachable before the study could be decided.
            quiet_s: 4.0,
            node_silent_s: 3.0,
            partition_wait_s: 120.0,
            handover_after_failures: 3,
            claim_lease_s: 10.0,
            delay_ms: BTreeMap::new(),
        }
    }
}

struct World {
    nats: NatsCluster,
    pacs: StoreScp,
    /// Each ingest node's path to the PACS.
    dest: BTreeMap<String, FaultProxy>,
    nodes: Vec<(String, Node)>,
    t0: Instant,
}

impl World {
    fn start(ingest: &[&str], workers: &[&str], cfg: &Cfg) -> World {
        let mut nats = NatsCluster::start_partitionable(&nats_server_bin());
        let pacs_port = common::free_port();
        let pacs = StoreScp::start(pacs_port);
        let mut dest = BTreeMap::new();
        let mut nodes = Vec::new();
        for (role, names) in [("ingest", ingest), ("worker", workers)] {
            for name in names {
                let mut toml = format!(
                    "\n[cluster]\nrole = \"{role}\"\nservers = [{}]\nname = \"{name}\"\n\
                     ack_wait_s = 3\nclaim_lease_s = {}\nmax_deliver = 5\n",
                    nats.client_urls(name),
                    cfg.claim_lease_s
                );
                for (i, p) in nats.client_proxies[*name].iter().enumerate() {
                    if i != home_server(name) {
                        p.refuse();
                    }
                }
                if partition_knobs_supported() {
                    toml.push_str(&format!(
                        "node_silent_s = {}\npartition_wait_s = {}\nhandover_after_failures = {}\n",
                        cfg.node_silent_s, cfg.partition_wait_s, cfg.handover_after_failures
                    ));
                }
                let mut opts = NodeOpts {
                    extra_toml: toml,
                    serial_number: Some(SERIAL.into()),
                    quiet_s: cfg.quiet_s,
                    env: vec![(
                        "PRIMA_NODE_FAKE_DELAY_MS".into(),
                        cfg.delay_ms.get(*name).copied().unwrap_or(0).to_string(),
                    )],
                    ..NodeOpts::default()
                };
                if role == "ingest" {
                    let p = FaultProxy::start(pacs_port);
                    opts.dest_port = p.port();
                    dest.insert(name.to_string(), p);
                }
                nodes.push((name.to_string(), Node::start(opts)));
            }
        }
        let w = World {
            nats,
            pacs,
            dest,
            nodes,
            t0: Instant::now(),
        };
        for (name, n) in &w.nodes {
            assert!(
                common::wait_until(Duration::from_secs(60), || n
                    .log_text()
                    .contains("connected to the cluster")),
                "{name} not connected to the cluster:\n{}",
                n.log_text()
            );
        }
        w.nats.heal_all();
        eprintln!("placement: {}", w.placement());
        w
    }

    fn node(&self, name: &str) -> &Node {
        &self.nodes.iter().find(|(n, _)| n == name).unwrap().1
    }

    fn node_mut(&mut self, name: &str) -> &mut Node {
        &mut self.nodes.iter_mut().find(|(n, _)| n == name).unwrap().1
    }

    fn names(&self) -> Vec<String> {
        self.nodes.iter().map(|(n, _)| n.clone()).collect()
    }

    fn secs(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    /// Where everyone is connected, for the log.
    fn placement(&self) -> String {
        self.nodes
            .iter()
            .map(|(n, _)| format!("{n}@{:?}", self.nats.server_of(n)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn dump(&self) -> String {
        let mut s = String::new();
        for (n, node) in &self.nodes {
            s.push_str(&format!("== {n}\n{}\n", node.log_text()));
        }
        for (i, srv) in self.nats.servers.iter().enumerate() {
            let log = std::fs::read_to_string(&srv.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            s.push_str(&format!("== nats n{i} (last 40 lines)\n{tail}\n"));
        }
        s.push_str(&format!("== PACS\n{:#?}\n", received(&self.pacs)));
        s
    }

    /// Send each series in its own association to `node`, two at a time; the number of
    /// instances acknowledged with Success.
    fn send(&self, node: &str, series: &[Vec<PathBuf>]) -> usize {
        send_to(self.node(node).opts.port, series)
    }

    /// The ingest node that claimed the result of `study` for delivery, if one did.
    fn claimer(&self, study: &str) -> Option<String> {
        self.nodes
            .iter()
            .find(|(_, n)| logged(n, study, "result claimed for delivery") > 0)
            .map(|(name, _)| name.clone())
    }

    /// Studies some worker failed or the cluster reports failed.
    fn failures(&self) -> Vec<String> {
        let mut v = Vec::new();
        for (name, n) in &self.nodes {
            for l in n.log_text().lines() {
                if l.contains("study failed") {
                    v.push(format!("{name}: {l}"));
                }
            }
        }
        v
    }
}

/// Lines of the node's log about `study` that contain `what`.
fn logged(n: &Node, study: &str, what: &str) -> usize {
    n.log_text()
        .lines()
        .filter(|l| l.contains(study) && l.contains(what))
        .count()
}

fn send_to(port: u16, series: &[Vec<PathBuf>]) -> usize {
    let mut acked = 0;
    for chunk in series.chunks(2) {
        let handles: Vec<_> = chunk
            .iter()
            .cloned()
            .map(|files| {
                std::thread::spawn(move || {
                    let o = common::storescu(port, common::SCU_AE, &files);
                    common::acknowledged_files(&common::text(&o)).len()
                })
            })
            .collect();
        for h in handles {
            acked += h.join().unwrap();
        }
    }
    acked
}

/// As a modality does: each series sent again, what was not acknowledged, until all is
/// (the node may be down for a while). Returns the instances acknowledged.
fn send_retrying(port: u16, series: &[Vec<PathBuf>]) -> usize {
    let mut acked = 0;
    for files in series {
        let mut left: Vec<PathBuf> = files.clone();
        for _ in 0..15 {
            let o = common::storescu(port, common::SCU_AE, &left);
            let ok = common::acknowledged_files(&common::text(&o));
            acked += ok.len();
            left.retain(|f| !ok.contains(f));
            if left.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }
    acked
}

/// A synthetic study of `n_series` small series (4 slices of 48 x 48): its UID and its files
/// by series.
fn study(dir: &Path, seed: u64, n_series: usize) -> (String, Vec<Vec<PathBuf>>) {
    study_sized(dir, seed, n_series, 48, 4)
}

/// A synthetic study of `n_series` series of `slices` slices of `px` x `px`.
fn study_sized(
    dir: &Path,
    seed: u64,
    n_series: usize,
    px: u16,
    slices: usize,
) -> (String, Vec<Vec<PathBuf>>) {
    let kinds = [
        ("AX T2 FLAIR", Plane::Axial),
        ("COR T1", Plane::Coronal),
        ("AX T1", Plane::Axial),
        ("SAG T1", Plane::Sagittal),
    ];
    let s = SynthStudy {
        series: (0..n_series)
            .map(|i| {
                let (d, p) = kinds[i % kinds.len()];
                SynthSeries::new(2 + i as i32, d, p, px, px, slices)
            })
            .collect(),
        ..SynthStudy::brain(seed)
    };
    let files = write_study(&s, dir).expect("write synthetic study");
    let uid = common::study_uid_of(&files[0]);
    let mut by_series: BTreeMap<PathBuf, Vec<PathBuf>> = Default::default();
    for f in files {
        by_series
            .entry(f.parent().unwrap().to_owned())
            .or_default()
            .push(f);
    }
    (uid, by_series.into_values().collect())
}

// ---------------------------------------------------------------------------------------
// What the PACS received.

#[derive(Debug, Clone)]
struct Received {
    sop: String,
    study: String,
    class: String,
    /// The stand-in SR's "N instances in M series".
    instances: Option<usize>,
    series: Option<usize>,
    /// Has a Predecessor Documents Sequence: a report amended after late series.
    amended: bool,
    /// Says it was analysed before all expected series arrived.
    partial: bool,
}

fn sr_text(o: &dicom_object::DefaultDicomObject) -> String {
    let mut out = String::new();
    if let Ok(e) = o.element(tags::CONTENT_SEQUENCE) {
        for item in e.items().into_iter().flatten() {
            if let Ok(t) = item.element(tags::TEXT_VALUE) {
                if let Ok(s) = t.to_str() {
                    out.push_str(&s);
                    out.push('\n');
                }
            }
        }
    }
    out
}

fn number_before(text: &str, word: &str) -> Option<usize> {
    let i = text.find(word)?;
    text[..i].split_whitespace().last()?.parse().ok()
}

fn received(pacs: &StoreScp) -> Vec<Received> {
    pacs.received_objects()
        .into_iter()
        .map(|(sop, study, o)| {
            let class = o
                .element(tags::SOP_CLASS_UID)
                .ok()
                .and_then(|e| {
                    e.to_str()
                        .ok()
                        .map(|s| s.trim_end_matches('\0').to_string())
                })
                .unwrap_or_default();
            let text = sr_text(&o);
            let flag = o
                .element(tags::COMPLETION_FLAG)
                .ok()
                .and_then(|e| e.to_str().ok().map(|s| s.trim().to_string()))
                .unwrap_or_default();
            Received {
                sop,
                study,
                class,
                instances: number_before(&text, " instances in "),
                series: number_before(&text, " series."),
                amended: o.element(tags::PREDECESSOR_DOCUMENTS_SEQUENCE).is_ok(),
                partial: flag == "PARTIAL"
                    || text.contains("Study analysed before all expected series had arrived."),
            }
        })
        .collect()
}

fn is_sr(r: &Received) -> bool {
    SR_CLASSES.contains(&r.class.as_str())
}

/// The reports of one study, in arrival order is unknown: the one covering most instances
/// is the latest.
fn reports<'a>(all: &'a [Received], study: &str) -> Vec<&'a Received> {
    all.iter()
        .filter(|r| r.study == study && is_sr(r))
        .collect()
}

/// Every study has a report covering at least its acknowledged instances.
fn all_answered(pacs: &StoreScp, acked: &BTreeMap<String, usize>) -> bool {
    let all = received(pacs);
    acked.iter().filter(|(_, n)| **n > 0).all(|(uid, n)| {
        reports(&all, uid)
            .iter()
            .any(|r| r.instances.is_some_and(|i| i >= *n))
    })
}

#[derive(Debug, Default)]
struct Tally {
    studies: usize,
    sr: usize,
    kos: usize,
    amended: usize,
    failed: usize,
    /// Acknowledged instances no delivered report covers.
    lost: usize,
    /// Objects received more than once (same SOP Instance UID).
    duplicates: usize,
    problems: Vec<String>,
}

/// The exactly-once check: per study one original report (amended ones counted apart, each
/// covering more than the one before), KOS (when the model makes them) one per report, no
/// SOP Instance UID twice, and the latest report covering every acknowledged instance.
fn tally(pacs: &StoreScp, acked: &BTreeMap<String, usize>, failures: &[String]) -> Tally {
    let all = received(pacs);
    let mut t = Tally {
        studies: acked.len(),
        failed: failures.len(),
        ..Tally::default()
    };
    t.problems.extend(failures.iter().cloned());
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &all {
        *seen.entry(&r.sop).or_default() += 1;
    }
    for (sop, n) in &seen {
        if *n > 1 {
            t.duplicates += n - 1;
            t.problems.push(format!("{sop} received {n} times"));
        }
    }
    for r in &all {
        if !acked.contains_key(&r.study) {
            t.problems
                .push(format!("an object for a study never sent: {r:?}"));
        }
    }
    for (uid, n) in acked {
        let mut srs: Vec<&Received> = reports(&all, uid);
        srs.sort_by(|a, b| a.sop.cmp(&b.sop));
        srs.dedup_by(|a, b| a.sop == b.sop);
        let kos = all
            .iter()
            .filter(|r| r.study == *uid && r.class == KOS_CLASS)
            .map(|r| &r.sop)
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        let originals = srs.iter().filter(|r| !r.amended).count();
        let amended = srs.len() - originals;
        t.sr += originals;
        t.amended += amended;
        t.kos += kos;
        // Nothing acknowledged, nothing owed (a report of what was spooled is fine).
        if originals != 1 && !(*n == 0 && originals == 0) {
            t.problems.push(format!(
                "study {uid}: {originals} original reports: {srs:?}"
            ));
        }
        // The stand-in makes no KOS; a model that does makes one per report.
        if kos != 0 && kos != srs.len() {
            t.problems
                .push(format!("study {uid}: {kos} KOS for {} reports", srs.len()));
        }
        let covered = srs.iter().filter_map(|r| r.instances).max().unwrap_or(0);
        if covered < *n {
            t.lost += n - covered;
            t.problems.push(format!(
                "study {uid}: {n} instances acknowledged, the latest report covers {covered}"
            ));
        }
    }
    t
}

/// Wait for every study's answer (within `bound`), then a while for duplicates; the tally.
fn settle(w: &World, acked: &BTreeMap<String, usize>, bound: Duration) -> (Tally, f64) {
    let t0 = Instant::now();
    let answered = common::wait_until(bound, || all_answered(&w.pacs, acked));
    let took = t0.elapsed().as_secs_f64();
    assert!(
        answered,
        "not every study answered within {bound:?} (acknowledged {acked:?}):\n{}",
        w.dump()
    );
    // A duplicate or a late second report would show up meanwhile.
    std::thread::sleep(Duration::from_secs(5));
    (tally(&w.pacs, acked, &w.failures()), took)
}

fn assert_clean(w: &World, t: &Tally) {
    assert!(
        t.problems.is_empty(),
        "exactly-once violated: {t:?}\n{}",
        w.dump()
    );
}

/// Prints how long the test ran when it ends (passed or not).
struct Timed(&'static str, Instant);

impl Drop for Timed {
    fn drop(&mut self) {
        eprintln!("TIMING {} {:.1} s", self.0, self.1.elapsed().as_secs_f64());
    }
}

fn timed(name: &'static str) -> Timed {
    Timed(name, Instant::now())
}

fn prerequisites() -> bool {
    common::have_dcmtk() && have_nats_server()
}

// ---------------------------------------------------------------------------------------
// a. A silent server.

#[test]
fn a_silent_server_does_not_stop_a_study_sent_to_a_healthy_one() {
    if !prerequisites() {
        return;
    }
    let _t = timed("a");
    let tmp = tempfile::tempdir().unwrap();
    let (uid, series) = study(tmp.path(), 3301, 2);
    let w = World::start(
        &["ingest-a", "ingest-b"],
        &["worker-1", "worker-2"],
        &Cfg::default(),
    );
    // ingest-a receives on n0; ingest-b and worker-1 are on the silent one.
    let k = home_server("worker-1");
    eprintln!("cutting server n{k}");
    w.nats.cut_server(k);
    let t0 = Instant::now();
    let n = w.send("ingest-a", &series);
    let acked = BTreeMap::from([(uid.clone(), n)]);
    // Streams led by the silent server elect new leaders first (seconds each, more on a
    // loaded 2-core machine: 4.5 s to 39 s measured); before the fix nothing came at all.
    let answered = common::wait_until(Duration::from_secs(90), || all_answered(&w.pacs, &acked));
    let took = t0.elapsed().as_secs_f64();
    eprintln!("a: answered={answered} after {took:.1} s with server n{k} silent");
    if std::env::var_os("PRIMA_DUMP").is_some() {
        eprintln!("{}", w.dump());
    }
    assert!(
        answered,
        "no result within 90 s while server n{k} is silent:\n{}",
        w.dump()
    );
    w.nats.heal_server(k);
    let (t, _) = settle(&w, &acked, Duration::from_secs(60));
    assert_clean(&w, &t);
}

// ---------------------------------------------------------------------------------------
// b. A server healing while the workers run.

/// Each of the healed server's route links narrowed to this many bytes per second each
/// way, and what the cluster stores while that server is away, ahead of the study (noise:
/// routes may compress). The replica catches up in stream order at about one link's rate
/// (measured: 8 MiB in 47-49 s), so the study's instances reach it some 45 s after the
/// heal. A worker there gets the job about 10 s after the heal (its server's JetStream
/// answers 503 until its metadata has caught up); before the fix its deliveries (5, a nak's
/// 2 s apart) were all spent by about 18 s.
const HEAL_RATE: u64 = 200_000;
const BACKLOG_BYTES: usize = 8 << 20;

/// Other instances stored while a server is away (other studies' as far as the servers
/// can tell), written through server `port` into the instances bucket: `bytes` in objects
/// of 1 MiB.
fn store_backlog(port: u16, bytes: usize) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let c = async_nats::connect(format!("127.0.0.1:{port}"))
            .await
            .unwrap();
        let js = async_nats::jetstream::new(c);
        let t0 = Instant::now();
        // The streams the cut server led elect new leaders first: a request meanwhile times
        // out.
        let again = |what: String| {
            assert!(t0.elapsed() < Duration::from_secs(60), "{what}");
            eprintln!("{what}: again");
            tokio::time::sleep(Duration::from_millis(500))
        };
        let store = loop {
            match js.get_object_store("prima-instances").await {
                Ok(s) => break s,
                Err(e) => again(format!("the instances bucket: {e}")).await,
            }
        };
        // Noise: a route that compresses (S2) would carry a pattern in no time.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..bytes.div_ceil(1 << 20) {
            let data: Vec<u8> = (0..1usize << 20)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let name = format!("backlog-{i}");
            while let Err(e) = store.put(name.as_str(), &mut &data[..]).await {
                again(format!("storing {name}: {e}")).await;
            }
        }
    })
}

/// What the healed server's replica of the instances said, asked for the stream's last
/// message (the study's last instance) directly by a client on that server: how often "not
/// found", and until when after the heal. The proof that a worker there could read from a
/// replica that had not caught up.
#[derive(Debug, Default, Clone, Copy)]
struct Lag {
    not_found: usize,
    last_s: f64,
}

/// Asks server `lagging` for the instances stream's last message (its sequence learned from
/// server `good`) every 100 ms until `done`.
fn watch_lag(
    good: u16,
    lagging: u16,
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Lag> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let t0 = Instant::now();
            let mut lag = Lag::default();
            let stream = "OBJ_prima-instances";
            let connect = |port: u16| async move {
                let c = async_nats::connect(format!("127.0.0.1:{port}"))
                    .await
                    .ok()?;
                Some(async_nats::jetstream::new(c))
            };
            let (Some(g), Some(l)) = (connect(good).await, connect(lagging).await) else {
                return lag;
            };
            let mut last = None;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                if last.is_none() {
                    if let Ok(Ok(mut st)) =
                        tokio::time::timeout(Duration::from_secs(2), g.get_stream(stream)).await
                    {
                        last = st.info().await.ok().map(|i| i.state.last_sequence);
                    }
                }
                if let (Some(seq), Ok(st)) = (last, l.get_stream_no_info(stream).await) {
                    if let Ok(Err(e)) =
                        tokio::time::timeout(Duration::from_secs(2), st.direct_get(seq)).await
                    {
                        if e.kind() == async_nats::jetstream::stream::DirectGetErrorKind::NotFound {
                            lag.not_found += 1;
                            lag.last_s = t0.elapsed().as_secs_f64();
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            lag
        })
    })
}

#[test]
fn a_server_healing_while_workers_run_fails_no_study() {
    if !prerequisites() {
        return;
    }
    let _t = timed("b");
    let tmp = tempfile::tempdir().unwrap();
    let cfg = Cfg {
        delay_ms: BTreeMap::from([("worker-1".to_string(), 300)]),
        ..Cfg::default()
    };
    // The only worker sits on the server that is cut off and rejoins, and reaches no other:
    // every delivery of every job reads from the replica that is catching up.
    let w = World::start(&["ingest-a"], &["worker-1"], &cfg);
    let k = home_server("worker-1");
    for (i, p) in w.nats.client_proxies["worker-1"].iter().enumerate() {
        if i != k {
            p.refuse();
        }
    }
    eprintln!("cutting server n{k}");
    w.nats.isolate_server(k);
    store_backlog(w.nats.servers[0].client_port, BACKLOG_BYTES);
    eprintln!("b: backlog stored at {:.1} s", w.secs());
    let (uid, series) = study(tmp.path(), 3310, 2);
    let acked = BTreeMap::from([(uid.clone(), w.send("ingest-a", &series))]);
    // Replicated, decided and queued by the two servers left.
    let queued = common::wait_until(Duration::from_secs(60), || {
        logged(w.node("ingest-a"), &uid, "job published") > 0
    });
    assert!(
        queued,
        "the study not queued while n{k} was cut off:\n{}",
        w.dump()
    );
    eprintln!("b: queued at {:.1} s", w.secs());
    // Rejoining over a slow link: its replicas catch up at HEAL_RATE, and it answers direct
    // gets meanwhile.
    w.nats.heal_server_throttled(k, HEAL_RATE);
    let healed = Instant::now();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watch = watch_lag(
        w.nats.servers[0].client_port,
        w.nats.servers[k].client_port,
        done.clone(),
    );
    // A failed study is never answered: stop waiting at the first.
    let ended = common::wait_until(Duration::from_secs(120), || {
        all_answered(&w.pacs, &acked) || !w.failures().is_empty()
    });
    let took = healed.elapsed().as_secs_f64();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let lag = watch.join().unwrap();
    let worker_log = w.node("worker-1").log_text();
    let runs = worker_log
        .matches("study processed: results in the cluster")
        .count();
    let returned = worker_log.matches("it will be delivered again").count();
    eprintln!(
        "b: {took:.1} s after the heal: worker-1 ran {runs}, returned {returned} deliveries, failed {}; n{k} said \"not found\" {} times, the last {:.1} s after the heal",
        w.failures().len(),
        lag.not_found,
        lag.last_s
    );
    if std::env::var_os("PRIMA_DUMP").is_some() {
        eprintln!("{}", w.dump());
    }
    assert!(
        w.failures().is_empty(),
        "a study failed while n{k} caught up ({returned} deliveries returned): {:?}\n{}",
        w.failures(),
        w.dump()
    );
    assert!(
        ended,
        "not every study answered within 120 s of the heal:\n{}",
        w.dump()
    );
    // A "not found" or a 503 while a server catches up says nothing about the study.
    assert_eq!(
        returned,
        0,
        "deliveries spent while n{k} caught up:\n{}",
        w.dump()
    );
    // Otherwise the scenario did not happen and the test proved nothing.
    assert!(
        lag.not_found > 0,
        "n{k} never answered \"not found\" after the heal: it did not lag"
    );
    let (t, _) = settle(&w, &acked, Duration::from_secs(10));
    assert_clean(&w, &t);
}

// ---------------------------------------------------------------------------------------
// c. A study decided on partial data.

/// Series 1-3 to ingest-a and replicated; ingest-a cut from every server; series 4 to
/// ingest-a (acknowledged from its spool). Returns the world, the study, the instances
/// acknowledged in all and in the first three series, and when the cut began.
fn partial_setup(tmp: &Path, cfg: &Cfg) -> (World, String, usize, usize, Instant) {
    let (uid, series) = study(tmp, 3320, 4);
    let w = World::start(&["ingest-a", "ingest-b"], &["worker-1"], cfg);
    let first = w.send("ingest-a", &series[..3]);
    let replicated = || -> usize {
        w.node("ingest-a")
            .log_text()
            .lines()
            .filter(|l| l.contains("instances replicated to the cluster"))
            .filter_map(|l| {
                l.split("instances=")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|v| v.parse::<usize>().ok())
            })
            .sum()
    };
    assert!(
        common::wait_until(Duration::from_secs(20), || replicated() >= first),
        "series 1-3 not replicated:\n{}",
        w.dump()
    );
    let cut = Instant::now();
    w.nats.cut_node("ingest-a");
    let last = w.send("ingest-a", &series[3..]);
    assert!(last > 0, "series 4 acknowledged from ingest-a's spool");
    eprintln!(
        "c: series 1-3 ({first} instances) replicated, ingest-a cut, series 4 ({last}) acknowledged at {:.1} s",
        cut.elapsed().as_secs_f64()
    );
    (w, uid, first + last, first, cut)
}

#[test]
fn a_study_is_not_decided_while_an_ingest_node_that_holds_part_of_it_is_cut_off() {
    if !prerequisites() {
        return;
    }
    let _t = timed("c1");
    let tmp = tempfile::tempdir().unwrap();
    // The quiet period outlasts the steps between series 3 and the cut.
    let cfg = Cfg {
        quiet_s: 6.0,
        partition_wait_s: 120.0,
        ..Cfg::default()
    };
    let (w, uid, total, _, cut) = partial_setup(tmp.path(), &cfg);
    // Quiet period, announcement gone stale, and a margin: nothing may be decided.
    let hold = Duration::from_secs_f64(cfg.quiet_s + cfg.node_silent_s + 10.0);
    while cut.elapsed() < hold {
        let got = reports(&received(&w.pacs), &uid).len();
        let published = logged(w.node("ingest-b"), &uid, "job published");
        assert!(
            got == 0 && published == 0,
            "decided while ingest-a (holding series 4) is cut off, {:.1} s after the cut: {} report(s) at the PACS, ingest-b published {published} job(s):\n{}",
            cut.elapsed().as_secs_f64(),
            got,
            w.dump()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    w.nats.heal_node("ingest-a");
    let healed = Instant::now();
    let acked = BTreeMap::from([(uid.clone(), total)]);
    let (t, took) = settle(&w, &acked, Duration::from_secs(60));
    eprintln!(
        "c: healed {:.1} s after the cut; answered {took:.1} s after the heal: {t:?}",
        (healed - cut).as_secs_f64()
    );
    assert_clean(&w, &t);
    let all = received(&w.pacs);
    let r = reports(&all, &uid);
    assert_eq!(r.len(), 1, "one report: {r:?}");
    assert_eq!(
        r[0].series,
        Some(4),
        "the report covers the four series: {r:?}"
    );
    assert!(!r[0].partial && !r[0].amended, "{r:?}");
}

#[test]
fn a_study_waits_partition_wait_s_then_is_decided_partial_and_amended_after_the_heal() {
    if !prerequisites() {
        return;
    }
    let _t = timed("c2");
    let tmp = tempfile::tempdir().unwrap();
    let cfg = Cfg {
        quiet_s: 6.0,
        partition_wait_s: 15.0,
        ..Cfg::default()
    };
    let (w, uid, total, first, cut) = partial_setup(tmp.path(), &cfg);
    // The partial report, not before partition_wait_s of silence.
    assert!(
        common::wait_until(Duration::from_secs(90), || !reports(
            &received(&w.pacs),
            &uid
        )
        .is_empty()),
        "no partial result while ingest-a is cut off:\n{}",
        w.dump()
    );
    let after = cut.elapsed().as_secs_f64();
    let all = received(&w.pacs);
    let partial = reports(&all, &uid);
    eprintln!("c2: first report {after:.1} s after the cut: {partial:?}");
    assert_eq!(partial[0].instances, Some(first), "{partial:?}");
    assert!(
        after >= cfg.partition_wait_s - 2.0,
        "decided {after:.1} s after ingest-a was cut, before partition_wait_s = {}:\n{}",
        cfg.partition_wait_s,
        w.dump()
    );
    w.nats.heal_node("ingest-a");
    let acked = BTreeMap::from([(uid.clone(), total)]);
    let (t, took) = settle(&w, &acked, Duration::from_secs(60));
    eprintln!("c2: amended {took:.1} s after the heal: {t:?}");
    assert_clean(&w, &t);
    assert_eq!((t.sr, t.amended), (1, 1), "{t:?}");
    let all = received(&w.pacs);
    let r = reports(&all, &uid);
    let amended = r.iter().find(|r| r.amended).unwrap();
    assert_eq!(amended.series, Some(4), "{r:?}");
}

// ---------------------------------------------------------------------------------------
// d, e. Delivery: a claim whose holder is cut off, a holder that cannot reach the PACS.

/// Both ingest nodes' PACS paths in `mode`; send a study; wait for a claim. Returns the
/// world, the study, its instances, and (claimer, other).
fn claimed(tmp: &Path, cfg: &Cfg, refuse: bool) -> (World, String, usize, String, String) {
    let (uid, series) = study(tmp, 3340, 2);
    let w = World::start(&["ingest-a", "ingest-b"], &["worker-1"], cfg);
    for p in w.dest.values() {
        if refuse {
            p.refuse();
        } else {
            p.hold();
        }
    }
    let n = w.send("ingest-a", &series);
    let mut holder = None;
    assert!(
        common::wait_until(Duration::from_secs(60), || {
            holder = w.claimer(&uid);
            holder.is_some()
        }),
        "nobody claimed the result:\n{}",
        w.dump()
    );
    let x = holder.unwrap();
    let y = if x == "ingest-a" {
        "ingest-b"
    } else {
        "ingest-a"
    }
    .to_string();
    assert!(
        common::wait_until(Duration::from_secs(20), || logged(
            w.node(&x),
            &uid,
            "claimed result queued in the outbox"
        ) > 0),
        "{x} did not queue its claim:\n{}",
        w.dump()
    );
    (w, uid, n, x, y)
}

#[test]
fn a_claim_taken_over_after_its_lease_is_not_sent_again_by_the_cut_off_holder() {
    if !prerequisites() {
        return;
    }
    let _t = timed("d");
    let tmp = tempfile::tempdir().unwrap();
    let cfg = Cfg::default();
    let (w, uid, n, x, y) = claimed(tmp.path(), &cfg, false);
    // x's association is in flight, held on the way to the PACS.
    std::thread::sleep(Duration::from_secs(1));
    w.nats.cut_node(&x);
    let cut = Instant::now();
    w.dest[&y].pass();
    assert!(
        common::wait_until(Duration::from_secs_f64(cfg.claim_lease_s + 40.0), || {
            !reports(&received(&w.pacs), &uid).is_empty()
        }),
        "{y} did not deliver after {x}'s lease ran out:\n{}",
        w.dump()
    );
    eprintln!(
        "d: {y} delivered {:.1} s after {x} was cut (lease {} s)",
        cut.elapsed().as_secs_f64(),
        cfg.claim_lease_s
    );
    assert!(logged(w.node(&y), &uid, "result claimed for delivery") > 0);
    // x's way to the PACS heals while it is still cut off from the cluster: its lease is
    // long gone, so it must send nothing.
    w.dest[&x].pass();
    std::thread::sleep(Duration::from_secs(10));
    let acked = BTreeMap::from([(uid.clone(), n)]);
    let t = tally(&w.pacs, &acked, &w.failures());
    eprintln!("d: with {x}'s PACS path healed, still cut from NATS: {t:?}");
    assert_clean(&w, &t);
    // And after x hears the cluster again.
    w.nats.heal_node(&x);
    let (t, _) = settle(&w, &acked, Duration::from_secs(30));
    assert_clean(&w, &t);
}

#[test]
fn a_holder_that_cannot_reach_the_pacs_hands_its_claim_over() {
    if !prerequisites() {
        return;
    }
    let _t = timed("e");
    let tmp = tempfile::tempdir().unwrap();
    let cfg = Cfg::default();
    // Refused rather than held: a held association waits for the sender's 120 s read
    // time-out, so three failed attempts would take six minutes.
    let (w, uid, n, x, y) = claimed(tmp.path(), &cfg, true);
    let t0 = Instant::now();
    w.dest[&y].pass();
    let bound = Duration::from_secs(60);
    let acked = BTreeMap::from([(uid.clone(), n)]);
    let delivered = common::wait_until(bound, || all_answered(&w.pacs, &acked));
    eprintln!(
        "e: delivered={delivered} {:.1} s after {x} claimed with its PACS path refused",
        t0.elapsed().as_secs_f64()
    );
    assert!(
        delivered,
        "{x} cannot reach the PACS and {y} can, yet nothing was delivered within {bound:?}:\n{}",
        w.dump()
    );
    assert!(
        logged(w.node(&y), &uid, "result claimed for delivery") > 0,
        "{y} delivered it"
    );
    let (t, _) = settle(&w, &acked, Duration::from_secs(10));
    assert_clean(&w, &t);
}

// ---------------------------------------------------------------------------------------
// f. Randomized: studies over time while a fault schedule runs.

/// splitmix64: a seeded sequence (no crate needed for a fault schedule).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn secs(&mut self, lo: f64, hi: f64) -> Duration {
        Duration::from_secs_f64(lo + (hi - lo) * (self.below(1000) as f64 / 1000.0))
    }
}

#[derive(Debug)]
enum Fault {
    CutServer(usize),
    CutNode(String),
    OneWayServer(usize, bool),
    OneWayNode(String, Direction),
    SlowServer(usize),
    SlowNode(String),
    KillNode(String),
    KillServer(usize),
    /// An ingest node's PACS refuses it (down for that node only).
    PacsDown(String),
}

fn random_fault(rng: &mut Rng, names: &[String]) -> Fault {
    let node = names[rng.below(names.len() as u64) as usize].clone();
    let k = rng.below(3) as usize;
    match rng.below(9) {
        8 => Fault::PacsDown(if rng.below(2) == 0 {
            "ingest-a".into()
        } else {
            "ingest-b".into()
        }),
        0 => Fault::CutServer(k),
        1 => Fault::CutNode(node),
        2 => Fault::OneWayServer(k, rng.below(2) == 0),
        3 => Fault::OneWayNode(
            node,
            if rng.below(2) == 0 {
                Direction::ToTarget
            } else {
                Direction::FromTarget
            },
        ),
        4 => Fault::SlowServer(k),
        5 => Fault::SlowNode(node),
        6 => Fault::KillNode(node),
        _ => Fault::KillServer(k),
    }
}

fn begin(w: &mut World, f: &Fault) {
    match f {
        Fault::CutServer(k) => w.nats.cut_server(*k),
        Fault::CutNode(n) => w.nats.cut_node(n),
        Fault::OneWayServer(k, inbound) => w.nats.hold_server_one_way(*k, *inbound),
        Fault::OneWayNode(n, d) => w.nats.hold_node_one_way(n, *d),
        Fault::SlowServer(k) => w.nats.latency_server(*k, Duration::from_secs(2)),
        Fault::SlowNode(n) => w.nats.latency_node(n, Duration::from_secs(2)),
        Fault::KillNode(n) => w.node_mut(n).sigkill(),
        Fault::KillServer(k) => w.nats.sigkill(*k),
        Fault::PacsDown(n) => w.dest[n].refuse(),
    }
}

fn end(w: &mut World, f: &Fault) {
    match f {
        Fault::KillNode(n) => w.node_mut(n).restart(),
        Fault::KillServer(k) => w.nats.start_server(*k),
        Fault::PacsDown(n) => w.dest[n].pass(),
        _ => w.nats.heal_all(),
    }
}

#[test]
fn randomized_partitions_lose_nothing_and_answer_each_study_once() {
    if !prerequisites() {
        return;
    }
    let _t = timed("f");
    let full = std::env::var("PRIMA_RELIABILITY_FULL").is_ok_and(|v| v == "1");
    let seed: u64 = if full {
        std::env::var("PRIMA_RELIABILITY_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(33)
    } else {
        33
    };
    let n_studies: u64 = if full { 50 } else { 6 };
    // At least this many faults, however fast the studies go in.
    let min_faults = if full { 25 } else { 6 };
    eprintln!("partitions: seed {seed}, {n_studies} studies");
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir().unwrap();
    let studies: Vec<(String, Vec<Vec<PathBuf>>)> = (0..n_studies)
        .map(|i| study(&tmp.path().join(format!("s{i}")), seed * 1000 + i, 2))
        .collect();
    let mut cfg = Cfg::default();
    for wk in ["worker-1", "worker-2"] {
        cfg.delay_ms.insert(wk.into(), 500);
    }
    let mut w = World::start(&["ingest-a", "ingest-b"], &["worker-1", "worker-2"], &cfg);
    let names = w.names();
    let ports = [w.node("ingest-a").opts.port, w.node("ingest-b").opts.port];
    // The sending plan: to which node, after which pause.
    let plan: Vec<(usize, Duration)> = (0..n_studies)
        .map(|_| (rng.below(2) as usize, rng.secs(1.0, 5.0)))
        .collect();
    let t0 = Instant::now();
    let done = std::sync::atomic::AtomicBool::new(false);
    let mut faults = Vec::new();
    let acked: BTreeMap<String, usize> = std::thread::scope(|s| {
        let sender = s.spawn(|| {
            let mut acked = BTreeMap::new();
            for ((uid, series), (to, pause)) in studies.iter().zip(&plan) {
                let n = send_retrying(ports[*to], series);
                acked.insert(uid.clone(), n);
                std::thread::sleep(*pause);
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            acked
        });
        while !done.load(std::sync::atomic::Ordering::SeqCst) || faults.len() < min_faults {
            let f = random_fault(&mut rng, &names);
            // Full mode holds long enough to outlast node_silent_s and claim_lease_s.
            let hold = rng.secs(2.0, if full { 14.0 } else { 6.0 });
            eprintln!(
                "{:6.1} s fault {f:?} for {:.1} s",
                t0.elapsed().as_secs_f64(),
                hold.as_secs_f64()
            );
            begin(&mut w, &f);
            std::thread::sleep(hold);
            end(&mut w, &f);
            faults.push(f);
            std::thread::sleep(rng.secs(1.0, 3.0));
        }
        sender.join().unwrap()
    });
    w.nats.heal_all();
    eprintln!(
        "{:6.1} s last heal after {} faults",
        t0.elapsed().as_secs_f64(),
        faults.len()
    );
    let bound = Duration::from_secs(if full { 600 } else { 120 });
    let answered = common::wait_until(bound, || all_answered(&w.pacs, &acked));
    std::thread::sleep(Duration::from_secs(5));
    let t = tally(&w.pacs, &acked, &w.failures());
    println!(
        "partitions seed={seed} studies={} sr={} kos={} amended={} failed={} lost={} duplicates={} wall_s={:.0}",
        t.studies,
        t.sr,
        t.kos,
        t.amended,
        t.failed,
        t.lost,
        t.duplicates,
        t0.elapsed().as_secs_f64()
    );
    assert!(
        answered && t.problems.is_empty(),
        "seed {seed}: faults {faults:?}\n{t:#?}\n{}",
        w.dump()
    );
}
