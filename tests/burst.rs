//! Bursts: publishers pipelining thousands of messages as fast as their
//! sockets take them, so the server handles many publishes per read and
//! coalesces its writes. Every subscriber still gets every message exactly
//! once, in order, and nobody is cut off as a slow consumer.

use crate::common;

use common::*;
use futures_util::StreamExt;
use serde_json::json;
use switchboard_proto::ServerFrame;

const SUBSCRIBERS: usize = 100;
const MESSAGES: u64 = 2000;
const CHANNELS: [&str; 2] = ["room.a", "room.b"];

/// Reads `MESSAGES` messages of every channel in `CHANNELS`; returns them
/// per channel, as (offset, n).
async fn read_all(mut c: Client) -> Vec<Vec<(u64, u64)>> {
    let mut got = vec![Vec::with_capacity(MESSAGES as usize); CHANNELS.len()];
    while got.iter().map(Vec::len).sum::<usize>() < CHANNELS.len() * MESSAGES as usize {
        match c.next().await {
            ServerFrame::Message {
                channel,
                offset,
                data,
                ..
            } => {
                let at = CHANNELS.iter().position(|ch| *ch == channel.as_str()).unwrap();
                let n = serde_json::from_str::<serde_json::Value>(data.get()).unwrap()["n"]
                    .as_u64()
                    .unwrap();
                got[at].push((offset, n));
            }
            other => panic!("expected a message, got {}", other.to_json()),
        }
    }
    // Nothing more: no duplicate trails the last message.
    c.ping(99).await;
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_reaches_every_subscriber_complete_and_in_order() {
    raise_fd_limit();
    let server = TestServer::start_with(|c| c.limits.publish_rate = Some(0)).await;
    let token = token("acme", "watcher", &["room.*"], &[]);
    let clients: Vec<Client> = futures_util::stream::iter(0..SUBSCRIBERS)
        .map(|_| {
            let (server, token) = (&server, &token);
            async move {
                let mut c = Client::connect(server, token).await;
                for (id, channel) in CHANNELS.iter().enumerate() {
                    c.subscribe(id as u64, channel).await;
                }
                c
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let readers: Vec<_> = clients.into_iter().map(|c| tokio::spawn(read_all(c))).collect();

    // Two publishers at once, each pipelining its whole burst before
    // reading a single ack.
    let publishers: Vec<_> = CHANNELS
        .iter()
        .map(|channel| {
            let url = server.ws_url(&common::token("acme", "publisher", &[], &["room.*"]));
            tokio::spawn(async move {
                let mut p = Client::connect_url(&url).await;
                p.pipeline(
                    (1..=MESSAGES)
                        .map(|n| json!({"type": "publish", "id": n, "channel": channel, "data": {"n": n}})),
                )
                .await;
                let mut acked = Vec::new();
                while acked.len() < MESSAGES as usize {
                    match p.next().await {
                        ServerFrame::Ack(ack) => acked.push(ack.offset.unwrap()),
                        other => panic!("expected an ack, got {}", other.to_json()),
                    }
                }
                acked
            })
        })
        .collect();
    let want: Vec<u64> = (1..=MESSAGES).collect();
    for p in publishers {
        assert_eq!(p.await.unwrap(), want, "acks in order, one per publish");
    }
    let want: Vec<(u64, u64)> = (1..=MESSAGES).map(|n| (n, n)).collect();
    for (i, reader) in readers.into_iter().enumerate() {
        for (channel, got) in CHANNELS.iter().zip(reader.await.unwrap()) {
            assert!(
                got == want,
                "subscriber {i} on {channel}: got {} messages",
                got.len()
            );
        }
    }
    let metrics = server.metrics().await;
    assert_eq!(
        metric_in(&metrics, "switchboard_slow_consumer_disconnects_total"),
        0.0,
        "a burst the subscribers keep reading cuts nobody"
    );
    server.stop().await;
}
