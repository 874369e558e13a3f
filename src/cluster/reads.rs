//! Reads that survive a lagging or silent replica.
//!
//! A direct get is answered by whichever replica the server picks. Under a partition that
//! replica may be silent (its routes stay up until NATS pings time out, minutes later: the
//! request waits for the client's whole request timeout), and while a server rejoins it
//! answers before it has caught up: "not found" for what the stream holds, or an older
//! version of a record. So a direct get here has a short deadline and is tried twice; a
//! "not found", a silence or an error is then asked of the stream leader, which holds
//! every acknowledged write. A "not found" from the leader is the answer.

use std::time::Duration;

use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{DirectGetErrorKind, LastRawMessageErrorKind, Stream};

use super::{nats_at, ClusterError};

/// How long one replica may take to answer a direct get (loopback answers in about a
/// millisecond, a WAN in tens).
const DIRECT_DEADLINE: Duration = Duration::from_secs(2);
/// Direct gets before the leader is asked (each may reach another replica).
const DIRECT_TRIES: usize = 2;
/// The leader's deadline: it may be busy catching a replica up.
const LEADER_DEADLINE: Duration = Duration::from_secs(10);

/// What a direct get said.
enum Direct {
    Found(StreamMessage),
    /// Not on that replica: maybe not on the stream, maybe not yet on that replica.
    NotThere,
    /// Silent, failing or unreachable.
    NoAnswer,
}

async fn direct<F, Fut>(mut get: F) -> Direct
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<
        Output = Result<StreamMessage, async_nats::jetstream::stream::DirectGetError>,
    >,
{
    for _ in 0..DIRECT_TRIES {
        match tokio::time::timeout(DIRECT_DEADLINE, get()).await {
            Ok(Ok(m)) => return Direct::Found(m),
            Ok(Err(e)) if e.kind() == DirectGetErrorKind::NotFound => return Direct::NotThere,
            Ok(Err(_)) | Err(_) => continue,
        }
    }
    Direct::NoAnswer
}

async fn leader<Fut>(what: &str, get: Fut) -> Result<Option<StreamMessage>, ClusterError>
where
    Fut: std::future::Future<
        Output = Result<StreamMessage, async_nats::jetstream::stream::LastRawMessageError>,
    >,
{
    match tokio::time::timeout(LEADER_DEADLINE, get).await {
        Ok(Ok(m)) => Ok(Some(m)),
        Ok(Err(e)) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Ok(Err(e)) => Err(nats_at(format_args!("{what} (stream leader)"))(e)),
        Err(_) => Err(ClusterError::Nats(format!(
            "{what}: no answer from any replica nor from the stream leader within {} s",
            (DIRECT_DEADLINE * DIRECT_TRIES as u32 + LEADER_DEADLINE).as_secs()
        ))),
    }
}

/// The last message on `subject`, from any replica or else the leader.
pub async fn last_for_subject(
    stream: &Stream,
    subject: &str,
) -> Result<Option<StreamMessage>, ClusterError> {
    match direct(|| stream.direct_get_last_for_subject(subject)).await {
        Direct::Found(m) => Ok(Some(m)),
        Direct::NotThere | Direct::NoAnswer => last_from_leader(stream, subject).await,
    }
}

/// The last message on `subject` as the stream leader has it: every acknowledged write.
pub async fn last_from_leader(
    stream: &Stream,
    subject: &str,
) -> Result<Option<StreamMessage>, ClusterError> {
    leader(
        &format!("reading {subject}"),
        stream.get_last_raw_message_by_subject(subject),
    )
    .await
}

/// The first message at sequence `seq` or after it whose subject matches `filter`, from
/// any replica or else the leader. `None`: there is none.
pub async fn next_for_subject(
    stream: &Stream,
    filter: &str,
    seq: u64,
) -> Result<Option<StreamMessage>, ClusterError> {
    match direct(|| stream.direct_get_next_for_subject(filter, Some(seq))).await {
        Direct::Found(m) => Ok(Some(m)),
        Direct::NotThere | Direct::NoAnswer => {
            leader(
                &format!("reading {filter} from sequence {seq}"),
                stream.get_first_raw_message_by_subject(filter, seq),
            )
            .await
        }
    }
}

/// Whether a KV message is a deletion marker rather than a value.
pub fn is_kv_delete(m: &StreamMessage) -> bool {
    m.headers
        .get("KV-Operation")
        .is_some_and(|op| op.as_str() == "DEL" || op.as_str() == "PURGE")
}
