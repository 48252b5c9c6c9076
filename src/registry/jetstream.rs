//! The cluster registry backend: one JetStream key-value bucket in the
//! broker's NATS account, shared by every pod. A revision is the bucket
//! stream's sequence (one counter for all keys, as the trait asks); a
//! watcher on every pod turns the bucket's changes into [`Change`]s.
//!
//! The bucket's stream is made here rather than by `create_key_value`:
//! async-nats 0.51 cannot parse nats-server 2.9's reply to that call.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::store::{BoxFuture, Change, Entry, Revision, Store, StoreError, check_key};

/// The registry's bucket in the broker account.
pub const BUCKET: &str = "switchboard";
/// Changes a slow watcher may be behind before it must read everything again.
const WATCH_BUFFER: usize = 1024;
/// How long a lost watch waits before it starts again.
const REWATCH_PAUSE: Duration = Duration::from_millis(200);
/// A listing that takes longer than this is reported as a failure.
const LIST_TIMEOUT: Duration = Duration::from_secs(10);

pub struct JetStreamKv {
    client: async_nats::Client,
    kv: kv::Store,
    changes: broadcast::Sender<Change>,
    stop: CancellationToken,
}

impl Drop for JetStreamKv {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn is_put(op: kv::Operation) -> bool {
    matches!(op, kv::Operation::Put)
}

impl JetStreamKv {
    /// Opens the bucket `bucket` (made if missing) over `client`, and starts
    /// following its changes.
    pub async fn open(client: async_nats::Client, bucket: &str) -> Result<JetStreamKv, StoreError> {
        let js = jetstream::new(client.clone());
        js.get_or_create_stream(stream::Config {
            name: format!("KV_{bucket}"),
            subjects: vec![format!("$KV.{bucket}.>")],
            // One value per key; the registry keeps no history.
            max_messages_per_subject: 1,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            storage: stream::StorageType::File,
            num_replicas: 1,
            ..Default::default()
        })
        .await
        .map_err(|e| unavailable(format!("cannot make the registry bucket {bucket}: {e}")))?;
        let kv = js
            .get_key_value(bucket)
            .await
            .map_err(|e| unavailable(format!("cannot open the registry bucket {bucket}: {e}")))?;
        let (changes, _) = broadcast::channel(WATCH_BUFFER);
        let stop = CancellationToken::new();
        let from = kv
            .stream
            .clone()
            .info()
            .await
            .map_err(unavailable)?
            .state
            .last_sequence;
        tokio::spawn(follow(kv.clone(), changes.clone(), from + 1, stop.clone()));
        Ok(JetStreamKv {
            client,
            kv,
            changes,
            stop,
        })
    }
}

/// Forwards every change from revision `from` on; a lost watch starts again
/// after the last revision it forwarded, so none is skipped or repeated.
async fn follow(kv: kv::Store, changes: broadcast::Sender<Change>, mut from: u64, stop: CancellationToken) {
    loop {
        let watch = tokio::select! {
            _ = stop.cancelled() => return,
            w = kv.watch_all_from_revision(from) => w,
        };
        match watch {
            Ok(mut watch) => loop {
                let next = tokio::select! {
                    _ = stop.cancelled() => return,
                    next = watch.next() => next,
                };
                match next {
                    Some(Ok(e)) => {
                        from = e.revision + 1;
                        let change = if is_put(e.operation) {
                            Change::Put(Entry {
                                key: e.key,
                                value: e.value,
                                revision: e.revision,
                            })
                        } else {
                            Change::Delete {
                                key: e.key,
                                revision: e.revision,
                            }
                        };
                        let _ = changes.send(change);
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "registry watch failed; watching again");
                        break;
                    }
                    None => break,
                }
            },
            Err(e) => tracing::warn!(error = %e, "cannot watch the registry bucket; trying again"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(REWATCH_PAUSE) => {}
        }
    }
}

impl Store for JetStreamKv {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Entry>, StoreError>> {
        Box::pin(async move {
            check_key(key)?;
            let entry = self.kv.entry(key).await.map_err(unavailable)?;
            Ok(entry.filter(|e| is_put(e.operation)).map(|e| Entry {
                key: e.key,
                value: e.value,
                revision: e.revision,
            }))
        })
    }

    fn put<'a>(&'a self, key: &'a str, value: Bytes) -> BoxFuture<'a, Result<Revision, StoreError>> {
        Box::pin(async move {
            check_key(key)?;
            self.kv.put(key, value).await.map_err(unavailable)
        })
    }

    fn create<'a>(&'a self, key: &'a str, value: Bytes) -> BoxFuture<'a, Result<Revision, StoreError>> {
        Box::pin(async move {
            check_key(key)?;
            self.kv.create(key, value).await.map_err(|e| match e.kind() {
                kv::CreateErrorKind::AlreadyExists => StoreError::Exists,
                _ => unavailable(e),
            })
        })
    }

    fn update<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        expected: Revision,
    ) -> BoxFuture<'a, Result<Revision, StoreError>> {
        Box::pin(async move {
            check_key(key)?;
            // A deleted key's tombstone has a revision too: never update over it.
            match self.get(key).await? {
                Some(e) if e.revision == expected => {}
                _ => return Err(StoreError::Conflict),
            }
            self.kv
                .update(key, value, expected)
                .await
                .map_err(|e| match e.kind() {
                    kv::UpdateErrorKind::WrongLastRevision => StoreError::Conflict,
                    _ => unavailable(e),
                })
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let Some(e) = self.get(key).await? else {
                return Ok(false);
            };
            // Only what was read is deleted; a concurrent writer wins and the
            // delete reports that nothing was there to remove.
            match self.kv.delete_expect_revision(key, Some(e.revision)).await {
                Ok(()) => Ok(true),
                Err(err) if matches!(err.kind(), kv::DeleteErrorKind::WrongLastRevision) => Ok(false),
                Err(err) => Err(unavailable(err)),
            }
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<Entry>, StoreError>> {
        Box::pin(async move {
            check_key(prefix)?;
            // The newest message of every key under the prefix, read once by
            // an ordered consumer that stops when nothing is pending.
            let consumer = self
                .kv
                .stream
                .create_consumer(jetstream::consumer::push::OrderedConfig {
                    deliver_subject: self.client.new_inbox(),
                    filter_subject: format!("{}{prefix}.>", self.kv.prefix),
                    deliver_policy: jetstream::consumer::DeliverPolicy::LastPerSubject,
                    replay_policy: jetstream::consumer::ReplayPolicy::Instant,
                    ..Default::default()
                })
                .await
                .map_err(unavailable)?;
            let mut out = Vec::new();
            if consumer.cached_info().num_pending == 0 {
                return Ok(out);
            }
            let mut messages = consumer.messages().await.map_err(unavailable)?;
            let deadline = tokio::time::Instant::now() + LIST_TIMEOUT;
            while let Ok(Some(message)) = tokio::time::timeout_at(deadline, messages.next()).await {
                let message = message.map_err(unavailable)?;
                let info = message.info().map_err(unavailable)?;
                let pending = info.pending;
                let revision = info.stream_sequence;
                let deleted = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("KV-Operation"))
                    .is_some_and(|op| op.as_str() != "PUT");
                if !deleted && let Some(key) = message.subject.strip_prefix(self.kv.prefix.as_str()) {
                    out.push(Entry {
                        key: key.to_owned(),
                        value: message.payload.clone(),
                        revision,
                    });
                }
                if pending == 0 {
                    out.sort_by(|a, b| a.key.cmp(&b.key));
                    return Ok(out);
                }
            }
            Err(unavailable(format!("listing {prefix} did not finish")))
        })
    }

    fn watch(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }
}
