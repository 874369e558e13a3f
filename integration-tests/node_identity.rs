//! A study re-sent in other transfer syntaxes is the same study: no instance counts as
//! replaced, nothing re-runs, nothing new reaches the PACS. A lossy re-encoding of one
//! instance is a replacement: the study re-runs.

mod common;

use common::*;
use prima_node::synth::{write_study, Plane, SynthSeries, SynthStudy};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A small synthetic study (two series of 6 slices, 64×64, 16-bit signed) by series.
fn small_study(dir: &Path) -> Vec<Vec<PathBuf>> {
    let s = SynthStudy {
        series: vec![
            SynthSeries::new(2, "AX T2 FLAIR", Plane::Axial, 64, 64, 6),
            SynthSeries::new(3, "COR T1", Plane::Coronal, 64, 64, 6),
        ],
        ..SynthStudy::brain(28)
    };
    let files = write_study(&s, dir).expect("write synthetic study");
    let mut by_series: std::collections::BTreeMap<PathBuf, Vec<PathBuf>> = Default::default();
    for f in files {
        by_series
            .entry(f.parent().unwrap().to_owned())
            .or_default()
            .push(f);
    }
    by_series.into_values().collect()
}

fn convert(tool: &str, args: &[&str], from: &Path, to: &Path) {
    let out = Command::new(tool)
        .args(args)
        .arg(from)
        .arg(to)
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    assert!(out.status.success(), "{tool} {args:?}: {}", text(&out));
}

/// The study converted file by file into `dir`.
fn converted(series: &[Vec<PathBuf>], dir: &Path, tool: &str, args: &[&str]) -> Vec<Vec<PathBuf>> {
    series
        .iter()
        .enumerate()
        .map(|(i, files)| {
            let d = dir.join(format!("S{i}"));
            std::fs::create_dir_all(&d).unwrap();
            files
                .iter()
                .map(|f| {
                    let to = d.join(f.file_name().unwrap());
                    convert(tool, args, f, &to);
                    to
                })
                .collect()
        })
        .collect()
}

fn transfer_syntax(p: &Path) -> String {
    dicom_object::open_file(p)
        .unwrap()
        .meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .to_string()
}

/// Send every file in one association, in the transfer syntax it is in: DCMTK's SCUs
/// would propose uncompressed syntaxes too, which the node prefers, and convert.
fn send_as_is(port: u16, series: &[Vec<PathBuf>]) {
    let implicit = transfer_syntax(&series[0][0]) == "1.2.840.10008.1.2";
    let mut c = if implicit {
        let mut c = Command::new("storescu");
        c.arg("--propose-implicit");
        c
    } else {
        let mut c = Command::new("dcmsend");
        c.arg("--decompress-never");
        c
    };
    let out = c
        .args(["-aet", SCU_AE, "-aec", NODE_AE, "127.0.0.1"])
        .arg(port.to_string())
        .args(series.iter().flatten())
        .output()
        .expect("run the SCU");
    assert!(out.status.success(), "sending failed:\n{}", text(&out));
}

/// The transfer syntaxes the node recorded for its instances.
fn recorded_transfer_syntaxes(node: &Node) -> Vec<String> {
    let db = rusqlite::Connection::open_with_flags(
        node.state_dir.join("state.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut st = db
        .prepare("SELECT DISTINCT transfer_syntax FROM instances")
        .unwrap();
    st.query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// (c-store outcomes in the audit log that were "Replaced", jobs created).
fn replaced_and_jobs(node: &Node) -> (i64, i64) {
    let db = rusqlite::Connection::open_with_flags(
        node.state_dir.join("state.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let count = |sql: &str| db.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
    (
        count("SELECT COUNT(*) FROM audit WHERE event = 'c-store' AND detail LIKE 'Replaced%'"),
        count("SELECT COUNT(*) FROM jobs"),
    )
}

#[test]
fn a_study_re_sent_in_other_transfer_syntaxes_is_unchanged() {
    if !have_dcmtk() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let series = small_study(&work.path().join("explicit"));
    let o = NodeOpts::default();
    let dest = StoreScp::start(o.dest_port);
    let node = Node::start(o);
    send_study(node.opts.port, &series, 2);
    assert!(
        wait_until(Duration::from_secs(60), || dest.received().len() == 1),
        "no output:\n{}",
        node.status()
    );
    assert_eq!(replaced_and_jobs(&node), (0, 1));

    let resends = [
        ("explicit VR LE", series.clone()),
        (
            "implicit VR LE",
            converted(&series, &work.path().join("implicit"), "dcmconv", &["+ti"]),
        ),
        (
            "RLE",
            converted(&series, &work.path().join("rle"), "dcmcrle", &[]),
        ),
        (
            "J2K lossless",
            converted(&series, &work.path().join("j2k"), "gdcmconv", &["--j2k"]),
        ),
    ];
    for (name, files) in &resends {
        send_as_is(node.opts.port, files);
        // Past the quiet period (1.5 s), with time for a re-run to be delivered.
        std::thread::sleep(Duration::from_secs(5));
        assert_eq!(
            replaced_and_jobs(&node),
            (0, 1),
            "re-sent as {name} ({}): no instance replaced, no re-run\n{}",
            transfer_syntax(&files[0][0]),
            node.status()
        );
        assert_eq!(
            dest.received().len(),
            1,
            "nothing new at the PACS after {name}"
        );
        // Received in that transfer syntax, not converted by the sender.
        assert_eq!(
            recorded_transfer_syntaxes(&node),
            [transfer_syntax(&files[0][0])],
            "{name}"
        );
    }
    // The node keeps the last copy it received (J2K), under the same record.
    assert_eq!(
        transfer_syntax(&node.spool_path(&sop_uid_of(&series[0][0]))),
        "1.2.840.10008.1.2.4.90"
    );

    // One instance re-encoded lossy (SOP Instance UID kept): a replacement, a re-run.
    let one = &series[0][0];
    let lossy = work.path().join("lossy.dcm");
    convert("gdcmconv", &["--j2k", "--lossy", "-q", "30"], one, &lossy);
    let out = Command::new("dcmodify")
        .args(["-nb", "-m", &format!("(0008,0018)={}", sop_uid_of(one))])
        .arg(&lossy)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(sop_uid_of(&lossy), sop_uid_of(one));
    assert_eq!(transfer_syntax(&lossy), "1.2.840.10008.1.2.4.91");
    send_as_is(node.opts.port, &[vec![lossy]]);
    assert!(
        wait_until(Duration::from_secs(60), || dest.received().len() == 2),
        "lossy re-encoding not re-run:\n{}",
        node.status()
    );
    assert_eq!(replaced_and_jobs(&node), (1, 2));
}
