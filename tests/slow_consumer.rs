#![allow(clippy::unwrap_used)] // tests fail loudly by design

//! A subscriber that stops reading is cut off as a slow consumer, and the
//! others receive everything, in order, without waiting for it.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

const MESSAGES: u64 = 100;
const PAYLOAD: usize = 100_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_and_nobody_else_waits() {
    let server = TestServer::start_with(|c| {
        c.limits.outbound_queue_bytes = Some(800_000);
        c.limits.max_frame_bytes = Some(200_000);
    })
    .await;
    let token = token("acme", "watcher", &["firehose"], &[]);

    // The slow client: a tiny receive buffer, subscribed, then never read.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    let (ws, _) = tokio_tungstenite::client_async(server.ws_url(&token), stream)
        .await
        .unwrap();
    let mut slow = Client { ws };
    slow.subscribe(1, "firehose").await;

    let mut readers = Vec::new();
    for _ in 0..3 {
        let mut c = Client::connect(&server, &token).await;
        c.subscribe(1, "firehose").await;
        readers.push(tokio::spawn(async move {
            let mut offsets = Vec::new();
            for _ in 0..MESSAGES {
                offsets.push(c.message().await.0);
            }
            (offsets, c)
        }));
    }
    let big = "x".repeat(PAYLOAD);
    for n in 1..=MESSAGES {
        server
            .publish("acme", "firehose", json!({ "n": n, "pad": big }))
            .await;
    }
    let mut fast = Vec::new();
    for r in readers {
        let (offsets, c) = r.await.unwrap();
        assert_eq!(
            offsets,
            (1..=MESSAGES).collect::<Vec<_>>(),
            "fast subscribers got everything"
        );
        fast.push(c);
    }
    assert!(server.metric("switchboard_slow_consumer_disconnects_total").await >= 1.0);
    eventually("the slow connection is gone", async || {
        server.connections().await == 3
    })
    .await;

    // What the slow client can still read ends early: it was cut off.
    let mut received = 0;
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(msg) = slow.ws.next().await {
            match msg {
                Ok(Message::Text(_)) => received += 1,
                Ok(_) => {}
                Err(_) => break, // the queue was dropped mid-frame: the stream ends torn
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the slow client's stream ended");
    assert!(
        received < MESSAGES,
        "the slow client got {received} of {MESSAGES}"
    );
    for c in &mut fast {
        c.ping(2).await;
    }
    server.stop().await;
}
