//! Exact resume: a subscriber that is cut off and comes back with its last
//! offset gets exactly what it missed, then live messages, with no gap and no
//! duplicate, while a publisher keeps publishing. When history cannot cover
//! the gap, it is told so (`recovered: false`).

use crate::common;

use std::time::Duration;

use common::*;
use serde_json::json;

const MESSAGES: u64 = 400;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_forced_disconnects_has_no_gap_and_no_duplicate() {
    let server = TestServer::start_with(|c| c.limits.publish_rate = Some(0)).await;
    let mut publisher = Client::connect(&server, &token("acme", "pub", &[], &["turns.>"])).await;
    let publishing = tokio::spawn(async move {
        for n in 1..=MESSAGES {
            publisher
                .send(json!({"type": "publish", "id": n, "channel": "turns.t1", "data": {"n": n}}))
                .await;
            publisher.ack(n).await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });

    let token = token("acme", "reader", &["turns.>"], &[]);
    let mut c = Client::connect(&server, &token).await;
    let ack = c.subscribe(1, "turns.t1").await;
    let epoch = ack.epoch.unwrap().as_str().to_owned();
    let mut last = ack.offset.unwrap();
    let mut seen: Vec<u64> = Vec::new();
    let mut resumes = 0;
    while last < MESSAGES {
        let (offset, data) = c.message().await;
        assert_eq!(offset, last + 1, "offsets continue exactly where the client was");
        seen.push(data["n"].as_u64().unwrap());
        last = offset;
        if offset % 37 == 0 {
            // Cut the connection without a close handshake, then come back.
            drop(c);
            c = Client::connect(&server, &token).await;
            let ack = c.resume(2, "turns.t1", last, &epoch).await;
            assert_eq!(ack.recovered, Some(true), "history covers the gap");
            assert_eq!(ack.epoch.unwrap().as_str(), epoch);
            resumes += 1;
        }
    }
    publishing.await.unwrap();
    let first = seen[0];
    assert_eq!(seen, (first..=MESSAGES).collect::<Vec<_>>());
    assert!(resumes >= 5, "the test disconnected {resumes} times");
    server.stop().await;
}

#[tokio::test]
async fn trimmed_history_says_recovered_false() {
    let server = TestServer::start_with(|c| c.history.max_messages = Some(5)).await;
    let mut c = Client::connect_all(&server, "acme").await;
    let epoch = c.subscribe(1, "feed").await.epoch.unwrap().as_str().to_owned();
    server.publish("acme", "feed", json!(1)).await;
    assert_eq!(c.message().await.0, 1);
    drop(c);
    for n in 2..=20 {
        server.publish("acme", "feed", json!(n)).await;
    }
    let mut c = Client::connect_all(&server, "acme").await;
    let ack = c.resume(2, "feed", 1, &epoch).await;
    assert_eq!((ack.recovered, ack.offset), (Some(false), Some(20)));
    // Nothing is replayed; the live stream continues after the ack's offset.
    server.publish("acme", "feed", json!(21)).await;
    assert_eq!(c.message().await, (21, json!(21)));
    server.stop().await;
}

#[tokio::test]
async fn recovery_edge_cases() {
    let server = TestServer::start().await;
    for n in 1..=3 {
        server.publish("acme", "log", json!(n)).await;
    }
    let mut c = Client::connect_all(&server, "acme").await;
    let epoch = c.subscribe(1, "log").await.epoch.unwrap().as_str().to_owned();
    c.send(json!({"type": "unsubscribe", "id": 2, "channel": "log"}))
        .await;
    c.ack(2).await;

    // From the beginning: everything retained is replayed.
    let ack = c.resume(3, "log", 0, &epoch).await;
    assert_eq!((ack.recovered, ack.offset), (Some(true), Some(3)));
    for n in 1..=3 {
        assert_eq!(c.message().await, (n, json!(n)));
    }
    c.send(json!({"type": "unsubscribe", "id": 4, "channel": "log"}))
        .await;
    c.ack(4).await;
    // Already up to date.
    let ack = c.resume(5, "log", 3, &epoch).await;
    assert_eq!(ack.recovered, Some(true));
    c.send(json!({"type": "unsubscribe", "id": 6, "channel": "log"}))
        .await;
    c.ack(6).await;
    // Another epoch: the offsets mean nothing here.
    let ack = c.resume(7, "log", 1, "not-this-epoch").await;
    assert_eq!(ack.recovered, Some(false));
    c.send(json!({"type": "unsubscribe", "id": 8, "channel": "log"}))
        .await;
    c.ack(8).await;
    // An offset from the future.
    let ack = c.resume(9, "log", 99, &epoch).await;
    assert_eq!(ack.recovered, Some(false));
    c.ping(10).await;
    server.stop().await;
}

#[tokio::test]
async fn a_restarted_server_has_a_new_epoch() {
    let server = TestServer::start().await;
    server.publish("acme", "x", json!(1)).await;
    let mut c = Client::connect_all(&server, "acme").await;
    let epoch = c.subscribe(1, "x").await.epoch.unwrap();
    drop(c);
    server.stop().await;
    let server = TestServer::start().await;
    let mut c = Client::connect_all(&server, "acme").await;
    let ack = c.resume(1, "x", 1, epoch.as_str()).await;
    assert_eq!(ack.recovered, Some(false));
    assert_ne!(ack.epoch.unwrap(), epoch);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_larger_than_the_queue_completes_for_a_client_that_reads() {
    // 5,000 messages of 1 KB retained: 5 MB to replay through a 1 MiB queue,
    // to a client whose receive buffer is 64 KiB.
    let server = TestServer::start_with(|c| {
        c.history.max_messages = Some(5000);
        c.limits.publish_rate = Some(0);
    })
    .await;
    let mut first = Client::connect_all(&server, "acme").await;
    let epoch = first.subscribe(1, "big").await.epoch.unwrap().as_str().to_owned();
    drop(first);
    let mut publisher = Client::connect_all(&server, "acme").await;
    assert_eq!(publisher.publish_many("big", 5000, 1000).await, 5000);

    let mut c = Client::connect_small(&server.ws_url(&token("acme", "r", &[">"], &[])), 64 * 1024).await;
    let ack = c.resume(2, "big", 0, &epoch).await;
    assert_eq!((ack.recovered, ack.offset), (Some(true), Some(5000)));
    for n in 1..=5000 {
        let (offset, data) = c.message().await;
        assert_eq!((offset, data["n"].as_u64()), (n, Some(n - 1)));
    }
    // Then live.
    assert_eq!(server.publish("acme", "big", json!("live")).await, 5001);
    assert_eq!(c.message().await, (5001, json!("live")));
    server.stop().await;
}
