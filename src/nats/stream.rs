//! An org's channel stream (cluster mode, the data plane's first piece): one
//! JetStream stream per org, in the org's own account, capturing `ch.>`.
//! The stream sequence is a message's offset, so offsets grow per channel
//! across every pod; RePublish re-emits each stored message on
//! `live.<channel>` with the previous offset of the same channel
//! (`Nats-Last-Sequence`), which [`super::live`] uses to find gaps. File
//! storage: on nats-server 2.9 a memory stream with RePublish costs ~25×
//! more server CPU (NATS.md).

use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use switchboard_actors::{BackplaneError, HistoryLimits};
use switchboard_proto::{ChannelName, Epoch, subjects};

/// The stream's name inside each org's account.
pub const STREAM: &str = "CH";
/// How long a publish waits for its acknowledgement.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub offset: u64,
    pub payload: Bytes,
}

impl OrgStream {
    /// Opens the org's stream (made if missing) with `limits` per channel.
    pub async fn open(
        client: async_nats::Client,
        limits: HistoryLimits,
    ) -> Result<OrgStream, BackplaneError> {
        let mut js = jetstream::new(client);
        js.set_timeout(ACK_TIMEOUT);
        let stream = js
            .get_or_create_stream(stream::Config {
                name: STREAM.into(),
                subjects: vec![subjects::CHANNEL_ALL.into()],
                storage: stream::StorageType::File,
                max_messages_per_subject: limits.max_messages.max(1) as i64,
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
            })
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

    /// Stores `payload` on `channel`; returns its offset once the stream
    /// acknowledged it.
    pub async fn publish(&self, channel: &ChannelName, payload: Bytes) -> Result<u64, BackplaneError> {
        let ack = self
            .js
            .publish(subjects::channel(channel), payload)
            .await
            .map_err(|e| unavailable("publish", e))?
            .await
            .map_err(|e| unavailable("publish not acknowledged", e))?;
        Ok(ack.sequence)
    }

    /// The first message of `channel` after offset `after`, if any.
    pub async fn next_after(
        &self,
        channel: &ChannelName,
        after: u64,
    ) -> Result<Option<Stored>, BackplaneError> {
        let got = self
            .stream
            .direct_get_next_for_subject(subjects::channel(channel), Some(after + 1))
            .await;
        Ok(found(got)?.map(|m| Stored {
            offset: m.sequence,
            payload: m.payload,
        }))
    }

    /// The offset of `channel`'s newest retained message, if any.
    pub async fn last(&self, channel: &ChannelName) -> Result<Option<u64>, BackplaneError> {
        let got = self
            .stream
            .direct_get_last_for_subject(subjects::channel(channel))
            .await;
        Ok(found(got)?.map(|m| m.sequence))
    }

    /// Up to `limit` messages of `channel` after offset `after`, in order,
    /// none past `through`: a few by direct gets (one round trip each), more
    /// through a short-lived pull consumer (one round trip per batch).
    pub async fn read(
        &self,
        channel: &ChannelName,
        after: u64,
        through: u64,
        limit: usize,
    ) -> Result<Vec<Stored>, BackplaneError> {
        let mut out = Vec::new();
        let mut at = after;
        while out.len() < limit.min(DIRECT_READS) {
            match self.next_after(channel, at).await? {
                Some(m) if m.offset <= through => {
                    at = m.offset;
                    out.push(m);
                }
                _ => return Ok(out),
            }
        }
        if out.len() < limit {
            out.extend(self.read_batched(channel, at, through, limit - out.len()).await?);
        }
        Ok(out)
    }

    async fn read_batched(
        &self,
        channel: &ChannelName,
        after: u64,
        through: u64,
        limit: usize,
    ) -> Result<Vec<Stored>, BackplaneError> {
        let consumer = self
            .stream
            .create_consumer(pull::Config {
                filter_subject: subjects::channel(channel),
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
                out.push(Stored {
                    offset,
                    payload: message.payload.clone(),
                });
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
