//! Publisher events into channels (cluster mode). What publishers send on
//! `pub.<channel>` is captured by the org's `PUB` stream, which republishes
//! each event with its sequence on `in.<channel>`. Every pod with the org
//! open takes each event into the channel stream with that sequence as its
//! message id, so JetStream keeps the first copy and drops the rest: each
//! event lands once, in the order the publisher sent it (a pod publishes
//! event n only after n-1 is stored), whichever pods are up. An org with
//! publishers stays open on every pod (`super::accounts`), and a pod that
//! opens an org first takes in what `PUB` still keeps, so events sent
//! while no pod had the org open (all restarting at once) land too.

use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::{self, stream};
use futures_util::StreamExt;
use metrics::counter;
use serde_json::value::RawValue;
use switchboard_actors::{ChannelKey, telemetry};
use switchboard_proto::{ChannelName, OrgId, subjects};

use super::backplane::NatsBackplane;
use super::live::sequences;

/// The publisher-event stream's name inside each org's account.
pub const STREAM: &str = "PUB";
/// Events are kept for a pod that opens the org to take in, and no longer
/// than the channel stream remembers message ids (`super::stream`'s 20 s):
/// taking one in twice must store it once.
const KEEP: Duration = Duration::from_secs(15);
/// Events read at a time when taking in what `PUB` keeps.
const CATCH_UP_BATCH: usize = 256;
/// How long a batch waits for events it was promised.
const CATCH_UP_WAIT: Duration = Duration::from_millis(250);

/// Subscribes to the org's republished publisher events (made if missing);
/// returns the subscription and the message-id prefix of this incarnation
/// of the stream.
pub async fn follow(client: &async_nats::Client) -> Result<(async_nats::Subscriber, String), String> {
    let js = jetstream::new(client.clone());
    let stream = js
        .get_or_create_stream(stream::Config {
            name: STREAM.into(),
            subjects: vec![subjects::PUBLISH_ALL.into()],
            storage: stream::StorageType::File,
            max_age: KEEP,
            discard: stream::DiscardPolicy::Old,
            republish: Some(stream::Republish {
                source: subjects::PUBLISH_ALL.into(),
                destination: subjects::INGEST_ALL.into(),
                headers_only: false,
            }),
            num_replicas: 1,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let prefix = format!("{:x}", stream.cached_info().created.unix_timestamp_nanos());
    let events = client
        .subscribe(subjects::INGEST_ALL)
        .await
        .map_err(|e| e.to_string())?;
    Ok((events, prefix))
}

/// What became of one publisher event (the `result` label of the metric).
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Not JSON, `null`, or on a subject that names no channel.
    Malformed,
    Oversized,
    /// The channel refused it (the error is logged).
    Refused,
}

impl Outcome {
    fn as_str(&self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Malformed => "malformed",
            Outcome::Oversized => "oversized",
            Outcome::Refused => "refused",
        }
    }
}

/// Publishes one event on its channel, once however many pods do so
/// (`id`): the payload is the message's `data`, any JSON value but `null`.
pub async fn deliver(
    org: &OrgId,
    channel: Option<ChannelName>,
    id: &str,
    payload: &[u8],
    backplane: &NatsBackplane,
    max_bytes: usize,
) -> Outcome {
    let Some(channel) = channel else {
        return Outcome::Malformed;
    };
    if payload.len() > max_bytes {
        return Outcome::Oversized;
    }
    let Ok(data) = serde_json::from_slice::<&RawValue>(payload) else {
        return Outcome::Malformed;
    };
    if data.get() == "null" {
        return Outcome::Malformed;
    }
    match backplane
        .publish_once(&ChannelKey::new(org.clone(), channel), data, id)
        .await
    {
        Ok(_) => Outcome::Delivered,
        Err(_) => Outcome::Refused,
    }
}

/// Takes in every event `PUB` keeps, oldest first, each under its id (so
/// those stored already are not stored again).
async fn catch_up(
    client: &async_nats::Client,
    org: &OrgId,
    prefix: &str,
    backplane: &NatsBackplane,
    max_bytes: usize,
) -> Result<u64, String> {
    let js = jetstream::new(client.clone());
    let stream = js.get_stream(STREAM).await.map_err(|e| e.to_string())?;
    let consumer = stream
        .create_consumer(pull::Config {
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            memory_storage: true,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut pending = consumer.cached_info().num_pending;
    let mut taken = 0;
    while pending > 0 {
        let mut batch = consumer
            .batch()
            .max_messages(CATCH_UP_BATCH)
            .expires(CATCH_UP_WAIT)
            .messages()
            .await
            .map_err(|e| e.to_string())?;
        let mut got = 0;
        while let Some(message) = batch.next().await {
            let message = message.map_err(|e| e.to_string())?;
            let info = message.info().map_err(|e| e.to_string())?;
            let (seq, left) = (info.stream_sequence, info.pending);
            got += 1;
            pending = left;
            let channel = subjects::published_channel(&message.subject);
            let id = format!("{prefix}-{seq}");
            let outcome = deliver(org, channel, &id, &message.payload, backplane, max_bytes).await;
            if outcome == Outcome::Delivered {
                taken += 1;
            }
        }
        if got == 0 {
            break;
        }
    }
    Ok(taken)
}

/// Delivers the org's publisher events in the order NATS hands them over,
/// after what `PUB` kept from before this pod opened the org.
pub async fn read_events(
    client: async_nats::Client,
    org: OrgId,
    mut events: async_nats::Subscriber,
    prefix: String,
    backplane: std::sync::Arc<NatsBackplane>,
    max_bytes: usize,
) {
    match catch_up(&client, &org, &prefix, &backplane, max_bytes).await {
        Ok(0) => {}
        Ok(n) => tracing::debug!(org = %org, events = n, "publisher events taken in on opening the org"),
        Err(e) => {
            tracing::warn!(org = %org, error = %e, "cannot read the publisher events kept before the org was opened")
        }
    }
    while let Some(message) = events.next().await {
        let Some((seq, _)) = sequences(message.headers.as_ref()) else {
            continue;
        };
        let id = format!("{prefix}-{seq}");
        let outcome = deliver(
            &org,
            subjects::ingested_channel(&message.subject),
            &id,
            &message.payload,
            &backplane,
            max_bytes,
        )
        .await;
        if outcome != Outcome::Delivered {
            tracing::debug!(org = %org, subject = %message.subject, outcome = outcome.as_str(), "publisher event dropped");
        }
        counter!(telemetry::PUBLISHER_EVENTS, "result" => outcome.as_str()).increment(1);
    }
}
