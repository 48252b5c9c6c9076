//! Pods publishing into one channel at once (cluster mode, a real
//! nats-server): nats-server republishes a stored message after it lets go
//! of the stream, so copies of messages stored concurrently can arrive
//! swapped; a channel's feed still delivers each message once, in offset
//! order.

use crate::common;

use std::sync::Arc;

use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;
use common::nats::*;
use switchboard::nats::live::Feed;
use switchboard::nats::stream::OrgStream;
use switchboard_actors::HistoryLimits;
use switchboard_proto::{ChannelName, OrgId, TurnId, subjects};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_delivers_in_offset_order_what_pods_publish_at_once() {
    let nats = Nats::start().await;
    let pods = cluster(&nats, 3, |_| {}).await;
    let acme = OrgId::new("acme").unwrap();
    let chat = ChannelName::new("chat.race").unwrap();
    // One connection per pod: nats-server handles each one's publishes on
    // its own, concurrently with the others'.
    let mut streams = Vec::new();
    for pod in &pods {
        let client = pod.app.accounts.as_ref().unwrap().open(&acme).await.unwrap();
        streams.push(Arc::new(
            OrgStream::open(client, HistoryLimits::default()).await.unwrap(),
        ));
    }
    let link = pods[0]
        .app
        .accounts
        .as_ref()
        .unwrap()
        .open_conn(&acme)
        .await
        .unwrap();
    let mut feed = Feed::start(&link, streams[0].clone(), &chat, None).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let following = tokio::spawn(async move {
        feed.run(move |_, m| {
            let _ = tx.send(m.offset);
            None
        })
        .await
    });
    // Turns are live on the channel before the race (the feed checks holes
    // while a channel has turns; a channel without has one subject).
    for (p, stream) in streams.iter().enumerate() {
        let turn = subjects::turn(&chat, &TurnId::new(&format!("t{p}")).unwrap());
        let start = PublishMessage::build().payload(Bytes::from_static(b"start"));
        stream.publish(turn, start).await.unwrap().unwrap();
    }
    const EACH: usize = 1000;
    let publishers: Vec<_> = streams
        .iter()
        .enumerate()
        .map(|(p, stream)| {
            let (stream, chat) = (stream.clone(), chat.clone());
            tokio::spawn(async move {
                // The channel's messages and a turn's events: two subjects.
                let turn = subjects::turn(&chat, &TurnId::new(&format!("t{p}")).unwrap());
                let mut offsets = Vec::with_capacity(EACH);
                for n in 0..EACH {
                    let payload = Bytes::from(format!("{p}.{n}"));
                    let offset = if n % 2 == 0 {
                        stream.publish_message(&chat, payload).await.unwrap()
                    } else {
                        let message = PublishMessage::build().payload(payload);
                        stream.publish(turn.clone(), message).await.unwrap().unwrap()
                    };
                    offsets.push(offset);
                }
                offsets
            })
        })
        .collect();
    let mut published = Vec::new();
    for p in publishers {
        published.extend(p.await.unwrap());
    }
    published.sort_unstable();
    // The turns' first events came before the race.
    for _ in 0..streams.len() {
        tokio::time::timeout(common::PATIENCE, rx.recv()).await.unwrap();
    }
    let mut delivered = Vec::with_capacity(published.len());
    while delivered.len() < published.len() {
        let next = tokio::time::timeout(common::PATIENCE, rx.recv()).await;
        delivered.push(next.expect("every message in time").unwrap());
    }
    following.abort();
    let swapped: Vec<_> = delivered.windows(2).filter(|w| w[1] <= w[0]).collect();
    assert!(swapped.is_empty(), "delivered out of offset order: {swapped:?}");
    assert_eq!(delivered, published, "each once");
}

/// A burst of publishes from one connection: sent without waiting for each
/// to be stored, answered in request order, stored in that order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_publishes_is_pipelined_and_answered_in_order() {
    let nats = Nats::start().await;
    let pods = cluster(&nats, 2, |c| c.limits.publish_rate = Some(0)).await;
    let mut watcher = common::Client::connect_all(&pods[1], "acme").await;
    watcher.subscribe(1, "burst").await;
    let token = common::token("acme", "p", &[">"], &["burst"]);
    let mut publisher = common::Client::connect(&pods[0], &token).await;
    const N: u64 = 500;
    // Request 250 is refused (not a channel it may publish on): its error
    // comes between the acks of 249 and 251.
    publisher
        .pipeline((1..=N).map(|i| {
            let channel = if i == 250 { "elsewhere" } else { "burst" };
            serde_json::json!({"type": "publish", "id": i, "channel": channel, "data": i})
        }))
        .await;
    let mut offsets = Vec::new();
    for i in 1..=N {
        match publisher.next().await {
            switchboard_proto::ServerFrame::Ack(ack) => {
                assert_eq!(
                    ack.id,
                    switchboard_proto::RequestId::Num(i),
                    "replies in request order"
                );
                offsets.push(ack.offset.unwrap());
            }
            switchboard_proto::ServerFrame::Error { id, code, .. } => {
                assert_eq!((i, id), (250, Some(switchboard_proto::RequestId::Num(250))));
                assert_eq!(code, switchboard_proto::ErrorCode::Forbidden);
            }
            other => panic!("expected a reply to {i}, got {}", other.to_json()),
        }
    }
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "stored in request order");
    for (i, offset) in (1..=N).filter(|i| *i != 250).zip(&offsets) {
        match watcher.channel_event().await {
            switchboard_proto::ServerFrame::Message {
                offset: got, data, ..
            } => {
                assert_eq!((got, data.get()), (*offset, i.to_string().as_str()));
            }
            other => panic!("expected message {i}, got {}", other.to_json()),
        }
    }
}
