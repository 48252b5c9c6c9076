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
use switchboard::nats::backplane::{NatsBackplane, OpenOrg, OrgLink};
use switchboard::nats::live;
use switchboard::nats::stream::{OrgStream, Stored};
use switchboard_actors::{
    Backplane, BackplaneError, ChannelKey, Event, History, HistoryLimits, Hub, MemorySink, Position,
};
use switchboard_proto::{ChannelName, ConnId, OrgId, subjects};

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
                .publish_message(channel, Bytes::from(format!("{i}")))
                .await
                .unwrap(),
        );
    }
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");
    let read = on_b.read(&subjects::channel(&x), 0, u64::MAX, 10).await.unwrap();
    let got: Vec<(u64, &[u8])> = read.iter().map(|m| (m.offset, &m.payload[..])).collect();
    assert_eq!(
        got,
        vec![(offsets[0], &b"0"[..]), (offsets[2], b"2"), (offsets[3], b"3")]
    );
    assert_eq!(on_a.last(&subjects::channel(&x)).await.unwrap(), Some(offsets[3]));
    assert_eq!(
        on_a.last(&subjects::channel(&ch("chat.none"))).await.unwrap(),
        None
    );
    assert_eq!(
        on_a.read(&subjects::channel(&x), offsets[0], offsets[2], 10)
            .await
            .unwrap()
            .len(),
        1,
        "bounded by `through`"
    );
    // Another org's stream is its own: same subjects, nothing shared.
    let (_, globex) = org_stream(&a, "globex").await;
    assert_eq!(globex.last(&subjects::channel(&x)).await.unwrap(), None);
    assert_ne!(globex.epoch(), on_a.epoch());
}

#[tokio::test]
async fn the_live_feed_delivers_once_in_order_and_repairs_a_gap() {
    let nats = Nats::start().await;
    let pod = TestServer::start_cluster(&nats, |_| {}).await;
    let (client, stream) = org_stream(&pod, "acme").await;
    let chat = ch("chat.live");
    // Two messages published before the feed exists: the feed starts from
    // offset 0, so it reads them from the stream before it goes live.
    let first = stream
        .publish_message(&chat, Bytes::from_static(b"1"))
        .await
        .unwrap();
    let second = stream
        .publish_message(&chat, Bytes::from_static(b"2"))
        .await
        .unwrap();
    stream
        .publish_message(&ch("chat.other"), Bytes::from_static(b"x"))
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Stored>();
    let link = pod
        .app
        .accounts
        .as_ref()
        .unwrap()
        .open_conn(&OrgId::new("acme").unwrap())
        .await
        .unwrap();
    let _ = client;
    let mut feed = live::Feed::start(&link, Arc::new(stream), &chat, Some(0))
        .await
        .unwrap();
    let (_, stream) = org_stream(&pod, "acme").await;
    let task = tokio::spawn(async move {
        feed.run(move |_, m| {
            let _ = tx.send(m);
            None
        })
        .await
    });
    let mut published = vec![first, second];
    for n in 3..=5 {
        published.push(
            stream
                .publish_message(&chat, Bytes::from(n.to_string()))
                .await
                .unwrap(),
        );
    }
    stream
        .publish_message(&ch("chat.other"), Bytes::from_static(b"y"))
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < published.len() {
        let m = tokio::time::timeout(PATIENCE, rx.recv()).await.unwrap().unwrap();
        seen.push(m.offset);
    }
    // 1 and 2 came before the feed: read from the stream first.
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
        on_x.push(
            stream
                .publish_message(&x, Bytes::from(i.to_string()))
                .await
                .unwrap(),
        );
        stream
            .publish_message(&y, Bytes::from_static(b"0"))
            .await
            .unwrap();
    }
    let x = subjects::channel(&x);
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
                .open_conn(&org)
                .await
                .map_err(|e| BackplaneError::Unavailable(e.to_string()))
        })
    });
    let hub = Arc::new(Hub::new());
    let backplane = NatsBackplane::new(open, hub.clone(), HistoryLimits::default());
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
}

fn json_of(frame: &switchboard_proto::PreparedFrame) -> serde_json::Value {
    serde_json::from_slice(&frame.payload()).unwrap()
}

/// The next `n` frames a sink got, as JSON.
async fn frames(sink: &MemorySink, n: usize) -> Vec<serde_json::Value> {
    let mut got = Vec::new();
    while got.len() < n {
        let frame = tokio::time::timeout(PATIENCE, sink.next())
            .await
            .unwrap()
            .unwrap();
        got.push(json_of(&frame));
    }
    got
}

#[tokio::test]
async fn a_turn_streams_to_both_pods_snapshots_anywhere_and_compacts_when_done() {
    let nats = Nats::start().await;
    let (a, b) = two_pods(&nats).await;
    let key = ChannelKey::new(OrgId::new("acme").unwrap(), ch("chat.turns"));
    let (on_a, sink_a) = subscribed_hub(&a, &key).await;
    let (on_b, sink_b) = subscribed_hub(&b, &key).await;
    let turn = switchboard_proto::TurnId::new("reply.1").unwrap();
    let start = on_a.publish(&key, Event::TurnStart(&turn)).await.unwrap().offset;
    // Past a checkpoint (every 64 tokens), from pod A, then pod B carries on.
    let mut text = String::new();
    for i in 0..70 {
        let token = format!("w{i} ");
        on_a.publish(&key, Event::Token(&turn, &token)).await.unwrap();
        text.push_str(&token);
    }
    for sink in [&sink_a, &sink_b] {
        let got = frames(sink, 71).await;
        assert_eq!(got[0]["type"], "turn_start");
        let streamed: String = got[1..].iter().map(|f| f["text"].as_str().unwrap()).collect();
        assert_eq!(
            streamed, text,
            "every token once, in order, no checkpoint among them"
        );
        let offsets: Vec<u64> = got.iter().map(|f| f["offset"].as_u64().unwrap()).collect();
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");
    }
    assert!(
        matches!(
            on_b.publish(&key, Event::TurnStart(&turn)).await,
            Err(BackplaneError::TurnExists(_))
        ),
        "one live turn per id, whichever pod asks"
    );
    // A joiner on pod B gets the text so far in one snapshot.
    let joined = on_b.read(&key, Position::Live, 100).await.unwrap();
    assert_eq!(joined.messages.len(), 1);
    let snapshot = json_of(&joined.messages[0].1);
    assert_eq!(snapshot["type"], "turn_snapshot");
    assert_eq!(snapshot["text_so_far"], text);
    assert_eq!(snapshot["start_offset"], start);
    // Pod B streams the rest of a turn pod A started (a moved operator).
    on_b.publish(&key, Event::Token(&turn, "end.")).await.unwrap();
    text.push_str("end.");
    let end = on_b.publish(&key, Event::TurnEnd(&turn)).await.unwrap().offset;
    for sink in [&sink_a, &sink_b] {
        let got = frames(sink, 2).await;
        assert_eq!(
            (got[0]["text"].as_str(), got[1]["type"].as_str()),
            (Some("end."), Some("turn_end"))
        );
        assert_eq!(got[1]["offset"], end);
    }
    // Done: history keeps it as one `turn`, and it is live no more.
    let tail = on_a.read(&key, Position::Tail, 10).await.unwrap();
    let kept: Vec<_> = tail.messages.iter().map(|(_, f)| json_of(f)).collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(
        (kept[0]["type"].as_str(), kept[0]["text"].as_str()),
        (Some("turn"), Some(text.as_str()))
    );
    assert!(
        on_b.read(&key, Position::Live, 100)
            .await
            .unwrap()
            .messages
            .is_empty()
    );
    assert!(matches!(
        on_a.publish(&key, Event::Token(&turn, "late")).await,
        Err(BackplaneError::NoSuchTurn(_))
    ));
    // The id may stream again, and a channel carries a bounded number of turns.
    let mut turns = Vec::new();
    for i in 0..HistoryLimits::default().max_live_turns {
        let t = switchboard_proto::TurnId::new(&format!("t{i}")).unwrap();
        on_a.publish(&key, Event::TurnStart(&t)).await.unwrap();
        turns.push(t);
    }
    let one_more = switchboard_proto::TurnId::new("t-extra").unwrap();
    assert!(matches!(
        on_b.publish(&key, Event::TurnStart(&one_more)).await,
        Err(BackplaneError::TooManyTurns(_))
    ));
    on_b.publish(
        &key,
        Event::TurnError {
            turn: &turns[0],
            reason: switchboard_proto::TurnFailure::OperatorGone,
            message: None,
        },
    )
    .await
    .unwrap();
    on_b.publish(&key, Event::TurnStart(&turn)).await.unwrap();
}

/// Runs a feed on a connection of its own that is cut and kept away for
/// 600 ms while messages 2 and 3 are stored (lost to it on the wire), then
/// comes back. With `told`, the feed hears of the reconnect (as a pod's
/// feeds do); then `after` more messages are published. Returns the
/// offsets published and those the feed delivered within a few seconds.
async fn cut_feed(told: bool, after: u32) -> (Vec<u64>, Vec<u64>) {
    let nats = Nats::start().await;
    let pod = TestServer::start_cluster(&nats, |_| {}).await;
    let org = OrgId::new("acme").unwrap();
    let (_, stream) = org_stream(&pod, "acme").await;
    let stream = Arc::new(stream);
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let (connects, reconnects) = tokio::sync::watch::channel(0u64);
    let connects = Arc::new(connects);
    let away = Duration::from_millis(600);
    let client = pod
        .app
        .accounts
        .as_ref()
        .unwrap()
        .server_user(&org)
        .await
        .unwrap()
        .reconnect_delay_callback(move |_| away)
        .event_callback(move |e| {
            let (tx, connects) = (events_tx.clone(), connects.clone());
            async move {
                if told && matches!(e, async_nats::Event::Connected) {
                    connects.send_modify(|n| *n += 1);
                }
                let _ = tx.send(e);
            }
        })
        .connect(&nats.url)
        .await
        .unwrap();
    let link = OrgLink {
        client: client.clone(),
        id: 0,
        reconnects,
    };
    let chat = ch("chat.gap");
    let mut feed = live::Feed::start(&link, stream.clone(), &chat, None)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let task = tokio::spawn(async move {
        feed.run(move |_, m| {
            let _ = tx.send(m.offset);
            None
        })
        .await
    });
    let publish = |n: u32| {
        let stream = stream.clone();
        let chat = chat.clone();
        async move {
            stream
                .publish_message(&chat, Bytes::from(n.to_string()))
                .await
                .unwrap()
        }
    };
    let mut published = vec![publish(1).await];
    assert_eq!(
        tokio::time::timeout(PATIENCE, rx.recv()).await.unwrap(),
        Some(published[0])
    );
    client.force_reconnect().await.unwrap();
    let mut wait_for = async |what: fn(&async_nats::Event) -> bool| loop {
        let e = tokio::time::timeout(PATIENCE, events.recv())
            .await
            .unwrap()
            .unwrap();
        if what(&e) {
            break;
        }
    };
    wait_for(|e| matches!(e, async_nats::Event::Disconnected)).await;
    published.push(publish(2).await);
    published.push(publish(3).await);
    wait_for(|e| matches!(e, async_nats::Event::Connected)).await;
    // The subscription is back once a round trip went through (`flush`
    // only writes out the client's buffer: NATS.md, trap 7).
    let _ = client.request(switchboard_proto::subjects::PING, "".into()).await;
    for n in 0..after {
        published.push(publish(4 + n).await);
    }
    let mut seen = Vec::new();
    while let Ok(Some(offset)) = tokio::time::timeout(Duration::from_secs(3), rx.recv()).await {
        seen.push(offset);
        if seen.len() + 1 == published.len() {
            break;
        }
    }
    task.abort();
    seen.insert(0, published[0]);
    (published, seen)
}

#[tokio::test]
async fn a_core_message_lost_in_a_reconnect_is_read_from_the_stream() {
    // Not told of the reconnect: message 4 shows the gap.
    let (published, seen) = cut_feed(false, 1).await;
    assert_eq!(
        seen, published,
        "2 and 3 were read from the stream, in order, before 4"
    );
}

#[tokio::test]
async fn after_a_reconnect_a_feed_reads_what_it_missed_with_no_later_message() {
    let (published, seen) = cut_feed(true, 0).await;
    assert_eq!(seen, published, "2 and 3, though nothing came after them");
}
