//! The life cycle across tables, and upgrades from older databases.

use std::path::{Path, PathBuf};

use dicom_dictionary_std::uids;
use rusqlite::{params, Connection};

use super::schema::SCHEMA;
use super::*;
use crate::store::hash::{content_hash, sha256_hex, CONTENT_HASH_PREFIX};
use crate::store::header::data_set_of;

fn rec(sop: &str, sha: &str) -> InstanceRecord {
    InstanceRecord {
        sop_uid: sop.into(),
        study_uid: "1.2.3".into(),
        series_uid: "1.2.3.1".into(),
        sop_class_uid: crate::config::MR_IMAGE_STORAGE.into(),
        modality: "MR".into(),
        transfer_syntax: uids::EXPLICIT_VR_LITTLE_ENDIAN.into(),
        series_number: "1".into(),
        series_description: "T1".into(),
        path: "/x".into(),
        content_hash: format!("{CONTENT_HASH_PREFIX}{sha}"),
        size: 10,
        calling_ae: "SCU".into(),
        peer: "127.0.0.1".into(),
    }
}

#[test]
fn life_cycle() {
    let d = tempfile::tempdir().unwrap();
    let s = State::open(d.path()).unwrap();
    assert_eq!(
        s.record_instance(&rec("1.2.3.1.1", "aa")).unwrap(),
        RecordOutcome::New
    );
    assert_eq!(
        s.record_instance(&rec("1.2.3.1.1", "aa")).unwrap(),
        RecordOutcome::Unchanged
    );
    assert_eq!(
        s.record_instance(&rec("1.2.3.1.1", "bb")).unwrap(),
        RecordOutcome::Replaced
    );
    let st = s.study("1.2.3").unwrap().unwrap();
    assert_eq!(st.state, StudyState::Receiving);
    let job = s.create_job("1.2.3", false).unwrap();
    assert_eq!(s.queued_jobs().unwrap().len(), 1);
    s.mark_job_dispatched(job, "h1").unwrap();
    s.mark_job_running(job, "1.2.3").unwrap();
    let out = OutputRow {
        sop_uid: "2.25.1".into(),
        kind: "sr".into(),
        sop_class_uid: uids::BASIC_TEXT_SR_STORAGE.into(),
        series_uid: "2.25.2".into(),
        path: "/o".into(),
    };
    s.finish_job_ok(
        job,
        "1.2.3",
        std::slice::from_ref(&out),
        &["A@h:1".into()],
        "h1",
        "h1",
    )
    .unwrap();
    // The same output again (a re-run after a crash) does not queue a second send.
    s.finish_job_ok(job, "1.2.3", &[out], &["A@h:1".into()], "h1", "h1")
        .unwrap();
    assert_eq!(s.study("1.2.3").unwrap().unwrap().state, StudyState::Done);
    let due = s.due_outbox(now_ms()).unwrap();
    assert_eq!(due.len(), 1);
    s.outbox_delivered(due[0].id, None).unwrap();
    assert!(s.due_outbox(now_ms()).unwrap().is_empty());
    // A new instance re-opens the study.
    s.record_instance(&rec("1.2.3.1.2", "cc")).unwrap();
    assert_eq!(
        s.study("1.2.3").unwrap().unwrap().state,
        StudyState::Receiving
    );
    let c = s.counts().unwrap();
    assert_eq!(c.instances, 2);
    assert_eq!(c.outbox_in(OutboxState::Done), 1);
}

/// A Part-10 file holding `data_set`, as the spool writes it.
fn part10(dir: &Path, name: &str, data_set: &[u8]) -> PathBuf {
    let meta = [
        b"\x02\x00\x00\x00UL\x04\x00\x0a\x00\x00\x00".as_slice(),
        b"\x02\x00\x10\x00UI\x02\x00\x31\x00",
    ]
    .concat();
    let mut f = vec![0u8; 128];
    f.extend_from_slice(b"DICM");
    f.extend_from_slice(&meta);
    f.extend_from_slice(data_set);
    let p = dir.join(name);
    std::fs::write(&p, f).unwrap();
    p
}

#[test]
fn upgrade_keeps_sha256_rows_and_recognises_identical_resends() {
    let d = tempfile::tempdir().unwrap();
    let first = part10(d.path(), "a.dcm", b"same bytes");
    let ds = data_set_of(&std::fs::read(&first).unwrap())
        .unwrap()
        .to_vec();
    assert_eq!(ds, b"same bytes");
    {
        // The schema before the column was renamed, with a row hashed by SHA-256.
        let c = Connection::open(d.path().join("state.db")).unwrap();
        c.execute_batch(&SCHEMA.replace("content_hash TEXT", "sha256 TEXT"))
            .unwrap();
        c.execute(
            "INSERT INTO instances (sop_uid, study_uid, series_uid, sop_class_uid, modality,
                transfer_syntax, path, sha256, size, received_ms, calling_ae, peer)
             VALUES ('1.2.3.1.1', '1.2.3', '1.2.3.1', '', 'MR', '', ?1, ?2, 10, 0, '', '')",
            params![first.to_string_lossy(), sha256_hex(&ds)],
        )
        .unwrap();
    }
    let s = State::open(d.path()).unwrap();
    let resend = |name: &str, bytes: &[u8]| {
        let p = part10(d.path(), name, bytes);
        let mut r = rec("1.2.3.1.1", "");
        r.content_hash = content_hash(bytes);
        r.path = p;
        r
    };
    // The old row survives the migration with its value, and a byte-identical re-send
    // is still recognised; different bytes are a replacement.
    assert_eq!(s.instances_of("1.2.3").unwrap().len(), 1);
    assert_eq!(
        s.record_instance(&resend("b.dcm", b"same bytes")).unwrap(),
        RecordOutcome::Unchanged
    );
    assert_eq!(
        s.record_instance(&resend("c.dcm", b"other bytes")).unwrap(),
        RecordOutcome::Replaced
    );
    let now = s.instances_of("1.2.3").unwrap();
    assert_eq!(now[0].content_hash, content_hash(b"other bytes"));
    drop(s);
    // Opening a migrated database again changes nothing.
    let s = State::open(d.path()).unwrap();
    assert_eq!(s.instances_of("1.2.3").unwrap().len(), 1);
}

#[test]
fn cluster_ingest_forgets_only_what_was_replicated_and_can_leave_studies_aside() {
    let d = tempfile::tempdir().unwrap();
    let s = State::open(d.path()).unwrap();
    let other = |sop: &str| InstanceRecord {
        study_uid: "9.9".into(),
        ..rec(sop, "dd")
    };
    s.record_instance(&rec("1.2.3.1.1", "aa")).unwrap();
    s.record_instance(&rec("1.2.3.1.2", "bb")).unwrap();
    s.record_instance(&other("9.9.1.1")).unwrap();
    let studies: Vec<String> = s.unreplicated_studies().unwrap().into_iter().collect();
    assert_eq!(studies, ["1.2.3", "9.9"]);
    assert_eq!(s.unreplicated(10, &[]).unwrap().len(), 3);
    let left: Vec<String> = s
        .unreplicated(10, &["1.2.3".to_string()])
        .unwrap()
        .into_iter()
        .map(|l| l.instance.sop_uid)
        .collect();
    assert_eq!(left, ["9.9.1.1"], "a study set aside is not offered");
    // A replacement received since (other content) is not forgotten with the old one.
    s.record_instance(&rec("1.2.3.1.1", "a2")).unwrap();
    let old = format!("{CONTENT_HASH_PREFIX}aa");
    assert!(!s.instance_replicated("1.2.3", "1.2.3.1.1", &old).unwrap());
    let new = format!("{CONTENT_HASH_PREFIX}a2");
    assert!(s.instance_replicated("1.2.3", "1.2.3.1.1", &new).unwrap());
    assert!(s
        .instance_replicated("1.2.3", "1.2.3.1.2", &format!("{CONTENT_HASH_PREFIX}bb"))
        .unwrap());
    let studies: Vec<String> = s.unreplicated_studies().unwrap().into_iter().collect();
    assert_eq!(studies, ["9.9"]);
    assert_eq!(
        s.study("1.2.3").unwrap().unwrap().state,
        super::schema::StudyState::Replicated
    );
}

/// Rows written by the version that recorded BLAKE3 byte hashes: a byte-identical re-send
/// (now carrying an identity) is unchanged, other bytes are a replacement, recorded by
/// identity; from then on the encoding no longer matters.
#[test]
fn byte_hash_rows_meet_identities() {
    use crate::store::identity::IDENTITY_PREFIX;
    let d = tempfile::tempdir().unwrap();
    let s = State::open(d.path()).unwrap();
    let mut old = rec("1.2.3.1.1", "");
    old.path = part10(d.path(), "a.dcm", b"same bytes");
    old.content_hash = content_hash(b"same bytes");
    assert_eq!(s.record_instance(&old).unwrap(), RecordOutcome::New);
    let resend = |name: &str, bytes: &[u8], identity: &str| {
        let mut r = rec("1.2.3.1.1", "");
        r.path = part10(d.path(), name, bytes);
        r.content_hash = format!("{IDENTITY_PREFIX}{identity}");
        r
    };
    assert_eq!(
        s.record_instance(&resend("b.dcm", b"same bytes", "i1"))
            .unwrap(),
        RecordOutcome::Unchanged
    );
    // Kept as recorded: the study's input did not change.
    assert_eq!(
        s.instances_of("1.2.3").unwrap()[0].content_hash,
        content_hash(b"same bytes")
    );
    assert_eq!(
        s.record_instance(&resend("c.dcm", b"other encoding", "i1"))
            .unwrap(),
        RecordOutcome::Replaced
    );
    assert_eq!(
        s.instances_of("1.2.3").unwrap()[0].content_hash,
        format!("{IDENTITY_PREFIX}i1")
    );
    assert_eq!(
        s.record_instance(&resend("d.dcm", b"a third encoding", "i1"))
            .unwrap(),
        RecordOutcome::Unchanged
    );
    assert_eq!(
        s.record_instance(&resend("e.dcm", b"a third encoding", "i2"))
            .unwrap(),
        RecordOutcome::Replaced
    );
    // An instance whose identity could not be computed is recorded by its bytes; a
    // re-send whose identity is known then compares bytes.
    let mut undecodable = rec("1.2.3.1.1", "");
    undecodable.path = part10(d.path(), "f.dcm", b"undecodable");
    undecodable.content_hash = content_hash(b"undecodable");
    assert_eq!(
        s.record_instance(&undecodable).unwrap(),
        RecordOutcome::Replaced
    );
    assert_eq!(
        s.record_instance(&undecodable).unwrap(),
        RecordOutcome::Unchanged
    );
    let mut other = undecodable.clone();
    other.content_hash = content_hash(b"undecodable, other bytes");
    assert_eq!(s.record_instance(&other).unwrap(), RecordOutcome::Replaced);
}
