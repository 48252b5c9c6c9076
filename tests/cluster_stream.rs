#![allow(clippy::unwrap_used)] // tests fail loudly by design

//! The cluster data plane's first pieces against a real nats-server: an
//! org's channel stream (offsets from its sequence, per-channel history,
//! a stable epoch) and a channel's live feed, which delivers each message
//! once and in order and repairs a gap from the stream.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::nats::*;
use common::*;
use switchboard::nats::live;
use switchboard::nats::stream::{OrgStream, Stored};
use switchboard_actors::HistoryLimits;
use switchboard_proto::{ChannelName, OrgId};

async fn org_stream(pod: &TestServer, org: &str) -> (async_nats::Client, OrgStream) {
    let client = pod
        .app
        .accounts
        .as_ref()
        .unwrap()
        .open(&OrgId::new(org).unwrap())
        .await
        .unwrap();
    let stream = OrgStream::open(client.clone(), HistoryLimits::default())
        .await
        .unwrap();
    (client, stream)
}

fn ch(name: &str) -> ChannelName {
    ChannelName::new(name).unwrap()
}

#[tokio::test]
async fn offsets_come_from_the_stream_and_history_is_per_channel() {
    let nats = Nats::start().await;
    let (a, b) = two_pods(&nats).await;
    let (_, on_a) = org_stream(&a, "acme").await;
    let (_, on_b) = org_stream(&b, "acme").await;
    assert_eq!(on_a.epoch(), on_b.epoch(), "one stream, one epoch, every pod");
    let (x, y) = (ch("chat.x"), ch("chat.y"));
    let mut offsets = Vec::new();
    for (i, (stream, channel)) in [(&on_a, &x), (&on_b, &y), (&on_b, &x), (&on_a, &x)]
        .into_iter()
        .enumerate()
    {
        offsets.push(
            stream
                .publish(channel, Bytes::from(format!("{i}")))
                .await
                .unwrap(),
        );
    }
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");
    let read = on_b.read(&x, 0, u64::MAX, 10).await.unwrap();
    let got: Vec<(u64, &[u8])> = read.iter().map(|m| (m.offset, &m.payload[..])).collect();
    assert_eq!(
        got,
        vec![(offsets[0], &b"0"[..]), (offsets[2], b"2"), (offsets[3], b"3")]
    );
    assert_eq!(on_a.last(&x).await.unwrap(), Some(offsets[3]));
    assert_eq!(on_a.last(&ch("chat.none")).await.unwrap(), None);
    assert_eq!(
        on_a.read(&x, offsets[0], offsets[2], 10).await.unwrap().len(),
        1,
        "bounded by `through`"
    );
    // Another org's stream is its own: same subjects, nothing shared.
    let (_, globex) = org_stream(&a, "globex").await;
    assert_eq!(globex.last(&x).await.unwrap(), None);
    assert_ne!(globex.epoch(), on_a.epoch());
}

#[tokio::test]
async fn the_live_feed_delivers_once_in_order_and_repairs_a_gap() {
    let nats = Nats::start().await;
    let pod = TestServer::start_cluster(&nats, |_| {}).await;
    let (client, stream) = org_stream(&pod, "acme").await;
    let chat = ch("chat.live");
    // Two messages published before the feed exists: the feed starts from
    // offset 0, so the first live message it sees shows a gap.
    let first = stream.publish(&chat, Bytes::from_static(b"1")).await.unwrap();
    let second = stream.publish(&chat, Bytes::from_static(b"2")).await.unwrap();
    stream
        .publish(&ch("chat.other"), Bytes::from_static(b"x"))
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Stored>();
    let feed = {
        let (client, chat) = (client.clone(), chat.clone());
        tokio::spawn(async move {
            let stream = OrgStream::open(client.clone(), HistoryLimits::default())
                .await
                .unwrap();
            live::follow(&client, &stream, &chat, 0, |m| {
                let _ = tx.send(m);
            })
            .await
        })
    };
    // Until the feed's subscription is live, publish nothing it must see live:
    // poll with a marker it will deliver (repairing 1 and 2 first).
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut n = 3;
    while seen.len() < 3 {
        let offset = stream.publish(&chat, Bytes::from(n.to_string())).await.unwrap();
        n += 1;
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
            seen.push(m.offset);
            if m.offset == offset {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the feed delivered {seen:?}"
        );
    }
    assert_eq!(
        &seen[..2],
        &[first, second],
        "the gap was repaired from the stream"
    );
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "in order, each once: {seen:?}"
    );
    let published = n - 1;
    // Everything published so far arrives exactly once.
    while seen.len() < published {
        let m = tokio::time::timeout(PATIENCE, rx.recv()).await.unwrap().unwrap();
        seen.push(m.offset);
    }
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    assert_eq!(
        stream.read(&chat, 0, u64::MAX, 100).await.unwrap().len(),
        seen.len()
    );
    feed.abort();
}
