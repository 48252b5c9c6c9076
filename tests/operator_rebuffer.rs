//! Frames acknowledged to a client are never lost silently: when the
//! operator's socket dies with them still queued, they go to its next socket,
//! in order, and what no longer fits the session's buffer is counted in the
//! `gap` it is told of.
//!
//! One test in this binary: it reads the process-wide queue metric to know
//! when frames start to wait in the dying socket's queue.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use common::*;
use serde_json::{Value, json};
use switchboard_proto::ServerFrame;

const FRAME_DATA: usize = 4000;

/// Sends frames to `role:main-ai` (each acknowledged) until the operator's
/// socket has to queue them, then `queued` more. Returns how many were sent.
async fn send_until_queued(server: &TestServer, alice: &mut Client, queued: u64) -> u64 {
    let pad = "z".repeat(FRAME_DATA);
    let queueing = "switchboard_outbound_queue_bytes_count";
    let before = server.metric(queueing).await;
    let mut n = 0;
    let mut extra = None;
    while extra != Some(0) {
        alice
            .send(json!({"type": "send", "id": n, "to": "role:main-ai", "data": {"n": n, "pad": pad}}))
            .await;
        alice.ack(n).await;
        n += 1;
        extra = match extra {
            Some(left) => Some(left - 1),
            None if server.metric(queueing).await > before => Some(queued),
            None => None,
        };
        assert!(n < 10_000, "the operator's socket never queued");
    }
    n
}

/// What a returning operator gets: the `n` of each frame up to `last` or up
/// to a gap notice, and what the gap says was dropped; then nothing more.
async fn returned(server: &TestServer, s: &Session, last: u64) -> (Vec<u64>, u64) {
    let mut op = Client::operator(server, s).await;
    let mut ns = Vec::new();
    let dropped = loop {
        match op.next().await {
            ServerFrame::Frame { data, .. } => {
                let data: Value = serde_json::from_str(data.get()).unwrap();
                ns.push(data["n"].as_u64().unwrap());
                if ns.last() == Some(&last) {
                    break 0;
                }
            }
            ServerFrame::Gap { dropped } => break dropped,
            other => panic!("{}", other.to_json()),
        }
    };
    op.ping(99).await; // nothing else was owed
    (ns, dropped)
}

/// An operator whose socket takes little and reads nothing gets `queued`
/// frames stuck in its queue, then its machine vanishes.
async fn operator_dies_with_frames_queued(server: &TestServer, queued: u64) -> (Session, u64) {
    let s = mint_ok(server, "acme", &["main-ai"]).await;
    let op = Client::connect_small_with(operator_request(server, &s), 4096).await;
    let mut alice = Client::connect_all(server, "acme").await;
    let sent = send_until_queued(server, &mut alice, queued).await;
    op.reset();
    eventually("the session sees its socket gone", async || {
        session_call(server, reqwest::Method::GET, &s.sid, Some(&s.token))
            .await
            .1["connected"]
            == json!(false)
    })
    .await;
    (s, sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_a_dead_operator_socket_never_wrote_are_delivered_or_counted() {
    // Everything still queued fits the session's buffer: it all comes back.
    let server = TestServer::start_with(|c| c.limits.publish_rate = Some(0)).await;
    let (s, sent) = operator_dies_with_frames_queued(&server, 40).await;
    let (ns, dropped) = returned(&server, &s, sent - 1).await;
    assert_eq!(dropped, 0, "all of them fit the session's buffer");
    let first = ns[0];
    assert!(ns.len() > 40, "at least the {} queued ones: {ns:?}", 40);
    assert_eq!(ns, (first..sent).collect::<Vec<_>>(), "in order, none twice");
    server.stop().await;

    // A buffer with room for four: the oldest four, and the rest counted.
    let server = TestServer::start_with(|c| {
        c.limits.publish_rate = Some(0);
        c.operators.buffer_bytes = Some(17_000);
    })
    .await;
    let (s, sent) = operator_dies_with_frames_queued(&server, 40).await;
    let (ns, dropped) = returned(&server, &s, sent - 1).await;
    assert_eq!(ns.len(), 4, "{ns:?}");
    let first = ns[0];
    assert_eq!(ns, (first..first + 4).collect::<Vec<_>>(), "the oldest, in order");
    assert_eq!(first + 4 + dropped, sent, "every frame is delivered or counted");
    assert!(dropped >= 36);
    server.stop().await;
}
