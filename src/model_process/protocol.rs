//! What the node and its model process say to each other, over one Unix socket.
//!
//! Kept explicit and small: the node sends a job, the model process answers with the job's results or the reason it
//! failed. A crash is what the node sees when the answer never comes (end of stream).
//!
//! A message is a JSON header and the binary blobs it announces (the Part-10 bytes of the
//! output objects), each length-prefixed, little endian:
//! `u32 header length, header, u32 blob count, (u64 blob length, blob)*`.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::job::{OutputKind, OutputObject, ProcessedStudy, RunRecord, StudyJob};

/// Largest header accepted (a job lists a study's instances: 3,000 instances are ~1 MB).
const MAX_HEADER: u32 = 64 << 20;
/// Largest blob accepted (one output object).
const MAX_BLOB: u64 = 1 << 30;
/// Most blobs in one message (SR, KOS, card).
const MAX_BLOBS: u32 = 16;

/// From the node to the model process.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToWorker {
    /// First, before anything else: the configuration the node validated and runs with. The
    /// model process never reads the file: an invalid edit or a restart-only change on disk
    /// cannot reach it.
    Start { config: Box<Config> },
    /// A job, with the configuration in force now (live sections may have changed).
    Job {
        job_id: i64,
        job: StudyJob,
        config: Box<Config>,
    },
}

/// From the model process to the node.
#[derive(Debug, Serialize, Deserialize)]
pub enum FromWorker {
    /// Sent every [`crate::config::HEARTBEAT_EVERY_S`] from the moment the process starts:
    /// a process that stops sending it (stopped, wedged) is killed.
    Alive,
    /// The model is loaded; jobs may come.
    Ready { model: String },
    /// The model could not be loaded; the model process exits.
    LoadFailed { reason: String },
    /// A job's results: one blob per output, in `outputs` order.
    Done {
        job_id: i64,
        outputs: Vec<OutputHeader>,
        predictions_json: String,
        run: Box<RunRecord>,
        /// Seconds the model process spent on the job, so the node can tell the boundary's cost.
        seconds: f64,
    },
    /// The job failed without a crash (no usable series, a model error…).
    Failed { job_id: i64, reason: String },
}

/// An output object without its bytes.
#[derive(Debug, Serialize, Deserialize)]
pub struct OutputHeader {
    pub kind: OutputKind,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub series_instance_uid: String,
    pub study_instance_uid: String,
}

impl FromWorker {
    /// The `Done` message of a processed study, and its blobs.
    pub fn done(job_id: i64, p: ProcessedStudy, seconds: f64) -> (FromWorker, Vec<Vec<u8>>) {
        let mut blobs = Vec::with_capacity(p.outputs.len());
        let outputs = p
            .outputs
            .into_iter()
            .map(|o| {
                blobs.push(o.bytes);
                OutputHeader {
                    kind: o.kind,
                    sop_class_uid: o.sop_class_uid,
                    sop_instance_uid: o.sop_instance_uid,
                    series_instance_uid: o.series_instance_uid,
                    study_instance_uid: o.study_instance_uid,
                }
            })
            .collect();
        let msg = FromWorker::Done {
            job_id,
            outputs,
            predictions_json: p.predictions_json,
            run: Box::new(p.run),
            seconds,
        };
        (msg, blobs)
    }
}

/// The processed study a `Done` message and its blobs describe.
pub fn processed(
    outputs: Vec<OutputHeader>,
    blobs: Vec<Vec<u8>>,
    predictions_json: String,
    run: Box<RunRecord>,
) -> io::Result<ProcessedStudy> {
    if outputs.len() != blobs.len() {
        return Err(invalid(format!(
            "{} outputs announced, {} sent",
            outputs.len(),
            blobs.len()
        )));
    }
    Ok(ProcessedStudy {
        outputs: outputs
            .into_iter()
            .zip(blobs)
            .map(|(h, bytes)| OutputObject {
                kind: h.kind,
                sop_class_uid: h.sop_class_uid,
                sop_instance_uid: h.sop_instance_uid,
                series_instance_uid: h.series_instance_uid,
                study_instance_uid: h.study_instance_uid,
                bytes,
            })
            .collect(),
        predictions_json,
        run: *run,
    })
}

fn invalid(m: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, m)
}

/// Writes one message.
pub fn send<T: Serialize>(w: &mut impl Write, msg: &T, blobs: &[Vec<u8>]) -> io::Result<()> {
    let header = serde_json::to_vec(msg).map_err(|e| invalid(e.to_string()))?;
    let len = u32::try_from(header.len())
        .ok()
        .filter(|&n| n <= MAX_HEADER)
        .ok_or_else(|| invalid(format!("header of {} bytes", header.len())))?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(&header)?;
    w.write_all(&(blobs.len() as u32).to_le_bytes())?;
    for b in blobs {
        w.write_all(&(b.len() as u64).to_le_bytes())?;
        w.write_all(b)?;
    }
    w.flush()
}

/// Reads one message. Lengths are checked before anything is allocated from them: the
/// peer may be a process that is dying.
pub fn receive<T: for<'de> Deserialize<'de>>(r: &mut impl Read) -> io::Result<(T, Vec<Vec<u8>>)> {
    let mut n4 = [0u8; 4];
    r.read_exact(&mut n4)?;
    let len = u32::from_le_bytes(n4);
    if len > MAX_HEADER {
        return Err(invalid(format!("header of {len} bytes")));
    }
    let mut header = vec![0u8; len as usize];
    r.read_exact(&mut header)?;
    let msg = serde_json::from_slice(&header).map_err(|e| invalid(e.to_string()))?;
    r.read_exact(&mut n4)?;
    let count = u32::from_le_bytes(n4);
    if count > MAX_BLOBS {
        return Err(invalid(format!("{count} blobs")));
    }
    let mut blobs = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let mut n8 = [0u8; 8];
        r.read_exact(&mut n8)?;
        let n = u64::from_le_bytes(n8);
        if n > MAX_BLOB {
            return Err(invalid(format!("blob of {n} bytes")));
        }
        let mut b = Vec::new();
        r.take(n).read_to_end(&mut b)?;
        if b.len() as u64 != n {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        blobs.push(b);
    }
    Ok((msg, blobs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobInstance;

    #[test]
    fn messages_round_trip() {
        let job = StudyJob {
            study_instance_uid: "1.2.3".into(),
            instances: vec![JobInstance {
                path: "/spool/a.dcm".into(),
                sop_class_uid: "1.2.840.10008.5.1.4.1.1.4".into(),
                sop_instance_uid: "1.2.3.4".into(),
                series_instance_uid: "1.2.3.5".into(),
                modality: "MR".into(),
                content_hash: "blake3:00".into(),
            }],
            input_set_hash: [7; 32],
            predecessors: vec![],
            forced_complete: true,
            attempt: 2,
            set_aside: Vec::new(),
        };
        let mut buf = Vec::new();
        send(
            &mut buf,
            &ToWorker::Job {
                job_id: 9,
                job: job.clone(),
                config: Box::new(crate::study::policy::tests::example_config()),
            },
            &[],
        )
        .unwrap();
        let (msg, blobs) = receive(&mut buf.as_slice()).unwrap();
        let ToWorker::Job {
            job_id,
            job: got,
            config,
        } = msg
        else {
            panic!("not a job")
        };
        assert_eq!((job_id, got, blobs.len()), (9, job, 0));
        // The configuration crosses whole: what the node validated is what the model
        // process runs with.
        assert_eq!(*config, crate::study::policy::tests::example_config());

        let p = ProcessedStudy {
            outputs: vec![OutputObject {
                kind: OutputKind::Kos,
                sop_class_uid: "1.2".into(),
                sop_instance_uid: "1.3".into(),
                series_instance_uid: "1.4".into(),
                study_instance_uid: "1.2.3".into(),
                bytes: vec![1, 2, 3],
            }],
            predictions_json: "{}".into(),
            run: crate::job::RunRecord {
                study: "1.2.3".into(),
                vqvae_gflop: 0.1 + 0.2,
                ..Default::default()
            },
        };
        let (msg, blobs) = FromWorker::done(9, p.clone(), 0.5);
        let mut buf = Vec::new();
        send(&mut buf, &msg, &blobs).unwrap();
        let (m, blobs) = receive::<FromWorker>(&mut buf.as_slice()).unwrap();
        let FromWorker::Done {
            outputs,
            predictions_json,
            run,
            ..
        } = m
        else {
            panic!("not Done")
        };
        assert_eq!(processed(outputs, blobs, predictions_json, run).unwrap(), p);
    }

    #[test]
    fn a_cut_or_oversized_message_is_an_error_not_an_allocation() {
        let mut buf = Vec::new();
        send(
            &mut buf,
            &FromWorker::Ready { model: "m".into() },
            &[vec![0; 10]],
        )
        .unwrap();
        for cut in [1, 5, buf.len() - 3] {
            assert!(receive::<FromWorker>(&mut &buf[..cut]).is_err());
        }
        let mut huge = (MAX_HEADER + 1).to_le_bytes().to_vec();
        huge.extend([0; 8]);
        assert!(receive::<FromWorker>(&mut huge.as_slice()).is_err());
    }
}
