//! Publisher events into channels (cluster mode). What publishers send on
//! `pub.<channel>` is captured by the org's `PUB` stream, which republishes
//! each event with its sequence on `in.<channel>`. Every pod with the org
//! open takes each event into the channel stream with that sequence as its
//! message id, so JetStream keeps the first copy and drops the rest: each
//! event lands once, in the order the publisher sent it (a pod publishes
//! event n only after n-1 is stored), whichever pods are up.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use futures_util::StreamExt;
use metrics::counter;
use serde_json::value::RawValue;
use switchboard_actors::{ChannelKey, telemetry};
use switchboard_proto::{OrgId, subjects};

use super::backplane::NatsBackplane;
use super::live::sequences;

/// The publisher-event stream's name inside each org's account.
pub const STREAM: &str = "PUB";
/// Events are only kept until every pod had its chance (the channel
/// stream's duplicate window is two minutes).
const KEEP: Duration = Duration::from_secs(60);

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
    subject: &str,
    id: &str,
    payload: &[u8],
    backplane: &NatsBackplane,
    max_bytes: usize,
) -> Outcome {
    let Some(channel) = subjects::ingested_channel(subject) else {
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

/// Delivers the org's publisher events in the order NATS hands them over.
pub async fn read_events(
    org: OrgId,
    mut events: async_nats::Subscriber,
    prefix: String,
    backplane: std::sync::Arc<NatsBackplane>,
    max_bytes: usize,
) {
    while let Some(message) = events.next().await {
        let Some((seq, _)) = sequences(message.headers.as_ref()) else {
            continue;
        };
        let id = format!("{prefix}-{seq}");
        let outcome = deliver(
            &org,
            &message.subject,
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
