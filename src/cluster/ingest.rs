//! An ingest node's part of the cluster, on its own thread: replicate what the spool holds,
//! decide studies complete from the cluster's view, deliver the results it claims.
//!
//! Each pass is idempotent, so a crash anywhere is repaired by the next pass after the
//! restart: an instance is forgotten locally only after its object and its KV entry are
//! acknowledged (replicated to a quorum); a job is published with the de-duplication id
//! before the study record says so; a result is queued in the local outbox once, and
//! marked delivered only when the outbox has sent it to every destination.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use tracing::{debug, error, info, info_span, warn, Instrument};

use super::records::{
    decide, holders, instance_object, node_key, study_key, Decision, InstanceEntry, NodeRecord,
    NodeState, ResultRecord, ResultState, StudyRecord,
};
use super::tracked::Bucket;
use super::{nats, nats_at, Cluster, ClusterError};
use crate::config::SharedConfig;
use crate::net::fence::{self, Fence};
use crate::store::outbox::Outbox;
use crate::store::state::{now_ms, LocalInstance, OutboxState, OutputRow, State, StudyState};

pub struct IngestCtx {
    pub state: Arc<State>,
    pub outbox: Outbox,
    pub config: SharedConfig,
    /// Wakes the sender when claimed results are queued.
    pub wake_sender: Sender<()>,
    /// Signalled on every recorded arrival.
    pub arrivals: Receiver<()>,
    /// Where the cluster view for the status page is kept.
    pub snapshot: super::view::SharedSnapshot,
    /// What the sender may send: the objects of the claims this node holds.
    pub fence: Fence,
}

/// How often the cluster view for the status page is refreshed.
const VIEW_INTERVAL: Duration = Duration::from_secs(5);

/// Instances replicated per pass (the rest wait for the next, a few ms later).
const REPLICATE_BATCH: usize = 256;
/// Longest wait between passes: other nodes' arrivals and results are seen this late.
const PASS_INTERVAL: Duration = Duration::from_millis(250);

pub fn spawn(
    ctx: IngestCtx,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("prima-cluster".into())
        .spawn(move || run(ctx, stop))
}

fn run(ctx: IngestCtx, stop: Arc<AtomicBool>) {
    let cfg = ctx.config.get();
    let section = cfg.cluster.clone().expect("[cluster] present");
    let Some((rt, cl)) = super::start(&cfg, &stop, "nothing is replicated") else {
        return;
    };
    let _advisories = rt.spawn(super::view::watch_max_deliveries(cl.clone()));
    let mut failing = false;
    let mut viewed: Option<std::time::Instant> = None;
    let mut known = Known {
        studies: Bucket::new(&section.studies_bucket),
        results: Bucket::new(&section.results_bucket),
        aside: SetAside::new(),
        announced: None,
        heard: HashMap::new(),
    };
    if section.node_silent_s >= cfg.assembly.quiet_period_s {
        warn!(
            node_silent_s = section.node_silent_s,
            quiet_period_s = cfg.assembly.quiet_period_s,
            "[cluster] node_silent_s is not shorter than the quiet period: a study may be decided before an ingest node cut off in the middle of it is known to be unreachable"
        );
    }
    while !stop.load(Ordering::SeqCst) {
        let r = rt.block_on(pass(&ctx, &cl, &mut known));
        if viewed.is_none_or(|t| t.elapsed() >= VIEW_INTERVAL) {
            viewed = Some(std::time::Instant::now());
            let got = rt.block_on(async {
                tokio::time::timeout(
                    Duration::from_secs(10),
                    super::view::view_known(&cl, &known.studies, &known.results),
                )
                .await
            });
            if let Ok(mut snap) = ctx.snapshot.lock() {
                match got {
                    Ok(Ok(v)) => {
                        snap.view = Some(v);
                        snap.taken_ms = now_ms();
                        snap.error = None;
                    }
                    Ok(Err(e)) => snap.error = Some(e.to_string()),
                    Err(_) => snap.error = Some("timed out after 10 s".into()),
                }
            }
        }
        match r {
            Ok(()) => {
                if failing {
                    info!("cluster reachable again");
                }
                failing = false;
            }
            Err(e) => {
                if !failing {
                    warn!(error = %e, "cluster pass failed: retrying (instances stay in the local spool)");
                }
                failing = true;
            }
        }
        let wait = if failing {
            Duration::from_secs(1)
        } else {
            PASS_INTERVAL
        };
        let _ = ctx.arrivals.recv_timeout(wait);
    }
    // The last announcement: a node that stopped with nothing pending holds nothing, and
    // no study need wait for it.
    let done = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), announce_stop(&ctx, &cl)).await
    });
    if !matches!(done, Ok(Ok(()))) {
        warn!("could not announce this node's stop to the cluster: studies it sent instances of wait up to partition_wait_s for it");
    }
}

/// What this node knows of the cluster's records (see [`Bucket`]).
struct Known {
    studies: Bucket<StudyRecord>,
    results: Bucket<ResultRecord>,
    aside: SetAside,
    /// What this node last announced, and when.
    announced: Option<(std::collections::BTreeSet<String>, std::time::Instant)>,
    /// Each ingest node's last announcement time as this node saw it change.
    heard: HashMap<String, (i64, std::time::Instant)>,
}

/// An unchanged announcement is written again this often (its time shows the node alive):
/// three times within `node_silent_s`.
fn announce_every(cl: &Cluster) -> Duration {
    Duration::from_secs_f64((cl.section.node_silent_s / 3.0).max(0.2))
}

/// Tell the cluster which studies this node holds instances of that are not replicated
/// yet ([`NodeRecord`]), before replicating them and again after.
async fn announce(ctx: &IngestCtx, cl: &Cluster, known: &mut Known) -> Result<(), ClusterError> {
    let pending = ctx.state.unreplicated_studies()?;
    if known
        .announced
        .as_ref()
        .is_some_and(|(p, t)| *p == pending && t.elapsed() < announce_every(cl))
    {
        return Ok(());
    }
    let rec = NodeRecord {
        node: cl.node.clone(),
        updated_ms: now_ms(),
        pending: pending.clone(),
        stopped: false,
    };
    let bytes = Bytes::from(serde_json::to_vec(&rec).map_err(nats)?);
    cl.nodes
        .put(node_key(&cl.node), bytes)
        .await
        .map_err(nats_at("announcing this node's unreplicated studies"))?;
    known.announced = Some((pending, std::time::Instant::now()));
    Ok(())
}

async fn announce_stop(ctx: &IngestCtx, cl: &Cluster) -> Result<(), ClusterError> {
    let rec = NodeRecord {
        node: cl.node.clone(),
        updated_ms: now_ms(),
        pending: ctx.state.unreplicated_studies()?,
        stopped: true,
    };
    let bytes = Bytes::from(serde_json::to_vec(&rec).map_err(nats)?);
    cl.nodes
        .put(node_key(&cl.node), bytes)
        .await
        .map_err(nats_at("announcing this node's stop"))?;
    Ok(())
}

/// Every ingest node's announcement, and whether it is heard from: this node always; another
/// while its announcement is younger than `node_silent_s`, by its own clock and by this
/// node's (it must also have changed within that time as this node saw it), so that
/// neither a clock ahead nor a stalled writer passes for alive.
async fn node_states(cl: &Cluster, known: &mut Known) -> Result<Vec<NodeState>, ClusterError> {
    let silent_ms = (cl.section.node_silent_s * 1000.0) as i64;
    let now = now_ms();
    let mut out = Vec::new();
    for key in cl.keys(&cl.nodes).await? {
        let Some((rec, _)) = cl.read::<NodeRecord>(&cl.nodes, &key).await? else {
            continue;
        };
        let heard = known
            .heard
            .entry(rec.node.clone())
            .or_insert((rec.updated_ms, std::time::Instant::now()));
        if heard.0 != rec.updated_ms {
            *heard = (rec.updated_ms, std::time::Instant::now());
        }
        let unchanged_ms = heard.1.elapsed().as_millis() as i64;
        let me = rec.node == cl.node;
        let reachable =
            me || (now - rec.updated_ms < silent_ms && unchanged_ms < silent_ms && !rec.stopped);
        let last_seen_ms = rec.updated_ms.min(now - unchanged_ms);
        out.push(NodeState {
            record: rec,
            reachable,
            last_seen_ms,
        });
    }
    Ok(out)
}

async fn pass(ctx: &IngestCtx, cl: &Cluster, known: &mut Known) -> Result<(), ClusterError> {
    announce(ctx, cl, known).await?;
    // Deliveries first: a result sent must be marked delivered (and a lease renewed)
    // before anything else of a slow pass, or the lease may run out and another node
    // send the result again.
    known.results.refresh(cl).await?;
    deliver_all(ctx, cl, &known.results).await?;
    while replicate(ctx, cl, &mut known.aside).await? == REPLICATE_BATCH {}
    announce(ctx, cl, known).await?;
    known.studies.refresh(cl).await?;
    let nodes = node_states(cl, known).await?;
    decide_all(ctx, cl, &known.studies, &nodes).await?;
    Ok(())
}

/// Replicate what the local spool holds; returns how many instances were handled.
/// Studies whose replication failed for a reason of their own (a record too large): left
/// aside for a while, so they do not hold up the others; their instances stay spooled.
type SetAside = std::collections::HashMap<String, std::time::Instant>;
const SET_ASIDE_FOR: Duration = Duration::from_secs(300);

async fn replicate(
    ctx: &IngestCtx,
    cl: &Cluster,
    aside: &mut SetAside,
) -> Result<usize, ClusterError> {
    aside.retain(|_, t| t.elapsed() < SET_ASIDE_FOR);
    let exclude: Vec<String> = aside.keys().cloned().collect();
    let local = ctx.state.unreplicated(REPLICATE_BATCH, &exclude)?;
    let n = local.len();
    let mut by_study: BTreeMap<String, Vec<LocalInstance>> = BTreeMap::new();
    for li in local {
        by_study.entry(li.study_uid.clone()).or_default().push(li);
    }
    for (study, list) in by_study {
        let span = info_span!("study", study = %study);
        match replicate_study(ctx, cl, &study, list)
            .instrument(span)
            .await
        {
            Ok(()) => {}
            Err(e @ ClusterError::Record { .. }) => {
                error!(study = %study, error = %e, "study not replicated (its instances stay in the local spool); tried again in 5 minutes");
                aside.insert(study, std::time::Instant::now());
            }
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

async fn replicate_study(
    ctx: &IngestCtx,
    cl: &Cluster,
    study: &str,
    list: Vec<LocalInstance>,
) -> Result<(), ClusterError> {
    let mut entries = Vec::new();
    for li in &list {
        let i = &li.instance;
        let file = match std::fs::File::open(&i.path) {
            Ok(f) => f,
            Err(e) => {
                // The rescan at start forgets rows whose file is gone; here it was removed
                // under us (by hand?): the row cannot be replicated.
                error!(sop = %i.sop_uid, path = %i.path.display(), error = %e, "spooled instance unreadable: not replicated");
                let _ = ctx.state.forget_instance(&i.sop_uid);
                continue;
            }
        };
        let object = instance_object(study, &i.sop_uid, &i.content_hash);
        cl.instances.put_file(&object, file).await?;
        entries.push((
            i.sop_uid.clone(),
            InstanceEntry {
                series_uid: i.series_uid.clone(),
                sop_class_uid: i.sop_class_uid.clone(),
                modality: i.modality.clone(),
                content_hash: i.content_hash.clone(),
                object,
                size: li.size,
                node: cl.node.clone(),
                received_ms: li.received_ms,
            },
        ));
    }
    if entries.is_empty() {
        return Ok(());
    }
    // The arrival time that counts is when the cluster saw the instance: an instance
    // replicated late (the cluster was down) must still hold the study open.
    let now = now_ms();
    let mut changed = 0;
    cl.modify(
        &cl.studies,
        &study_key(study),
        |cur: Option<StudyRecord>| {
            let mut rec = cur.unwrap_or_else(|| StudyRecord::new(study, now));
            changed = 0;
            for (uid, e) in &entries {
                if rec.add(uid, e.clone(), now) {
                    changed += 1;
                }
            }
            (changed > 0).then_some(rec)
        },
    )
    .await?;
    for (li, _) in list.iter().zip(0..) {
        let i = &li.instance;
        if !entries.iter().any(|(u, _)| *u == i.sop_uid) {
            continue;
        }
        match ctx
            .state
            .instance_replicated(study, &i.sop_uid, &i.content_hash)
        {
            Ok(true) => {
                let _ = std::fs::remove_file(&i.path);
            }
            // A replacement arrived meanwhile: it is replicated in its turn.
            Ok(false) => {}
            Err(e) => warn!(error = %e, "cannot record the replication (it is repeated)"),
        }
    }
    info!(
        instances = entries.len(),
        new_or_changed = changed,
        "instances replicated to the cluster"
    );
    Ok(())
}

/// Decide every study that is receiving. `apply` re-checks each decision against the
/// record as it is then (compare-and-set), so a record changed since it was read is not
/// decided on stale data.
async fn decide_all(
    ctx: &IngestCtx,
    cl: &Cluster,
    studies: &Bucket<StudyRecord>,
    nodes: &[NodeState],
) -> Result<(), ClusterError> {
    let cfg = ctx.config.get();
    for rec in studies.open.values() {
        let now = now_ms();
        let h = holders(rec, nodes);
        let Some(d) = decide(rec, &cfg, now, &h) else {
            continue;
        };
        let span = info_span!("study", study = %rec.study_uid);
        if let (Decision::Wait(until), Some(u)) = (&d, &h.unreachable) {
            let _g = span.enter();
            debug!(nodes = ?u.nodes, decide_by_ms = until - now, "waiting for unreachable ingest nodes that may hold instances of the study");
        }
        apply(cl, rec, d).instrument(span).await?;
    }
    Ok(())
}

async fn apply(cl: &Cluster, rec: &StudyRecord, d: Decision) -> Result<(), ClusterError> {
    let last = rec.last_ms;
    match d {
        Decision::Wait(_) => Ok(()),
        Decision::Settle { state, reason } => {
            let done = cl
                .modify(
                    &cl.studies,
                    &study_key(&rec.study_uid),
                    |cur: Option<StudyRecord>| {
                        let mut r = cur?;
                        if r.state != StudyState::Receiving || r.last_ms != last {
                            return None;
                        }
                        r.state = state;
                        r.reason = Some(reason.clone());
                        r.updated_ms = now_ms();
                        Some(r)
                    },
                )
                .await?;
            if done.is_some_and(|r| r.state == state) {
                info!(state = %state, %reason, "study settled without a job");
            }
            Ok(())
        }
        Decision::Publish(job) => {
            let payload = Bytes::from(serde_json::to_vec(&job).map_err(nats)?);
            if let Err(e) = cl.fits(&job.msg_id(), payload.len()) {
                // Too large for one message: this study fails with the reason (its
                // instances stay in the cluster); the others go on.
                error!(error = %e, "study job too large to publish");
                let reason = format!("job not published: {e}");
                return Box::pin(apply(
                    cl,
                    rec,
                    Decision::Settle {
                        state: StudyState::Failed,
                        reason,
                    },
                ))
                .await;
            }
            let ack = cl
                .js
                .send_publish(
                    cl.jobs_subject(),
                    PublishMessage::build()
                        .message_id(job.msg_id())
                        .payload(payload),
                )
                .await
                .map_err(nats_at("publishing the job"))?
                .await
                .map_err(nats_at("publishing the job (acknowledgement)"))?;
            let hash = job.input_hash.clone();
            cl.modify(
                &cl.studies,
                &study_key(&rec.study_uid),
                |cur: Option<StudyRecord>| {
                    let mut r = cur?;
                    if r.published_input.as_deref() == Some(hash.as_str()) {
                        return None;
                    }
                    r.published_input = Some(hash.clone());
                    if r.state == StudyState::Receiving && r.last_ms == last {
                        r.state = StudyState::Queued;
                    }
                    r.reason = None;
                    r.updated_ms = now_ms();
                    Some(r)
                },
            )
            .await?;
            if let Some(nodes) = &job.without {
                warn!(?nodes, "study analysed without unreachable ingest nodes (partition_wait_s passed): the report is partial, and amended when their instances arrive");
                crate::metrics::get().cluster_event("partial");
            }
            info!(
                instances = job.instances.len(),
                forced = job.forced,
                rerun = !job.predecessors.is_empty(),
                duplicate = ack.duplicate,
                input = %&job.input_hash[..16],
                "study stable: job published to the cluster"
            );
            Ok(())
        }
    }
}

/// Claim, queue, track and close the deliveries this node can make.
async fn deliver_all(
    ctx: &IngestCtx,
    cl: &Cluster,
    results: &Bucket<ResultRecord>,
) -> Result<(), ClusterError> {
    let cfg = ctx.config.get();
    if cfg.destinations.is_empty() {
        // Nothing to send to: leave the results to a node that has destinations.
        return Ok(());
    }
    for (key, rec) in &results.open {
        let span = info_span!("study", study = %rec.study_uid);
        deliver(ctx, cl, key, rec.clone()).instrument(span).await?;
    }
    Ok(())
}

async fn deliver(
    ctx: &IngestCtx,
    cl: &Cluster,
    key: &str,
    rec: ResultRecord,
) -> Result<(), ClusterError> {
    let me = cl.node.as_str();
    let sops: Vec<String> = rec
        .outputs
        .iter()
        .map(|o| o.sop_instance_uid.clone())
        .collect();
    if !rec.claimable_by(me, now_ms()) {
        ctx.fence.revoke(&sops);
        return withdraw_taken_over(ctx, &rec, &sops);
    }
    let mine = rec.state == ResultState::Claimed && rec.claimed_by.as_deref() == Some(me);
    let rec = if mine {
        rec
    } else {
        match claim(cl, key).await? {
            Some(r) => {
                // Entries this node withdrew or handed over before are its to send again.
                let delivered_to: Vec<String> = r.delivered_to.iter().cloned().collect();
                let n = ctx.state.reopen_outbox(&sops, &delivered_to)?;
                if n > 0 {
                    info!(entries = n, "delivery taken up again here");
                    let _ = ctx.wake_sender.try_send(());
                }
                r
            }
            None => return Ok(()),
        }
    };
    ctx.fence
        .grant(&sops, fence::send_until(rec.lease_until_ms, lease_ms(cl)));
    if !ctx
        .state
        .knows_cluster_result(&rec.study_uid, &rec.input_hash)?
    {
        return queue_locally(ctx, cl, &rec).await;
    }
    let entries = ctx.state.outbox_entries(&sops)?;
    // No entries at all: every destination configured here had it already.
    let all_sent = (!entries.is_empty() || !rec.delivered_to.is_empty())
        && entries
            .iter()
            .all(|(d, s, _)| *s == OutboxState::Done || rec.delivered_to.contains(d.as_str()));
    if all_sent {
        update_claimed(cl, key, |r| {
            r.state = ResultState::Delivered;
            r.delivered_ms = Some(now_ms());
        })
        .await?;
        ctx.fence.revoke(&sops);
        info!(outputs = sops.len(), "result delivered");
        return Ok(());
    }
    if handover_due(&entries, cl.section.handover_after_failures) {
        return hand_over(ctx, cl, key, &sops, &entries).await;
    }
    if rec.lease_until_ms - now_ms() < lease_ms(cl) / 2 {
        if let Some(r) =
            update_claimed(cl, key, |r| r.lease_until_ms = now_ms() + lease_ms(cl)).await?
        {
            ctx.fence
                .grant(&sops, fence::send_until(r.lease_until_ms, lease_ms(cl)));
        }
    }
    Ok(())
}

/// Whether this node should give its claim up: a delivery still pending after
/// `handover_after_failures` failed attempts (the destination unreachable, or failing
/// in a way it may not fail for another node). A destination that refused for good
/// (its attempts spent) would refuse another node too: no hand-over for that.
fn handover_due(entries: &[(String, OutboxState, i64)], after: u32) -> bool {
    entries
        .iter()
        .any(|(_, s, attempts)| *s == OutboxState::Pending && *attempts >= i64::from(after))
}

/// Give the claim up so that a node that can reach the destinations delivers: the
/// record says which destinations have everything already and that this node leaves
/// the delivery to others for two leases; what is queued here is withdrawn.
async fn hand_over(
    ctx: &IngestCtx,
    cl: &Cluster,
    key: &str,
    sops: &[String],
    entries: &[(String, OutboxState, i64)],
) -> Result<(), ClusterError> {
    let mut delivered_to: std::collections::BTreeSet<String> =
        entries.iter().map(|(d, _, _)| d.clone()).collect();
    for (d, s, _) in entries {
        if *s != OutboxState::Done {
            delivered_to.remove(d);
        }
    }
    let me = cl.node.clone();
    // Stop sending before the claim is released: another node may claim at once.
    ctx.fence.revoke(sops);
    let released = update_claimed(cl, key, |r| {
        r.state = ResultState::Ready;
        r.claimed_by = None;
        r.lease_until_ms = 0;
        r.declined.insert(me.clone(), now_ms() + 2 * lease_ms(cl));
        r.delivered_to.extend(delivered_to.iter().cloned());
    })
    .await?;
    if released.is_some() {
        let why = format!(
            "handed over to another node after {} failed attempts",
            cl.section.handover_after_failures
        );
        let n = ctx.state.cancel_outbox(sops, &why)?;
        warn!(withdrawn = n, %why, "delivery handed over: this node cannot deliver it");
        crate::metrics::get().cluster_event("handover");
    }
    Ok(())
}

fn lease_ms(cl: &Cluster) -> i64 {
    (cl.section.claim_lease_s * 1000.0) as i64
}

/// Another node delivers the result. If this node held it before (its lease ran out while
/// it was down), what it still has queued must not be sent as well.
fn withdraw_taken_over(
    ctx: &IngestCtx,
    rec: &ResultRecord,
    sops: &[String],
) -> Result<(), ClusterError> {
    if local_states(ctx, sops)?.contains(&OutboxState::Pending) {
        let why = format!(
            "delivery taken over by {}",
            rec.claimed_by.as_deref().unwrap_or("another node")
        );
        let n = ctx.state.cancel_outbox(sops, &why)?;
        warn!(cancelled = n, %why, "local queue entries of this result withdrawn");
    }
    Ok(())
}

/// Claims the result for this node (compare-and-set); the claimed record, or `None` when
/// another node was faster.
async fn claim(cl: &Cluster, key: &str) -> Result<Option<ResultRecord>, ClusterError> {
    let me = cl.node.as_str();
    let claimed = cl
        .modify(&cl.results, key, |cur: Option<ResultRecord>| {
            let mut r = cur?;
            if !r.claimable_by(me, now_ms()) {
                return None;
            }
            r.state = ResultState::Claimed;
            r.claimed_by = Some(me.to_string());
            r.lease_until_ms = now_ms() + lease_ms(cl);
            Some(r)
        })
        .await?;
    Ok(match claimed {
        Some(r) if r.claimed_by.as_deref() == Some(me) && r.state == ResultState::Claimed => {
            info!(outputs = r.outputs.len(), "result claimed for delivery");
            Some(r)
        }
        _ => None,
    })
}

/// A claimed result's objects into the local outbox, queued for every destination.
async fn queue_locally(
    ctx: &IngestCtx,
    cl: &Cluster,
    rec: &ResultRecord,
) -> Result<(), ClusterError> {
    let mut blobs = Vec::new();
    for o in &rec.outputs {
        blobs.push(cl.outputs.get(&o.object).await?);
    }
    let objects: Vec<(&str, &[u8])> = rec
        .outputs
        .iter()
        .zip(&blobs)
        .map(|(o, b)| (o.sop_instance_uid.as_str(), b.as_slice()))
        .collect();
    let paths = ctx
        .outbox
        .persist_objects(&objects)
        .map_err(ClusterError::Outbox)?;
    let rows: Vec<OutputRow> = rec
        .outputs
        .iter()
        .zip(paths)
        .map(|(o, path)| OutputRow {
            sop_uid: o.sop_instance_uid.clone(),
            kind: o.kind.as_str().into(),
            sop_class_uid: o.sop_class_uid.clone(),
            series_uid: o.series_instance_uid.clone(),
            path,
        })
        .collect();
    let cfg = ctx.config.get();
    // Destinations that have every object already (from the node that handed it over).
    let dests: Vec<String> = cfg
        .destinations
        .iter()
        .map(|d| d.key())
        .filter(|d| !rec.delivered_to.contains(d))
        .collect();
    ctx.state
        .queue_cluster_result(&rec.study_uid, &rec.input_hash, &rows, &dests)?;
    let _ = ctx.wake_sender.try_send(());
    info!(outputs = rows.len(), "claimed result queued in the outbox");
    Ok(())
}

/// Changes the result record while this node holds its claim; the record as changed, or
/// `None` when the claim is no longer this node's.
async fn update_claimed(
    cl: &Cluster,
    key: &str,
    change: impl Fn(&mut ResultRecord),
) -> Result<Option<ResultRecord>, ClusterError> {
    let me = cl.node.as_str();
    let mut changed = false;
    let r = cl
        .modify(&cl.results, key, |cur: Option<ResultRecord>| {
            changed = false;
            let mut r = cur?;
            if r.claimed_by.as_deref() != Some(me) || r.state != ResultState::Claimed {
                return None;
            }
            change(&mut r);
            changed = true;
            Some(r)
        })
        .await?;
    Ok(r.filter(|_| changed))
}

fn local_states(ctx: &IngestCtx, sops: &[String]) -> Result<Vec<OutboxState>, ClusterError> {
    Ok(ctx.state.outbox_states(sops)?)
}
