//! An org's channel stream (cluster mode's data plane): one JetStream
//! stream per org, in the org's own account, capturing `ch.>` (a channel's
//! messages and its live turns' events, [`subjects`]). The stream sequence
//! is a message's offset, so offsets grow per channel across every pod;
//! RePublish re-emits each stored message on its `live.` twin with the
//! previous sequence of the same subject (`Nats-Last-Sequence`), which
//! [`super::live`] uses to find gaps. File storage: on nats-server 2.9 a
//! memory stream with RePublish costs ~25× more server CPU (NATS.md).

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use switchboard_actors::backplane::BoxFuture;
use switchboard_actors::{BackplaneError, HistoryLimits};
use switchboard_proto::{ChannelName, Epoch, subjects};

use super::turns::CHECKPOINT_EVERY;

/// The stream's name inside each org's account.
pub const STREAM: &str = "CH";
/// How long one attempt of a publish waits for its acknowledgement.
const ACK_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a publish keeps trying (the same message id each time, so a
/// stored attempt whose acknowledgement was lost is not stored twice)
/// before the caller is told the channel is unavailable: long enough to
/// ride out a NATS restart.
const PUBLISH_PATIENCE: Duration = Duration::from_secs(4);
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// How long the stream remembers message ids: well past a publish's patience.
pub(super) const DUPLICATE_WINDOW: Duration = Duration::from_secs(20);
/// Reads this short are direct gets; longer ones use a consumer.
const DIRECT_READS: usize = 8;
/// Messages per batch of a longer read.
const BATCH: usize = 256;
/// How long a batch waits for messages it was promised but that never came.
const BATCH_WAIT: Duration = Duration::from_millis(250);
/// The server drops a reader nobody pulls from for this long.
const READER_IDLE: Duration = Duration::from_secs(30);

fn unavailable(what: &str, e: impl std::fmt::Display) -> BackplaneError {
    BackplaneError::Unavailable(format!("{what}: {e}"))
}

/// A direct get's message, `None` when there is none.
fn found(
    got: Result<jetstream::message::StreamMessage, stream::DirectGetError>,
) -> Result<Option<jetstream::message::StreamMessage>, BackplaneError> {
    match got {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => Ok(None),
        Err(e) => Err(unavailable("history read", e)),
    }
}

/// One org's stream, over this pod's connection into the org's account.
pub struct OrgStream {
    js: jetstream::Context,
    stream: stream::Stream,
    epoch: Epoch,
}

/// One stored message of a channel.
#[derive(Clone, Debug, Default)]
pub struct Stored {
    pub offset: u64,
    /// What it is, for turn events (`super::turns`); a plain message has none.
    pub headers: Option<HeaderMap>,
    pub payload: Bytes,
}

impl Stored {
    fn from_direct(m: jetstream::message::StreamMessage) -> (String, Stored) {
        let stored = Stored {
            offset: m.sequence,
            headers: Some(m.headers),
            payload: m.payload,
        };
        (m.subject.to_string(), stored)
    }
}

/// The stream's position and the live turns of one channel, read at once.
pub struct State {
    /// The stream's newest sequence: every offset of the channel up to it
    /// is readable now.
    pub last: u64,
    /// The subjects of the channel's live turns.
    pub turns: Vec<String>,
}

impl OrgStream {
    /// Opens the org's stream (made if missing) with `limits` per channel.
    pub async fn open(
        client: async_nats::Client,
        limits: HistoryLimits,
    ) -> Result<OrgStream, BackplaneError> {
        Self::open_with(
            client,
            stream::Config {
                name: STREAM.into(),
                subjects: vec![subjects::CHANNEL_ALL.into()],
                storage: stream::StorageType::File,
                // A live turn's subject holds a checkpoint and the tokens
                // after it (super::turns); channel history is trimmed to its
                // count when read.
                max_messages_per_subject: limits.max_messages.max(2 * CHECKPOINT_EVERY) as i64,
                allow_rollup: true,
                // Message ids only guard a publish's own retries (and pods
                // taking in the same publisher event): seconds, not the
                // default two minutes of ids to keep.
                duplicate_window: DUPLICATE_WINDOW,
                max_age: limits.max_age,
                discard: stream::DiscardPolicy::Old,
                allow_direct: true,
                republish: Some(stream::Republish {
                    source: subjects::CHANNEL_ALL.into(),
                    destination: subjects::LIVE_ALL.into(),
                    headers_only: false,
                }),
                num_replicas: 1,
                ..Default::default()
            },
        )
        .await
    }

    /// Opens (or makes) another stream of the org's account with this
    /// module's publishing and reading (`super::parking`'s, for one).
    pub async fn open_with(
        client: async_nats::Client,
        config: stream::Config,
    ) -> Result<OrgStream, BackplaneError> {
        let mut js = jetstream::new(client);
        js.set_timeout(ACK_TIMEOUT);
        let stream = js
            .get_or_create_stream(config)
            .await
            .map_err(|e| unavailable("cannot open the org's stream", e))?;
        // The stream's creation time names its incarnation: a recreated
        // stream answers resumes from the old one with `recovered:false`.
        let created = stream.cached_info().created.unix_timestamp_nanos();
        let epoch = Epoch::new(format!("n{created:x}"));
        Ok(OrgStream { js, stream, epoch })
    }

    pub fn epoch(&self) -> &Epoch {
        &self.epoch
    }

    /// Stores `message` on `subject`; returns its offset once the stream
    /// acknowledged it, or `None` if an expectation it carried failed (the
    /// subject was not as expected).
    pub async fn publish(
        &self,
        subject: String,
        message: PublishMessage,
    ) -> Result<Option<u64>, BackplaneError> {
        self.publish_with_id(subject, message, &uuid::Uuid::new_v4().simple().to_string())
            .await
    }

    /// As [`OrgStream::publish`], under a message id other publishes of the
    /// same message share (the stream keeps the first).
    pub async fn publish_with_id(
        &self,
        subject: String,
        message: PublishMessage,
        id: &str,
    ) -> Result<Option<u64>, BackplaneError> {
        let message = message.message_id(id);
        let deadline = tokio::time::Instant::now() + PUBLISH_PATIENCE;
        loop {
            let attempt = async {
                self.js
                    .send_publish(subject.clone(), message.clone())
                    .await?
                    .await
            };
            let e = match attempt.await {
                Ok(ack) => return Ok(Some(ack.sequence)),
                Err(e) => e,
            };
            match e.kind() {
                PublishErrorKind::WrongLastSequence => return Ok(None),
                PublishErrorKind::MaxPayloadExceeded => return Err(unavailable("publish", e)),
                _ if tokio::time::Instant::now() + RETRY_PAUSE < deadline => {
                    tracing::debug!(error = %e, "publish not acknowledged; trying again");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                _ => return Err(unavailable("publish not acknowledged", e)),
            }
        }
    }

    /// Stores a plain message on `channel`; returns its offset.
    pub async fn publish_message(
        &self,
        channel: &ChannelName,
        payload: Bytes,
    ) -> Result<u64, BackplaneError> {
        self.publish(
            subjects::channel(channel),
            PublishMessage::build().payload(payload),
        )
        .await?
        .ok_or_else(|| unavailable("publish", "refused an expectation it did not carry"))
    }

    /// Sends a plain message on `channel` without waiting for the stream to
    /// acknowledge it: what is sent one after another over this connection
    /// is stored in that order. The returned future resolves to its offset;
    /// an acknowledgement that does not come is retried as
    /// [`OrgStream::publish`] does, under the same message id (a retry can
    /// land after messages sent later: only when NATS failed).
    pub async fn send_message(
        self: &Arc<Self>,
        channel: &ChannelName,
        payload: Bytes,
    ) -> Result<BoxFuture<'static, Result<u64, BackplaneError>>, BackplaneError> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let subject = subjects::channel(channel);
        let message = PublishMessage::build().payload(payload).message_id(&id);
        let ack = self
            .js
            .send_publish(subject.clone(), message.clone())
            .await
            .map_err(|e| unavailable("publish", e))?;
        let me = Arc::clone(self);
        Ok(Box::pin(async move {
            if let Ok(ack) = ack.await {
                return Ok(ack.sequence);
            }
            me.publish_with_id(subject, message, &id)
                .await?
                .ok_or_else(|| unavailable("publish", "refused an expectation it did not carry"))
        }))
    }

    /// Removes everything stored on `subject` (a finished turn's events).
    pub async fn purge(&self, subject: &str) -> Result<(), BackplaneError> {
        self.stream
            .purge()
            .filter(subject)
            .await
            .map(drop)
            .map_err(|e| unavailable("purge", e))
    }

    /// Removes what is stored on `subject` up to offset `through`, keeping
    /// anything stored after it meanwhile.
    pub async fn purge_through(&self, subject: &str, through: u64) -> Result<(), BackplaneError> {
        self.stream
            .purge()
            .filter(subject)
            .sequence(through + 1)
            .await
            .map(drop)
            .map_err(|e| unavailable("purge", e))
    }

    /// The stream's newest sequence and `channel`'s live turns.
    pub async fn state(&self, channel: &ChannelName) -> Result<State, BackplaneError> {
        let mut info = self
            .stream
            .info_with_subjects(subjects::turns(channel))
            .await
            .map_err(|e| unavailable("stream state", e))?;
        let last = info.info.state.last_sequence;
        let mut turns = Vec::new();
        while let Some(subject) = info.next().await {
            turns.push(subject.map_err(|e| unavailable("stream state", e))?.0);
        }
        Ok(State { last, turns })
    }

    /// The first message on `subject` after offset `after`, if any.
    pub async fn next_after(&self, subject: &str, after: u64) -> Result<Option<Stored>, BackplaneError> {
        let got = self
            .stream
            .direct_get_next_for_subject(subject, Some(after + 1))
            .await;
        Ok(found(got)?.map(|m| Stored::from_direct(m).1))
    }

    /// The offset of the newest message on `subject`, if any.
    pub async fn last(&self, subject: &str) -> Result<Option<u64>, BackplaneError> {
        let got = self.stream.direct_get_last_for_subject(subject).await;
        Ok(found(got)?.map(|m| m.sequence))
    }

    /// Up to `limit` messages on `subject` after offset `after`, in order,
    /// none past `through`: a few by direct gets (one round trip each), more
    /// through a short-lived pull consumer (one round trip per batch).
    pub async fn read(
        &self,
        subject: &str,
        after: u64,
        through: u64,
        limit: usize,
    ) -> Result<Vec<Stored>, BackplaneError> {
        let read = self.read_subjects(subject, after, through, limit).await?;
        Ok(read.into_iter().map(|(_, m)| m).collect())
    }

    /// As [`OrgStream::read`], for a `filter` that may be a wildcard: each
    /// message with the subject it was stored on.
    pub async fn read_subjects(
        &self,
        filter: &str,
        after: u64,
        through: u64,
        limit: usize,
    ) -> Result<Vec<(String, Stored)>, BackplaneError> {
        let subject = filter;
        let mut out = Vec::new();
        let mut at = after;
        while out.len() < limit.min(DIRECT_READS) {
            let got = self
                .stream
                .direct_get_next_for_subject(subject, Some(at + 1))
                .await;
            match found(got)?.map(Stored::from_direct) {
                Some((s, m)) if m.offset <= through => {
                    at = m.offset;
                    out.push((s, m));
                }
                _ => return Ok(out),
            }
        }
        if out.len() < limit {
            out.extend(self.read_batched(subject, at, through, limit - out.len()).await?);
        }
        Ok(out)
    }

    async fn read_batched(
        &self,
        subject: &str,
        after: u64,
        through: u64,
        limit: usize,
    ) -> Result<Vec<(String, Stored)>, BackplaneError> {
        let consumer = self
            .stream
            .create_consumer(pull::Config {
                filter_subject: subject.to_owned(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: after + 1,
                },
                ack_policy: AckPolicy::None,
                inactive_threshold: READER_IDLE,
                memory_storage: true,
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable("history read", e))?;
        let mut out = Vec::new();
        let mut pending = consumer.cached_info().num_pending;
        while pending > 0 && out.len() < limit {
            let mut batch = consumer
                .batch()
                .max_messages((limit - out.len()).min(BATCH))
                .expires(BATCH_WAIT)
                .messages()
                .await
                .map_err(|e| unavailable("history read", e))?;
            let mut got = 0;
            while let Some(message) = batch.next().await {
                let message = message.map_err(|e| unavailable("history read", e))?;
                let info = message.info().map_err(|e| unavailable("history read", e))?;
                let (offset, left) = (info.stream_sequence, info.pending);
                got += 1;
                pending = left;
                if offset > through {
                    pending = 0;
                    break;
                }
                let stored = Stored {
                    offset,
                    headers: message.headers.clone(),
                    payload: message.payload.clone(),
                };
                out.push((message.subject.to_string(), stored));
                if left == 0 || out.len() >= limit {
                    break;
                }
            }
            if got == 0 {
                break;
            }
        }
        let name = consumer.cached_info().name.clone();
        let _ = self.stream.delete_consumer(&name).await;
        Ok(out)
    }
}
