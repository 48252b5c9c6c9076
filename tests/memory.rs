//! Memory no client can inflate, measured on a real `switchboard serve`
//! process (its resident set, from /proc): what one hostile connection, or a
//! few hundred, can make the pod hold.

use crate::common;

use std::time::Duration;

use common::process::Broker;
use common::*;
use serde_json::json;
use switchboard_proto::ServerFrame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// KiB in a MiB (resident sizes are read in KiB).
const MIB: u64 = 1024;

/// The largest growth of `broker`'s resident memory over `before` during
/// `window`: for what a pod would hold if nothing stopped it, where no
/// event says "that is all it will take".
async fn peak_growth(broker: &Broker, before: u64, window: Duration) -> u64 {
    let mut peak = 0;
    let until = tokio::time::Instant::now() + window;
    while tokio::time::Instant::now() < until {
        peak = peak.max(broker.serve.rss_kib().saturating_sub(before));
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    peak
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_holds_at_most_its_queue() {
    // History keeps one message, so what is retained is the slow reader's.
    let broker = Broker::start(&["--publish-rate", "0", "--history-messages", "1"]);
    let mut slow = Client::connect_small(&broker.ws_url(), 64 * 1024).await;
    slow.subscribe(1, "bulk").await;
    let mut publisher = Client::connect_url(&broker.ws_url()).await;
    let before = broker.serve.rss_kib();
    publisher.publish_many("bulk", 600, 60_000).await;
    let grown = broker.serve.rss_kib().saturating_sub(before);
    eprintln!("slow reader: {grown} KiB held");
    assert!(
        grown < 8 * MIB,
        "{grown} KiB held for a reader that stopped while 36 MB were published"
    );
    // It was cut off as a slow consumer.
    eventually("the slow reader is cut off", async || {
        broker.metric("switchboard_connections").await == 1.0
    })
    .await;
    assert_eq!(
        broker.metric("switchboard_slow_consumer_disconnects_total").await,
        1.0
    );
    // What reached it are messages in order, and no close frame inside one:
    // it read nothing for longer than the server waits to finish the frame
    // it was writing, so its stream may end inside that frame.
    let stream = slow.raw_until_eof().await;
    let offsets: Vec<u64> = stream
        .frames
        .iter()
        .map(|f| ServerFrame::decode(&f.payload).unwrap().offset().unwrap())
        .collect();
    assert!(
        offsets.len() < 600 && offsets.windows(2).all(|w| w[1] == w[0] + 1),
        "{offsets:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_again_and_again_to_a_long_turn_shares_one_snapshot() {
    let broker = Broker::start(&["--subscribe-rate", "0"]);
    let res = reqwest::Client::new()
        .post(broker.url("/v1/operators"))
        .bearer_auth(&broker.api_key)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let session: serde_json::Value = res.json().await.unwrap();
    let url = format!(
        "ws://{}/v1/operators/{}/ws",
        broker.serve.addr,
        session["sid"].as_str().unwrap()
    );
    let bearer = format!("Bearer {}", session["token"].as_str().unwrap());
    let mut op = Client {
        ws: connect_ws(upgrade_request(&url, &[("authorization", bearer.as_str())]))
            .await
            .unwrap()
            .0,
    };
    op.send(json!({"type": "turn_start", "id": 1, "turn": "t", "channel": "turns.big"}))
        .await;
    op.ack(1).await;
    let token = "y".repeat(1000);
    op.pipeline((0..300).map(|_| json!({"type": "token", "turn": "t", "text": token})))
        .await;
    op.ping(2).await; // 300 KB of turn text is in

    let mut hostile = Client::connect_small(&broker.ws_url(), 64 * 1024).await;
    let before = broker.serve.rss_kib();
    hostile
        .pipeline((0..50).flat_map(|n| {
            [
                json!({"type": "subscribe", "id": 2 * n, "channel": "turns.big"}),
                json!({"type": "unsubscribe", "id": 2 * n + 1, "channel": "turns.big"}),
            ]
        }))
        .await;
    let peak = peak_growth(&broker, before, Duration::from_secs(2)).await;
    eprintln!("snapshot churn: {peak} KiB at the peak");
    assert!(
        peak < 6 * MIB,
        "{peak} KiB held for 50 unread snapshots of one 300 KB turn"
    );
    // A client that reads gets every answer: the churn was slowed, not dropped.
    let (mut snapshots, mut unsubscribed) = (0, 0);
    while unsubscribed < 50 {
        match hostile.next().await {
            ServerFrame::TurnSnapshot { text_so_far, .. } => {
                assert_eq!(text_so_far.len(), 300_000);
                snapshots += 1;
            }
            ServerFrame::Ack(ack) if ack.epoch.is_none() => unsubscribed += 1,
            _ => {}
        }
    }
    assert_eq!(snapshots, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_churn_on_fresh_channels_leaves_nothing_behind() {
    let broker = Broker::start(&["--subscribe-rate", "0"]);
    let mut c = Client::connect_url(&broker.ws_url()).await;
    c.subscribe(0, "warm-up").await; // first-use allocations out of the way
    let before = broker.serve.rss_kib();
    let pairs = 30_000u64;
    for batch in (0..pairs).step_by(500) {
        c.pipeline((batch..batch + 500).flat_map(|n| {
            [
                json!({"type": "subscribe", "id": 2 * n + 1, "channel": format!("fresh.{n}")}),
                json!({"type": "unsubscribe", "id": 2 * n + 2, "channel": format!("fresh.{n}")}),
            ]
        }))
        .await;
        for _ in 0..1000 {
            assert!(matches!(c.next().await, ServerFrame::Ack(_)));
        }
    }
    let grown = broker.serve.rss_kib().saturating_sub(before);
    eprintln!("fresh-channel churn: {grown} KiB left");
    assert!(
        grown < 3 * MIB,
        "{grown} KiB left behind by {pairs} subscribe/unsubscribe pairs"
    );
    let metrics = get_text(&broker.url("/metrics")).await;
    assert!(metrics.contains("switchboard_history_channels"), "{metrics}");
    assert_eq!(
        metric_in(&metrics, "switchboard_history_channels"),
        0.0,
        "no history was created"
    );
    assert_eq!(
        metric_in(&metrics, "switchboard_subscriptions"),
        1.0,
        "only warm-up is held"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announced_but_unsent_frames_cost_only_what_arrived() {
    raise_fd_limit();
    let broker = Broker::start(&[]);
    let path = format!("/v1/ws?token={}", broker.token);
    let mut sockets = Vec::new();
    for _ in 0..300 {
        let mut s = tokio::net::TcpStream::connect(&broker.serve.addr).await.unwrap();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            s.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 101"));
        sockets.push(s);
    }
    // Idle, upgraded: the baseline.
    let idle = peak_growth(&broker, 0, Duration::from_millis(500)).await;
    // Each announces a 65,535-byte text frame and sends none of it.
    for s in &mut sockets {
        s.write_all(&[0x81, 0xFE, 0xFF, 0xFF, 1, 2, 3, 4]).await.unwrap();
    }
    let announced = peak_growth(&broker, 0, Duration::from_secs(1)).await;
    let per_socket = announced.saturating_sub(idle) * 1024 / 300;
    eprintln!("announced frames: {per_socket} bytes per socket");
    assert!(
        per_socket < 2 * 1024,
        "{per_socket} bytes per socket for a header announcing 64 KiB"
    );
}
