//! Beyond one machine (`[cluster]`, docs/cluster.md): ingest nodes and model workers over
//! NATS JetStream. JetStream does what a home-made cluster would get wrong: replicated
//! streams (the job queue: explicit acks, redelivery, a delivery limit, publish
//! de-duplication), a key-value store with compare-and-set (the study and result records),
//! and an object store (the instance and output bytes).
//!
//! Who decides what:
//! - an ingest node keeps today's durable spool (Success after the local fsync), replicates
//!   each instance to the object store, records it in the study's KV record, and only then
//!   forgets its local copy ([`ingest`]);
//! - any ingest node may decide a study complete from the KV record (the assembler's rules
//!   over the arrivals on every node) and publish its job: the record's compare-and-set
//!   and the publish de-duplication id (study UID + input hash) make it one job per input;
//! - a worker takes a job with an explicit ack, reports progress while the model runs,
//!   and publishes the outputs (deterministic UIDs) before it acks ([`worker`]);
//! - one ingest node at a time claims a result (compare-and-set, a renewed lease) and sends
//!   it through its outbox, as the single node does.
//!
//! With `[cluster]` absent none of this runs: the single node is unchanged.

pub mod ingest;
mod objects;
pub mod reads;
pub mod records;
pub mod tracked;
pub mod view;
pub mod worker;

pub use objects::Objects;

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, object_store, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use tracing::{info, warn};

use crate::config::ClusterSection;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("NATS: {0}")]
    Nats(String),
    #[error("record {key}: {message}")]
    Record { key: String, message: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// This node's own SQLite state, not the cluster's.
    #[error("local state: {0}")]
    LocalState(#[from] crate::store::state::StateError),
    #[error("cannot persist outputs: {0}")]
    Outbox(#[source] crate::store::spool::SpoolError),
}

pub(crate) fn nats<E: std::fmt::Display>(e: E) -> ClusterError {
    ClusterError::Nats(e.to_string())
}

/// A NATS error with what was being done (an administrator reads "timed out" as nothing).
pub(crate) fn nats_at<E: std::fmt::Display>(
    what: impl std::fmt::Display,
) -> impl FnOnce(E) -> ClusterError {
    move |e| ClusterError::Nats(format!("{what}: {e}"))
}

/// The servers' `max_payload` we configure and recommend (records and jobs list every
/// instance of a study).
pub const RECOMMENDED_MAX_PAYLOAD: usize = 8 * 1024 * 1024;

/// The durable pull consumer every worker shares: one queue, each job to one worker.
pub const WORKERS_CONSUMER: &str = "prima-workers";

/// Connected handles to everything the cluster keeps.
#[derive(Clone)]
pub struct Cluster {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub studies: kv::Store,
    /// The ingest nodes' announcements ([`records::NodeRecord`]): `<studies_bucket>-nodes`.
    pub nodes: kv::Store,
    pub results: kv::Store,
    pub instances: Objects,
    pub outputs: Objects,
    pub section: ClusterSection,
    /// This node's name in claims and records.
    pub node: String,
    /// The server may accept two updates with one expected revision: a check after each
    /// update is ordered after any rival ([`Cluster::modify`]).
    pub cas_barrier: bool,
}

impl Cluster {
    pub fn jobs_subject(&self) -> String {
        jobs_subject(&self.section)
    }

    /// Read a JSON record with its revision (any replica, else the stream leader:
    /// [`reads`]).
    pub async fn read<T: serde::de::DeserializeOwned>(
        &self,
        bucket: &kv::Store,
        key: &str,
    ) -> Result<Option<(T, u64)>, ClusterError> {
        match self.read_json(bucket, key, Replica::Any).await? {
            Some((v, rev)) => Ok(Some((record_from(key, v)?, rev))),
            None => Ok(None),
        }
    }

    async fn read_json(
        &self,
        bucket: &kv::Store,
        key: &str,
        from: Replica,
    ) -> Result<Option<(serde_json::Value, u64)>, ClusterError> {
        let subject = format!("{}{key}", bucket.prefix);
        let m = match from {
            Replica::Any => reads::last_for_subject(&bucket.stream, &subject).await?,
            Replica::Leader => reads::last_from_leader(&bucket.stream, &subject).await?,
        };
        let Some(m) = m.filter(|m| !reads::is_kv_delete(m)) else {
            return Ok(None);
        };
        let v = serde_json::from_slice(&m.payload).map_err(|err| ClusterError::Record {
            key: key.into(),
            message: err.to_string(),
        })?;
        Ok(Some((v, m.sequence)))
    }

    /// Change a record by compare-and-set: `f` sees the current value (or `None`) and
    /// returns the new one, or `None` to leave it; on a concurrent change it runs again on
    /// the newer value. Returns the value written (or the one left).
    ///
    /// A successful update is checked, not trusted: nats-server 2.9 may accept two updates
    /// made with the same expected revision (nats-server#4320), and the second then erases
    /// the first. Each write carries a fresh id in the record's [`CAS_LOG`], copied forward
    /// by every later write; the stream leader's copy must list ours, or the change is
    /// made again on the record as it stands. `f` must therefore be safe to apply again.
    pub async fn modify<T, F>(
        &self,
        bucket: &kv::Store,
        key: &str,
        mut f: F,
    ) -> Result<Option<T>, ClusterError>
    where
        T: serde::Serialize + serde::de::DeserializeOwned + Clone,
        F: FnMut(Option<T>) -> Option<T>,
    {
        // After a lost race the next read goes to the leader: the replica that answered
        // may be behind, and would lose every race again.
        let mut from = Replica::Any;
        for _ in 0..50 {
            let cur = self.read_json(bucket, key, from).await?;
            from = Replica::Leader;
            let (old, log, rev) = match cur {
                Some((v, r)) => {
                    let log = cas_log(&v);
                    (Some(record_from::<T>(key, v)?), log, Some(r))
                }
                None => (None, Vec::new(), None),
            };
            let Some(new) = f(old.clone()) else {
                return Ok(old);
            };
            let id = uuid::Uuid::new_v4().simple().to_string();
            let bytes = Bytes::from(with_cas_log(key, &new, log, &id)?);
            self.fits(key, bytes.len())?;
            let written = match rev {
                Some(r) => bucket.update(key, bytes, r).await.map_err(|e| {
                    // Servers from 2.10 answer with another error code than the one the
                    // client maps to `WrongLastRevision`.
                    let stale = e.kind() == kv::UpdateErrorKind::WrongLastRevision
                        || e.to_string().contains("wrong last sequence");
                    (stale, nats_at(format_args!("updating {key}"))(e))
                }),
                None => bucket.create(key, bytes).await.map_err(|e| {
                    let exists = e.kind() == kv::CreateErrorKind::AlreadyExists
                        || e.to_string().contains("wrong last sequence");
                    (exists, nats_at(format_args!("creating {key}"))(e))
                }),
            };
            match written {
                Ok(_) => {
                    if self.stands(bucket, key, &id).await? {
                        return Ok(Some(new));
                    }
                    warn!(%key, "a compare-and-set the server accepted was overwritten by a concurrent one (nats-server#4320, fixed in 2.10): change made again");
                    crate::metrics::get().cluster_event("cas_lost");
                }
                Err((true, _)) => continue,
                Err((false, e)) => return Err(e),
            }
        }
        Err(ClusterError::Record {
            key: key.into(),
            message: "changed concurrently 50 times in a row".into(),
        })
    }

    /// Whether the write with this id is part of the record as the leader has it.
    ///
    /// On a server with the double-accept bug the rival update is proposed before ours is
    /// applied, but may be applied after the leader answered our read. A write of our own
    /// to the same stream, made now, is ordered after the rival in the leader's log: once
    /// it is acknowledged, the rival is applied and the read below sees it.
    async fn stands(&self, bucket: &kv::Store, key: &str, id: &str) -> Result<bool, ClusterError> {
        if self.cas_barrier {
            bucket
                .put(format!("{CAS_BARRIER}{}", self.node), Bytes::new())
                .await
                .map_err(nats_at(format_args!("checking the update of {key}")))?;
        }
        Ok(self
            .read_json(bucket, key, Replica::Leader)
            .await?
            .is_some_and(|(v, _)| cas_log(&v).iter().any(|w| w == id)))
    }

    /// A record must fit in one NATS message. A study record holds every instance (about
    /// 450 bytes each): the server's default `max_payload` of 1 MiB holds about 2,300, the
    /// 8 MiB we configure about 18,000 (docs/cluster.md).
    pub fn fits(&self, key: &str, len: usize) -> Result<(), ClusterError> {
        let max = self.client.server_info().max_payload;
        if max > 0 && len > max {
            return Err(ClusterError::Record {
                key: key.into(),
                message: format!(
                    "{len} bytes, over the NATS server's max_payload of {max}: raise max_payload in the servers' configuration"
                ),
            });
        }
        Ok(())
    }

    /// Every key of a bucket (a study or result pass). Read from the stream's subject
    /// index (one request to the stream leader), not with `Store::keys`: that creates an
    /// ephemeral consumer, which nats-server 2.9 may place on a dead peer, so a third of the
    /// listings time out while one server of three is down.
    pub async fn keys(&self, bucket: &kv::Store) -> Result<Vec<String>, ClusterError> {
        let name = bucket_name(bucket);
        let stream = self
            .js
            .get_stream(format!("KV_{name}"))
            .await
            .map_err(nats_at(format_args!("bucket {name} info")))?;
        let prefix = format!("$KV.{name}.");
        let mut subjects = stream
            .info_with_subjects(format!("{prefix}>"))
            .await
            .map_err(nats_at(format_args!("listing keys of {name}")))?;
        let mut out = Vec::new();
        while let Some(s) = subjects.next().await {
            let (subject, _) = s.map_err(nats_at(format_args!("listing keys of {name}")))?;
            if let Some(k) = subject.strip_prefix(&prefix) {
                if k.starts_with(CAS_BARRIER) {
                    continue;
                }
                out.push(k.to_string());
            }
        }
        out.sort();
        Ok(out)
    }
}

/// Keys of the per-node writes that order a check after a rival update (not records).
pub const CAS_BARRIER: &str = "cas-barrier.";

/// Whether a server of this version may accept two updates with one expected revision
/// (nats-server#4320: releases before 2.10).
pub fn double_accepts(version: &str) -> bool {
    let mut parts = version.trim_start_matches('v').split('.');
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor) < (2, 10)
}

/// Which copy of a record to read.
#[derive(Clone, Copy)]
enum Replica {
    /// Whichever answers (the leader when none does).
    Any,
    /// The stream leader: every acknowledged write.
    Leader,
}

/// The field of a record's JSON that lists the ids of its last writes (readers of the
/// record type ignore it).
pub const CAS_LOG: &str = "cas_log";
/// Write ids kept: a write is checked right after it is made, when fewer than this many
/// writes can have followed it.
const CAS_LOG_LEN: usize = 16;

fn record_from<T: serde::de::DeserializeOwned>(
    key: &str,
    v: serde_json::Value,
) -> Result<T, ClusterError> {
    serde_json::from_value(v).map_err(|e| ClusterError::Record {
        key: key.into(),
        message: e.to_string(),
    })
}

fn cas_log(v: &serde_json::Value) -> Vec<String> {
    v.get(CAS_LOG)
        .and_then(|l| l.as_array())
        .map(|l| {
            l.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// `new` as JSON with the write log: the previous value's ids and this write's.
fn with_cas_log<T: serde::Serialize>(
    key: &str,
    new: &T,
    mut log: Vec<String>,
    id: &str,
) -> Result<Vec<u8>, ClusterError> {
    let bad = |e: serde_json::Error| ClusterError::Record {
        key: key.into(),
        message: e.to_string(),
    };
    let mut v = serde_json::to_value(new).map_err(bad)?;
    log.push(id.to_string());
    let skip = log.len().saturating_sub(CAS_LOG_LEN);
    log.drain(..skip);
    if let Some(o) = v.as_object_mut() {
        o.insert(CAS_LOG.into(), serde_json::json!(log));
    }
    serde_json::to_vec(&v).map_err(bad)
}

/// A KV bucket's name (its stream is `KV_<name>`).
fn bucket_name(bucket: &kv::Store) -> &str {
    bucket
        .stream_name
        .strip_prefix("KV_")
        .unwrap_or(&bucket.stream_name)
}

pub fn jobs_subject(c: &ClusterSection) -> String {
    format!("{}.study", c.jobs_stream.to_ascii_lowercase())
}

/// Connect and make sure every stream and bucket exists (created with `replicas`).
pub async fn connect(c: &ClusterSection, ae_title: &str) -> Result<Cluster, ClusterError> {
    let node = c.node_name(ae_title);
    let mut opts = match &c.credentials {
        Some(p) => async_nats::ConnectOptions::with_credentials_file(p.clone())
            .await
            .map_err(nats)?,
        None => async_nats::ConnectOptions::new(),
    };
    opts = opts
        .name(format!("prima-node {node}"))
        .connection_timeout(Duration::from_secs(3))
        // A JetStream API request is answered in milliseconds; one that went to a stream
        // leader silenced by a partition waits this long before the next pass asks the
        // newly elected one (10 s cost every pass that long under a cut).
        .request_timeout(Some(Duration::from_secs(5)))
        .max_reconnects(None);
    if let Some(ca) = &c.tls_ca {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&c.tls_certificate, &c.tls_private_key) {
        opts = opts.add_client_certificate(cert.clone(), key.clone());
    }
    let servers: Vec<async_nats::ServerAddr> = c
        .servers
        .iter()
        .map(|s| s.parse().map_err(nats))
        .collect::<Result<_, _>>()?;
    let client = opts.connect(servers).await.map_err(nats)?;
    let js = jetstream::new(client.clone());
    let max_age = if c.keep_days > 0.0 {
        Duration::from_secs_f64(c.keep_days * 86400.0)
    } else {
        Duration::ZERO
    };
    let studies = ensure_kv(&js, &c.studies_bucket, c.replicas, max_age).await?;
    let nodes = ensure_kv(&js, &c.nodes_bucket(), c.replicas, max_age).await?;
    let results = ensure_kv(&js, &c.results_bucket, c.replicas, max_age).await?;
    let instances = ensure_objects(&js, &c.instances_bucket, c.replicas, max_age).await?;
    let outputs = ensure_objects(&js, &c.outputs_bucket, c.replicas, max_age).await?;
    ensure_jobs(&js, c, max_age).await?;
    let info = client.server_info();
    let max_payload = info.max_payload;
    info!(node = %node, servers = ?c.servers, max_payload, server_version = %info.version, "connected to the cluster");
    let cas_barrier = double_accepts(&info.version);
    if cas_barrier {
        warn!(
            server_version = %info.version,
            "this nats-server may accept two compare-and-set updates of one record (nats-server#4320): each update is checked at the cost of one more write; upgrade the servers to 2.10 or later (docs/cluster.md)"
        );
    }
    if max_payload < RECOMMENDED_MAX_PAYLOAD {
        warn!(
            max_payload,
            recommended = RECOMMENDED_MAX_PAYLOAD,
            "the NATS servers' max_payload limits a study record (and a job) to about {} instances: set max_payload: 8MB (docs/cluster.md)",
            max_payload / 450
        );
    }
    Ok(Cluster {
        client,
        js,
        studies,
        nodes,
        results,
        instances,
        outputs,
        section: c.clone(),
        node,
        cas_barrier,
    })
}

async fn ensure_kv(
    js: &jetstream::Context,
    bucket: &str,
    replicas: usize,
    max_age: Duration,
) -> Result<kv::Store, ClusterError> {
    if let Ok(s) = js.get_key_value(bucket).await {
        return Ok(s);
    }
    // The bucket's stream as `create_key_value` would make it. That call first reads the
    // account info, which async-nats 0.52 cannot parse from Debian's nats-server 2.9
    // (`reserved_memory` missing), so the stream is created directly: same name, subjects
    // and limits, which is all a KV bucket is.
    let made = js
        .create_stream(stream::Config {
            name: format!("KV_{bucket}"),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_age,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await;
    match made {
        Ok(_) => js.get_key_value(bucket).await.map_err(nats),
        // Another node created it meanwhile.
        Err(e) => js.get_key_value(bucket).await.map_err(|_| nats(e)),
    }
}

async fn ensure_objects(
    js: &jetstream::Context,
    bucket: &str,
    replicas: usize,
    max_age: Duration,
) -> Result<Objects, ClusterError> {
    let store = match js.get_object_store(bucket).await {
        Ok(s) => s,
        Err(_) => {
            let made = js
                .create_object_store(object_store::Config {
                    bucket: bucket.into(),
                    max_age,
                    storage: stream::StorageType::File,
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await;
            match made {
                Ok(s) => s,
                // Another node created it meanwhile.
                Err(e) => js.get_object_store(bucket).await.map_err(|_| nats(e))?,
            }
        }
    };
    let stream = js
        .get_stream(format!("OBJ_{bucket}"))
        .await
        .map_err(nats_at(format_args!("object bucket {bucket} info")))?;
    Ok(Objects {
        bucket: bucket.into(),
        store,
        stream,
        js: js.clone(),
    })
}

async fn ensure_jobs(
    js: &jetstream::Context,
    c: &ClusterSection,
    max_age: Duration,
) -> Result<(), ClusterError> {
    let s = js
        .get_or_create_stream(stream::Config {
            name: c.jobs_stream.clone(),
            subjects: vec![jobs_subject(c)],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            num_replicas: c.replicas,
            max_age,
            // Deciders on several ingest nodes may publish the same job within this window;
            // beyond it the study record's published input already says so.
            duplicate_window: Duration::from_secs(600),
            ..Default::default()
        })
        .await
        .map_err(nats)?;
    let want = consumer::pull::Config {
        durable_name: Some(WORKERS_CONSUMER.into()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs_f64(c.ack_wait_s),
        max_deliver: c.max_deliver as i64,
        ..Default::default()
    };
    match s
        .get_consumer::<consumer::pull::Config>(WORKERS_CONSUMER)
        .await
    {
        Ok(_) => {}
        Err(_) => {
            if let Err(e) = s.create_consumer(want).await {
                // Created by another node meanwhile?
                s.get_consumer::<consumer::pull::Config>(WORKERS_CONSUMER)
                    .await
                    .map_err(|_| nats(e))?;
            }
        }
    }
    Ok(())
}

/// A cluster thread's own runtime (one I/O thread) and its connection, retried until it
/// works or `stop` is set. `None` when stopped first, or when no runtime could be made
/// (logged with `without`: what then does not happen).
pub fn start(
    cfg: &crate::config::Config,
    stop: &std::sync::atomic::AtomicBool,
    without: &str,
) -> Option<(tokio::runtime::Runtime, Cluster)> {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("prima-cluster-io")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the cluster runtime: {without}");
            return None;
        }
    };
    let section = cfg.cluster.as_ref()?;
    let cl = rt.block_on(connect_until_ready(section, &cfg.node.ae_title, stop))?;
    Some((rt, cl))
}

/// Connect, retrying every few seconds until it works or `stop` is set (the cluster may
/// start after the node; an ingest node keeps receiving meanwhile).
pub async fn connect_until_ready(
    c: &ClusterSection,
    ae_title: &str,
    stop: &std::sync::atomic::AtomicBool,
) -> Option<Cluster> {
    let mut logged = false;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        match tokio::time::timeout(Duration::from_secs(30), connect(c, ae_title)).await {
            Ok(Ok(cl)) => return Some(cl),
            Ok(Err(e)) => {
                if !logged {
                    warn!(error = %e, "cluster not reachable yet: retrying (instances stay in the local spool)");
                    logged = true;
                }
            }
            Err(_) => {
                if !logged {
                    warn!("cluster connection timed out: retrying");
                    logged = true;
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    None
}
