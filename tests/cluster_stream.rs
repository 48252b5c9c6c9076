//! The cluster data plane (in progress) against a real nats-server: an
//! org's channel stream (offsets from its sequence, per-channel history,
//! a stable epoch), a channel's live feed, which delivers each message once
//! and in order and repairs a gap from the stream, and the backplane over
//! them feeding two pods' hubs.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::nats::*;
use common::*;
use switchboard::nats::backplane::{NatsBackplane, OpenOrg};
use switchboard::nats::live;
use switchboard::nats::stream::{OrgStream, Stored};
use switchboard_actors::{
    Backplane, BackplaneError, ChannelKey, Event, History, HistoryLimits, Hub, MemorySink, Position,
};
use switchboard_proto::{ChannelName, ConnId, OrgId};

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
    let feed = live::Feed::start(&client, Arc::new(stream), &chat, Some(0))
        .await
        .unwrap();
    let (_, stream) = org_stream(&pod, "acme").await;
    let task = tokio::spawn(feed.run(move |m| {
        let _ = tx.send(m);
    }));
    let mut published = vec![first, second];
    for n in 3..=5 {
        published.push(stream.publish(&chat, Bytes::from(n.to_string())).await.unwrap());
    }
    stream
        .publish(&ch("chat.other"), Bytes::from_static(b"y"))
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < published.len() {
        let m = tokio::time::timeout(PATIENCE, rx.recv()).await.unwrap().unwrap();
        seen.push(m.offset);
    }
    // 1 and 2 came before the feed: the first live message showed the gap,
    // and they were read from the stream before it.
    assert_eq!(seen, published, "each once, in order, the gap repaired");
    assert!(
        tokio::time::timeout(Duration::from_millis(100), rx.recv())
            .await
            .is_err(),
        "nothing more (the other channel's message is not this feed's)"
    );
    task.abort();
}

#[tokio::test]
async fn long_reads_go_through_a_consumer_and_stop_where_asked() {
    let nats = Nats::start().await;
    let pod = TestServer::start_cluster(&nats, |_| {}).await;
    let (_, stream) = org_stream(&pod, "acme").await;
    let (x, y) = (ch("chat.x"), ch("chat.y"));
    let mut on_x = Vec::new();
    for i in 0..60 {
        on_x.push(stream.publish(&x, Bytes::from(i.to_string())).await.unwrap());
        stream.publish(&y, Bytes::from_static(b"0")).await.unwrap();
    }
    let all = stream.read(&x, 0, u64::MAX, 1000).await.unwrap();
    assert_eq!(all.iter().map(|m| m.offset).collect::<Vec<_>>(), on_x);
    assert_eq!(all[59].payload, Bytes::from_static(b"59"));
    let some = stream.read(&x, on_x[4], on_x[40], 1000).await.unwrap();
    assert_eq!(
        some.iter().map(|m| m.offset).collect::<Vec<_>>(),
        on_x[5..=40].to_vec()
    );
    let capped = stream.read(&x, 0, u64::MAX, 20).await.unwrap();
    assert_eq!(capped.len(), 20);
}

/// A pod's hub fed by a NATS backplane, and one subscriber on it.
async fn subscribed_hub(pod: &TestServer, key: &ChannelKey) -> (Arc<NatsBackplane>, Arc<MemorySink>) {
    let accounts = pod.app.accounts.clone().unwrap();
    let open: OpenOrg = Arc::new(move |org| {
        let accounts = accounts.clone();
        Box::pin(async move {
            accounts
                .open(&org)
                .await
                .map_err(|e| BackplaneError::Unavailable(e.to_string()))
        })
    });
    let hub = Arc::new(Hub::new());
    let backplane = Arc::new(NatsBackplane::new(open, hub.clone(), HistoryLimits::default()));
    let sink = Arc::new(MemorySink::new(1 << 20));
    assert!(
        hub.join(key, ConnId(1), sink.clone()).unwrap(),
        "the first subscriber"
    );
    backplane.attach(key).await.unwrap();
    let read = backplane.read(key, Position::Live, 100).await.unwrap();
    hub.go_live(key, ConnId(1), read.top).unwrap();
    (backplane, sink)
}

fn offset_of(frame: &switchboard_proto::PreparedFrame) -> u64 {
    let v: serde_json::Value = serde_json::from_slice(&frame.payload()).unwrap();
    v["offset"].as_u64().unwrap()
}

#[tokio::test]
async fn two_pods_deliver_every_message_with_the_same_offsets_and_resume_on_either() {
    let nats = Nats::start().await;
    let (a, b) = two_pods(&nats).await;
    let key = ChannelKey::new(OrgId::new("acme").unwrap(), ch("chat.both"));
    let (on_a, sink_a) = subscribed_hub(&a, &key).await;
    let (on_b, sink_b) = subscribed_hub(&b, &key).await;
    let mut offsets = Vec::new();
    for i in 0..10 {
        let backplane = if i % 2 == 0 { &on_a } else { &on_b };
        let data = serde_json::value::RawValue::from_string(i.to_string()).unwrap();
        offsets.push(
            backplane
                .publish(&key, Event::Message(&data))
                .await
                .unwrap()
                .offset,
        );
    }
    for sink in [&sink_a, &sink_b] {
        let mut got = Vec::new();
        while got.len() < offsets.len() {
            let frame = tokio::time::timeout(PATIENCE, sink.next())
                .await
                .unwrap()
                .unwrap();
            got.push(offset_of(&frame));
        }
        assert_eq!(
            got, offsets,
            "every message once, in order, the same offsets on both pods"
        );
    }
    // A client that saw offsets[4] on pod A resumes on pod B.
    let resumed = on_b.read(&key, Position::After(offsets[4]), 100).await.unwrap();
    assert!(resumed.complete);
    assert_eq!(resumed.top, offsets[9]);
    let got: Vec<u64> = resumed.messages.iter().map(|(o, _)| *o).collect();
    assert_eq!(got, offsets[5..].to_vec());
    let tail = on_a.read(&key, Position::Tail, 3).await.unwrap();
    assert_eq!(
        tail.messages.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
        offsets[7..].to_vec()
    );
    let ahead = on_a
        .read(&key, Position::After(offsets[9] + 100), 10)
        .await
        .unwrap();
    assert!(!ahead.complete, "a position past the top is not this stream's");
    assert_eq!(resumed.epoch, tail.epoch);
    // Turns do not cross pods yet: refused, not lost silently.
    let turn = switchboard_proto::TurnId::new("t1").unwrap();
    assert!(on_a.publish(&key, Event::TurnStart(&turn)).await.is_err());
}
