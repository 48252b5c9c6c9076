//! A subscriber that stops reading is cut off as a slow consumer once its
//! queue passes its bound in bytes (1 MiB by default), the others receive
//! everything, in order, without waiting for it, and the cut itself is
//! clean: whole frames, then a 4008 close frame, never a close inside a frame.
//!
//! One test in this binary: its metric counts are exact.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use common::*;

const MESSAGES: u64 = 600;
const PAYLOAD: usize = 60_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_cleanly_and_nobody_else_waits() {
    let server = TestServer::start_with(|c| c.limits.publish_rate = Some(0)).await;
    let watcher = token("acme", "watcher", &["firehose"], &[]);
    // The slow client: a 64 KiB receive buffer, subscribed, then not read.
    let mut slow = Client::connect_small(&server.ws_url(&watcher), 64 * 1024).await;
    slow.subscribe(1, "firehose").await;
    let mut readers = Vec::new();
    for _ in 0..3 {
        let mut c = Client::connect(&server, &watcher).await;
        c.subscribe(1, "firehose").await;
        readers.push(tokio::spawn(async move {
            let mut offsets = Vec::new();
            for _ in 0..MESSAGES {
                offsets.push(c.message().await.0);
            }
            (offsets, c)
        }));
    }
    let mut publisher = Client::connect(&server, &token("acme", "pub", &[], &["firehose"])).await;
    let publishing = tokio::spawn(async move {
        let last = publisher.publish_many("firehose", MESSAGES, PAYLOAD).await;
        (last, publisher)
    });

    // 600 × 60 KB is 36 MB: far past the slow client's 1 MiB.
    eventually("the slow client is cut off", async || {
        server
            .metric("switchboard_connections_closed_total{reason=\"slow_consumer\"}")
            .await
            == 1.0
    })
    .await;
    // It reads again at once, in time for the server to finish the frame it
    // was in the middle of: everything it gets is whole, then 4008.
    let stream = slow.raw_until_eof().await;
    assert_eq!(stream.torn, 0, "the stream ends on a frame boundary");
    let (close, messages) = stream.frames.split_last().unwrap();
    assert_eq!(close.close_code(), Some(4008));
    assert_eq!(&close.payload[2..], b"SLOW_CONSUMER");
    assert!(
        !messages.is_empty() && (messages.len() as u64) < MESSAGES,
        "{}",
        messages.len()
    );
    for (i, frame) in messages.iter().enumerate() {
        let decoded = switchboard_proto::ServerFrame::decode(&frame.payload).unwrap();
        assert_eq!(decoded.offset(), Some(i as u64 + 1), "in order, from the first");
    }

    let (last, _publisher) = publishing.await.unwrap();
    assert_eq!(last, MESSAGES);
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
    assert_eq!(
        server.metric("switchboard_slow_consumer_disconnects_total").await,
        1.0
    );
    eventually("the slow connection is gone", async || {
        server.connections().await == 4
    })
    .await;
    for c in &mut fast {
        c.ping(2).await;
    }
    server.stop().await;
}
