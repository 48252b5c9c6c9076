//! Fan-out at scale: 1,000 real WebSocket subscribers on one channel, each
//! receiving every message exactly once, in order.

use crate::common;

use common::*;
use futures_util::StreamExt;
use serde_json::json;

const SUBSCRIBERS: usize = 1000;
const MESSAGES: u64 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_subscribers_get_every_message_once_in_order() {
    raise_fd_limit();
    let server = TestServer::start().await;
    let token = token("acme", "watcher", &["room"], &[]);
    let clients: Vec<Client> = futures_util::stream::iter(0..SUBSCRIBERS)
        .map(|_| {
            let server = &server;
            let token = &token;
            async move {
                let mut c = Client::connect(server, token).await;
                c.subscribe(1, "room").await;
                c
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    assert_eq!(server.connections().await, SUBSCRIBERS);

    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let mut got = Vec::with_capacity(MESSAGES as usize);
                for _ in 0..MESSAGES {
                    got.push(c.message().await);
                }
                got
            })
        })
        .collect();
    for n in 1..=MESSAGES {
        assert_eq!(server.publish("acme", "room", json!({ "n": n })).await, n);
    }
    let want: Vec<_> = (1..=MESSAGES).map(|n| (n, json!({ "n": n }))).collect();
    for (i, reader) in readers.into_iter().enumerate() {
        assert_eq!(reader.await.unwrap(), want, "subscriber {i}");
    }
    server.stop().await;
}
