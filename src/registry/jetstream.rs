//! The cluster registry backend: one JetStream key-value bucket in the
//! broker's NATS account, shared by every pod. A revision is the bucket
//! stream's sequence (one counter for all keys, as the trait asks). Each pod
//! reads the bucket once at start, then follows it: every change becomes a
//! [`Change`] for watchers and lands in an in-memory copy
//! ([`super::mirror`]) that listings read; single keys and every write go
//! to nats-server.
//!
//! The bucket's stream is made here rather than by `create_key_value`:
//! async-nats 0.51 cannot parse nats-server 2.9's reply to that call.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::mirror::{Mirror, keeps};
use super::store::{BoxFuture, Change, Entry, Revision, Store, StoreError, check_key};

/// The registry's bucket in the broker account.
pub const BUCKET: &str = "switchboard";
/// Changes a slow watcher may be behind before it must read everything again.
const WATCH_BUFFER: usize = 1024;
/// How long a lost watch waits before it starts again.
const REWATCH_PAUSE: Duration = Duration::from_millis(200);
/// A listing that takes longer than this is reported as a failure.
const LIST_TIMEOUT: Duration = Duration::from_secs(10);
/// Entries fetched per round trip when listing.
const LIST_BATCH: usize = 1000;
/// How long a listing waits for entries it was promised but that never came.
const LIST_WAIT: Duration = Duration::from_millis(250);
/// The server drops a reader nobody pulls from for this long.
const READER_IDLE: Duration = Duration::from_secs(30);

pub struct JetStreamKv {
    js: jetstream::Context,
    kv: kv::Store,
    mirror: Arc<Mirror>,
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
        let js = jetstream::new(client);
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
        let store = JetStreamKv {
            js,
            kv,
            mirror: Arc::default(),
            changes,
            stop,
        };
        // Everything up to `last`, then every change after it from the follower.
        let last = store
            .kv
            .stream
            .clone()
            .info()
            .await
            .map_err(unavailable)?
            .state
            .last_sequence;
        for change in store
            .read(String::new(), jetstream::consumer::DeliverPolicy::LastPerSubject)
            .await?
        {
            store.mirror.apply(&change);
        }
        store.mirror.applied_up_to(last);
        tokio::spawn(follow(
            store.kv.clone(),
            store.mirror.clone(),
            store.changes.clone(),
            last + 1,
            store.stop.clone(),
        ));
        Ok(store)
    }
}

/// The change a bucket message records (its key without the bucket prefix).
fn change_of(prefix: &str, message: &async_nats::Message, revision: Revision) -> Option<Change> {
    let key = message.subject.strip_prefix(prefix)?.to_owned();
    let deleted = message
        .headers
        .as_ref()
        .and_then(|h| h.get("KV-Operation"))
        .is_some_and(|op| op.as_str() != "PUT");
    Some(if deleted {
        Change::Delete { key, revision }
    } else {
        Change::Put(Entry {
            key,
            value: message.payload.clone(),
            revision,
        })
    })
}

/// A pull consumer over the bucket's messages under `filter`. Pull, not
/// push: a push consumer delivers before its subscriber exists and loses
/// what it sent then until a heartbeat notices.
async fn reader(
    kv: &kv::Store,
    filter: String,
    deliver_policy: jetstream::consumer::DeliverPolicy,
) -> Result<jetstream::consumer::Consumer<pull::Config>, StoreError> {
    kv.stream
        .create_consumer(pull::Config {
            filter_subject: filter,
            deliver_policy,
            ack_policy: jetstream::consumer::AckPolicy::None,
            // Forgotten by the server if this pod goes away without deleting it.
            inactive_threshold: READER_IDLE,
            memory_storage: true,
            ..Default::default()
        })
        .await
        .map_err(unavailable)
}

/// Forwards every change from revision `from` on; a lost reader starts again
/// after the last revision it forwarded, so none is skipped or repeated.
async fn follow(
    kv: kv::Store,
    mirror: Arc<Mirror>,
    changes: broadcast::Sender<Change>,
    mut from: u64,
    stop: CancellationToken,
) {
    let filter = format!("{}>", kv.prefix);
    loop {
        let policy = jetstream::consumer::DeliverPolicy::ByStartSequence { start_sequence: from };
        let messages = tokio::select! {
            _ = stop.cancelled() => return,
            consumer = reader(&kv, filter.clone(), policy) => match consumer {
                Ok(c) => c.messages().await.map_err(unavailable),
                Err(e) => Err(e),
            },
        };
        match messages {
            Ok(mut messages) => loop {
                let next = tokio::select! {
                    _ = stop.cancelled() => return,
                    next = messages.next() => next,
                };
                match next {
                    Some(Ok(message)) => {
                        let Ok(info) = message.info() else { continue };
                        let revision = info.stream_sequence;
                        from = revision + 1;
                        if let Some(change) = change_of(&kv.prefix, &message, revision)
                            && mirror.apply(&change)
                        {
                            let _ = changes.send(change);
                        }
                        mirror.applied_up_to(revision);
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

impl JetStreamKv {
    /// The bucket's messages under `prefix` (all when empty) that a reader
    /// with `policy` has pending when made, as changes. Its pending count is a
    /// hint, not a promise: a key rewritten meanwhile loses the message it
    /// counted, so a batch that brings nothing ends the read too.
    async fn read(
        &self,
        prefix: String,
        policy: jetstream::consumer::DeliverPolicy,
    ) -> Result<Vec<Change>, StoreError> {
        let filter = if prefix.is_empty() {
            format!("{}>", self.kv.prefix)
        } else {
            format!("{}{prefix}.>", self.kv.prefix)
        };
        let mut consumer = reader(&self.kv, filter, policy).await?;
        let read = self.read_pending(&mut consumer).await;
        let name = consumer.cached_info().name.clone();
        // Best effort: the server forgets it when idle anyway.
        let _ = self.kv.stream.delete_consumer(&name).await;
        read
    }

    async fn read_pending(
        &self,
        consumer: &mut jetstream::consumer::Consumer<pull::Config>,
    ) -> Result<Vec<Change>, StoreError> {
        let mut out = Vec::new();
        if consumer.cached_info().num_pending == 0 {
            return Ok(out);
        }
        let deadline = tokio::time::Instant::now() + LIST_TIMEOUT;
        loop {
            let mut batch = consumer
                .batch()
                .max_messages(LIST_BATCH)
                .expires(LIST_WAIT)
                .messages()
                .await
                .map_err(unavailable)?;
            let mut got = 0;
            while let Some(message) = tokio::time::timeout_at(deadline, batch.next())
                .await
                .map_err(|_| unavailable("listing the registry took too long"))?
            {
                let message = message.map_err(unavailable)?;
                let info = message.info().map_err(unavailable)?;
                let (revision, left) = (info.stream_sequence, info.pending);
                got += 1;
                out.extend(change_of(&self.kv.prefix, &message, revision));
                if left == 0 {
                    return Ok(out);
                }
            }
            if got == 0 {
                return Ok(out);
            }
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
            let revision = self.kv.put(key, value).await.map_err(unavailable)?;
            self.mirror.wrote(revision);
            Ok(revision)
        })
    }

    fn create<'a>(&'a self, key: &'a str, value: Bytes) -> BoxFuture<'a, Result<Revision, StoreError>> {
        Box::pin(async move {
            check_key(key)?;
            let revision = self.kv.create(key, value).await.map_err(|e| match e.kind() {
                kv::CreateErrorKind::AlreadyExists => StoreError::Exists,
                _ => unavailable(e),
            })?;
            self.mirror.wrote(revision);
            Ok(revision)
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
            let revision = self
                .kv
                .update(key, value, expected)
                .await
                .map_err(|e| match e.kind() {
                    kv::UpdateErrorKind::WrongLastRevision => StoreError::Conflict,
                    _ => unavailable(e),
                })?;
            self.mirror.wrote(revision);
            Ok(revision)
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let Some(e) = self.get(key).await? else {
                return Ok(false);
            };
            // Only what was read is deleted; a concurrent writer wins and the
            // delete reports that nothing was there to remove. Published by
            // hand (as the client's delete does) for the revision it gets.
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("KV-Operation", "DEL");
            headers.insert(
                async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                e.revision.to_string().as_str(),
            );
            let ack = async {
                self.js
                    .publish_with_headers(format!("{}{key}", self.kv.prefix), headers, Bytes::new())
                    .await?
                    .await
            };
            match ack.await {
                Ok(ack) => {
                    self.mirror.wrote(ack.sequence);
                    Ok(true)
                }
                Err(err) if err.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                    Ok(false)
                }
                Err(err) => Err(unavailable(err)),
            }
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<Entry>, StoreError>> {
        Box::pin(async move {
            check_key(prefix)?;
            if keeps(prefix) {
                return self.mirror.list(prefix, LIST_TIMEOUT).await;
            }
            // What the copy does not keep is read from the bucket.
            let listed = self
                .read(
                    prefix.to_owned(),
                    jetstream::consumer::DeliverPolicy::LastPerSubject,
                )
                .await?;
            // A key written while it was read comes twice: the newest wins.
            let mut newest = std::collections::BTreeMap::new();
            for change in listed {
                let revision = match &change {
                    Change::Put(e) => e.revision,
                    Change::Delete { revision, .. } => *revision,
                };
                let key = change.key().to_owned();
                if newest.get(&key).is_none_or(|(r, _)| *r < revision) {
                    newest.insert(key, (revision, change));
                }
            }
            Ok(newest
                .into_values()
                .filter_map(|(_, change)| match change {
                    Change::Put(entry) => Some(entry),
                    Change::Delete { .. } => None,
                })
                .collect())
        })
    }

    fn watch(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }
}
