//! The instance and output bytes: object store buckets read and written with deadlines
//! (see [`super::reads`]).

use async_nats::jetstream::{self, object_store, stream};

use super::{nats, nats_at, reads, ClusterError};

/// An object store bucket in the official layout (so `nats object` tools read it) whose
/// objects are read by direct gets of their chunks. The library's
/// `get` reads through an ephemeral ordered consumer, which nats-server 2.9 may place on
/// a dead peer: with one server of three down, a third of the reads time out. A direct
/// get is answered by any live replica.
#[derive(Clone)]
pub struct Objects {
    pub bucket: String,
    pub store: object_store::ObjectStore,
    pub(super) stream: stream::Stream,
    pub(super) js: jetstream::Context,
}

impl Objects {
    /// An object's bytes, checked against the digest stored with it.
    pub async fn get(&self, name: &str) -> Result<Vec<u8>, ClusterError> {
        let mut bytes = Vec::new();
        self.get_into(name, &mut bytes).await?;
        Ok(bytes)
    }

    /// Write an object to `out` chunk by chunk (an instance may be large: memory holds
    /// one chunk), checked against the digest stored with it; the caller discards what
    /// was written when this fails. Returns the object's size.
    pub async fn get_into(
        &self,
        name: &str,
        out: &mut impl std::io::Write,
    ) -> Result<u64, ClusterError> {
        use base64::Engine;
        use sha2::Digest;
        let info = self.info(name).await?;
        let subject = format!("$O.{}.C.{}", self.bucket, info.nuid);
        let mut hasher = sha2::Sha256::new();
        let mut len = 0usize;
        let mut seq = 1;
        for _ in 0..info.chunks {
            let Some(m) = reads::next_for_subject(&self.stream, &subject, seq).await? else {
                return Err(ClusterError::Record {
                    key: name.into(),
                    message: format!("object incomplete: chunk after sequence {seq} missing"),
                });
            };
            hasher.update(&m.payload);
            out.write_all(&m.payload)?;
            len += m.payload.len();
            seq = m.sequence + 1;
        }
        let want = info
            .digest
            .as_deref()
            .and_then(|d| d.strip_prefix("SHA-256="));
        let got = base64::engine::general_purpose::URL_SAFE.encode(hasher.finalize());
        if len != info.size || want.is_some_and(|w| w != got) {
            return Err(ClusterError::Record {
                key: name.into(),
                message: format!(
                    "object damaged: {len} bytes of {}, digest {got} (stored {})",
                    info.size,
                    want.unwrap_or("none")
                ),
            });
        }
        Ok(len as u64)
    }

    /// An object's description (any replica, else the stream leader: [`reads`]).
    pub async fn info(&self, name: &str) -> Result<object_store::ObjectInfo, ClusterError> {
        use base64::Engine;
        let subject = format!(
            "$O.{}.M.{}",
            self.bucket,
            base64::engine::general_purpose::URL_SAFE.encode(name)
        );
        let Some(m) = reads::last_for_subject(&self.stream, &subject).await? else {
            return Err(ClusterError::Record {
                key: name.into(),
                message: "object not found".into(),
            });
        };
        let info: object_store::ObjectInfo =
            serde_json::from_slice(&m.payload).map_err(|e| ClusterError::Record {
                key: name.into(),
                message: format!("object description: {e}"),
            })?;
        if info.deleted {
            return Err(ClusterError::Record {
                key: name.into(),
                message: "object deleted".into(),
            });
        }
        Ok(info)
    }

    /// Store a file as an object, read as it is sent (memory holds one chunk), unless an
    /// object of that name and size is there already.
    pub async fn put_file(&self, name: &str, file: std::fs::File) -> Result<(), ClusterError> {
        let size = file.metadata()?.len();
        let old = self.info(name).await.ok();
        if old.as_ref().is_some_and(|i| i.size as u64 == size) {
            return Ok(());
        }
        let mut f = tokio::fs::File::from_std(file);
        self.put_reader(name, &mut f, old).await
    }

    /// Store an object unless one of that name and size is there already (names carry
    /// content: a re-replication is the same object).
    pub async fn put(&self, name: &str, bytes: &[u8]) -> Result<(), ClusterError> {
        let old = self.info(name).await.ok();
        if old.as_ref().is_some_and(|i| i.size == bytes.len()) {
            return Ok(());
        }
        let mut r = bytes;
        self.put_reader(name, &mut r, old).await
    }

    /// Store an object in the object store's published layout (chunks on
    /// `$O.<bucket>.C.<id>`, then its description on `$O.<bucket>.M.<base64url name>` as a
    /// roll-up, with the SHA-256 digest), so the `nats object` tools read it. Not the
    /// library's `put`: that first reads any earlier description by a direct get with no
    /// deadline of its own, which a silent replica holds for the whole request timeout —
    /// for every object, while the rest of the cluster is healthy. `old` is that earlier
    /// description (read with [`Objects::info`]); its chunks are purged once the new
    /// description is stored.
    async fn put_reader(
        &self,
        name: &str,
        data: &mut (impl tokio::io::AsyncRead + Unpin),
        old: Option<object_store::ObjectInfo>,
    ) -> Result<(), ClusterError> {
        use base64::Engine;
        use sha2::Digest;
        use tokio::io::AsyncReadExt;
        const CHUNK: usize = 128 * 1024;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let chunks_subject = format!("$O.{}.C.{id}", self.bucket);
        let mut hasher = sha2::Sha256::new();
        let (mut size, mut chunks) = (0usize, 0usize);
        let mut buf = bytes::BytesMut::with_capacity(CHUNK);
        loop {
            buf.clear();
            while buf.len() < CHUNK {
                if data.read_buf(&mut buf).await? == 0 {
                    break;
                }
            }
            if buf.is_empty() {
                break;
            }
            let chunk = buf.split().freeze();
            hasher.update(&chunk);
            size += chunk.len();
            chunks += 1;
            self.js
                .publish(chunks_subject.clone(), chunk)
                .await
                .map_err(nats_at(format_args!("storing object {name}")))?
                .await
                .map_err(nats_at(format_args!(
                    "storing object {name} (acknowledgement)"
                )))?;
            buf.reserve(CHUNK);
        }
        let info = object_store::ObjectInfo {
            name: name.to_string(),
            description: None,
            metadata: Default::default(),
            headers: None,
            options: None,
            bucket: self.bucket.clone(),
            nuid: id,
            size,
            chunks,
            modified: None,
            digest: Some(format!(
                "SHA-256={}",
                base64::engine::general_purpose::URL_SAFE.encode(hasher.finalize())
            )),
            deleted: false,
        };
        let meta = serde_json::to_vec(&info).map_err(nats)?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Rollup", "sub");
        let subject = format!(
            "$O.{}.M.{}",
            self.bucket,
            base64::engine::general_purpose::URL_SAFE.encode(name)
        );
        self.js
            .publish_with_headers(subject, headers, meta.into())
            .await
            .map_err(nats_at(format_args!("describing object {name}")))?
            .await
            .map_err(nats_at(format_args!(
                "describing object {name} (acknowledgement)"
            )))?;
        if let Some(old) = old.filter(|o| !o.nuid.is_empty()) {
            // What the old version's chunks cost until the bucket's max age: nothing reads
            // them any more.
            let _ = self
                .stream
                .purge()
                .filter(format!("$O.{}.C.{}", self.bucket, old.nuid))
                .await;
        }
        Ok(())
    }
}
