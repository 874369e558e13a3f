//! The cluster (`[cluster]`, docs/cluster.md) on loopback: three `nats-server`s, ingest
//! nodes and workers as real `prima-node serve` processes, a DCMTK `storescp` as the PACS.
mod common;
mod fixtures;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::nats::{have_nats_server, NatsCluster};
use common::{Node, NodeOpts, StoreScp};
use dicom_dictionary_std::tags;

fn cluster_toml(nats: &NatsCluster, role: &str, name: &str) -> String {
    format!(
        "\n[cluster]\nrole = \"{role}\"\nservers = [{}]\nname = \"{name}\"\nack_wait_s = 3\nclaim_lease_s = 10\nmax_deliver = 3\n",
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
    env: &[(&str, &str)],
) -> Node {
    Node::start(NodeOpts {
        dest_port: pacs_port,
        model_dir: model.map(Path::to_path_buf),
        extra_toml: cluster_toml(nats, role, name),
        serial_number: Some(SERIAL.into()),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..NodeOpts::default()
    })
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
    let a = member(&nats, "ingest", "ingest-a", pacs_port, None, &[]);
    let b = member(&nats, "ingest", "ingest-b", pacs_port, None, &[]);
    let w1 = member(&nats, "worker", "worker-1", pacs_port, Some(&model), &[]);
    let w2 = member(&nats, "worker", "worker-2", pacs_port, Some(&model), &[]);
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
