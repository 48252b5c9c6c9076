//! Per-connection limits and broken WebSocket input over real sockets: the
//! subscription cap, the subscribe rate, a frame trickled too slowly,
//! text that is not UTF-8, malformed close frames, refused upgrades.
//! Frames a WebSocket library would never send are written raw under it.

use crate::common;

use std::time::Duration;

use common::*;
use serde_json::json;
use switchboard_proto::{ErrorCode, RequestId, ServerFrame};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::MaybeTlsStream;

const MASK: [u8; 4] = [7, 1, 9, 3];

/// A masked client frame, as a browser would build it.
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    out.extend_from_slice(&MASK);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    out
}

impl Client {
    /// Writes bytes straight to the socket under the WebSocket.
    async fn write_raw(&mut self, bytes: &[u8]) {
        let MaybeTlsStream::Plain(stream) = self.ws.get_mut() else {
            panic!("plain TCP expected");
        };
        stream.write_all(bytes).await.unwrap();
    }
}

#[tokio::test]
async fn the_subscription_cap_bites_and_frees_with_unsubscribe() {
    let server = TestServer::start_with(|c| c.limits.subscribe_burst = Some(1000)).await;
    let mut c = Client::connect_all(&server, "acme").await;
    for n in 0..256 {
        c.subscribe(n, &format!("c.{n}")).await;
    }
    c.send(json!({"type": "subscribe", "id": 999, "channel": "c.256"}))
        .await;
    assert_eq!(
        c.error().await,
        (Some(RequestId::Num(999)), ErrorCode::LimitExceeded)
    );
    c.send(json!({"type": "unsubscribe", "id": 1000, "channel": "c.0"}))
        .await;
    c.ack(1000).await;
    c.subscribe(1001, "c.256").await;
    server.stop().await;
}

/// Paused time: the limiter refills on the test's clock, and a client past
/// its budget is read no further until it has.
#[tokio::test(start_paused = true)]
async fn subscribe_and_unsubscribe_are_rate_limited() {
    let server = TestServer::start_with(|c| {
        c.limits.subscribe_rate = Some(2);
        c.limits.subscribe_burst = Some(4);
    })
    .await;
    let mut c = Client::connect_all(&server, "acme").await;
    let started = tokio::time::Instant::now();
    c.pipeline((0..6).map(|n| json!({"type": "subscribe", "id": n, "channel": format!("c.{n}")})))
        .await;
    for n in 0..4 {
        c.ack(n).await;
    }
    assert_eq!(c.error().await, (Some(RequestId::Num(4)), ErrorCode::RateLimited));
    // The sixth was read half a second later, when the budget had refilled.
    c.ack(5).await;
    assert!(started.elapsed() >= Duration::from_millis(500));
    c.send(json!({"type": "unsubscribe", "id": 6, "channel": "c.0"}))
        .await;
    assert_eq!(c.error().await, (Some(RequestId::Num(6)), ErrorCode::RateLimited));
    c.subscribe(7, "c.7").await;
    c.ping(8).await;
    server.stop().await;
}

/// Answers a connection gets within `window` (of the paused clock).
async fn answers_within(c: &mut Client, window: Duration) -> (usize, usize) {
    let until = tokio::time::Instant::now() + window;
    let (mut acks, mut errors) = (0, 0);
    while let Ok(Some(Ok(msg))) =
        tokio::time::timeout_at(until, futures_util::StreamExt::next(&mut c.ws)).await
    {
        match ServerFrame::decode(msg.to_text().unwrap().as_bytes()).unwrap() {
            ServerFrame::Ack(_) => acks += 1,
            ServerFrame::Error { .. } => errors += 1,
            other => panic!("{}", other.to_json()),
        }
    }
    (acks, errors)
}

/// Paused time: a flood is answered at the pace of the budget, not of the flood.
#[tokio::test(start_paused = true)]
async fn a_client_flooding_past_its_budget_is_slowed_not_served() {
    let server = TestServer::start_with(|c| {
        c.limits.subscribe_rate = Some(10);
        c.limits.subscribe_burst = Some(10);
    })
    .await;
    let mut churner = Client::connect_all(&server, "acme").await;
    churner
        .pipeline((0..500).map(|n| json!({"type": "subscribe", "id": n, "channel": format!("c.{n}")})))
        .await;
    // The burst, then one accepted and one refused every tenth of a second.
    let (acks, errors) = answers_within(&mut churner, Duration::from_secs(2)).await;
    assert!(
        (28..=32).contains(&acks) && (18..=22).contains(&errors),
        "{acks} acks, {errors} errors"
    );
    // Refusals of any kind: a hundred at once, then twenty a second.
    let mut garbage = Client::connect_all(&server, "acme").await;
    garbage.pipeline((0..500).map(|_| json!({}))).await;
    let (_, errors) = answers_within(&mut garbage, Duration::from_secs(2)).await;
    assert!((135..=145).contains(&errors), "{errors} errors in two seconds");
    let mut bystander = Client::connect_all(&server, "acme").await;
    bystander.ping(1).await;
    server.stop().await;
}

/// Paused time: ten seconds of trickling take none.
#[tokio::test(start_paused = true)]
async fn a_frame_trickled_slower_than_the_frame_timeout_closes_the_connection() {
    let server = TestServer::start().await; // frames must arrive within 10 s
    let mut trickler = Client::connect_all(&server, "acme").await;
    let mut patient = Client::connect_all(&server, "acme").await;
    let started = tokio::time::Instant::now();
    // A frame sent in two halves five seconds apart is fine.
    let ping = client_frame(0x1, br#"{"type":"ping","id":1}"#);
    patient.write_raw(&ping[..10]).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    patient.write_raw(&ping[10..]).await;
    assert!(matches!(patient.next().await, ServerFrame::Pong { .. }));
    // A header announcing 1,000 bytes, then ten bytes a second for five seconds.
    let frame = client_frame(0x1, &[b' '; 1000]);
    trickler.write_raw(&frame[..8]).await;
    for second in 0..5 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        trickler
            .write_raw(&frame[8 + 10 * second..18 + 10 * second])
            .await;
    }
    let frames = trickler.raw_frames_until_eof().await;
    let close = frames.last().unwrap();
    assert_eq!(
        (close.close_code(), &close.payload[2..]),
        (Some(1008), &b"frame not completed in time"[..])
    );
    assert!(
        started.elapsed() >= Duration::from_secs(15),
        "not before its time"
    );
    patient.ping(2).await;
    server.stop().await;
}

#[tokio::test]
async fn text_that_is_not_utf8_closes_with_1007() {
    let server = TestServer::start().await;
    let mut c = Client::connect_all(&server, "acme").await;
    c.write_raw(&client_frame(0x1, &[b'"', 0xff, 0xfe, b'"'])).await;
    let frames = c.raw_frames_until_eof().await;
    assert_eq!(frames.last().unwrap().close_code(), Some(1007));
    server.stop().await;
}

#[tokio::test]
async fn malformed_close_frames_close_with_1002_and_a_good_one_with_1000() {
    let server = TestServer::start().await;
    for (payload, want) in [
        (&[0x03][..], 1002),             // one byte: no room for a code
        (&[0x03, 0xed][..], 1002),       // 1005 may not be sent
        (&[0x0b, 0xb7][..], 1002),       // 2999 is reserved
        (&[0x03, 0xe8, 0xff][..], 1007), // a reason that is not UTF-8
        (&[0x03, 0xe8, b'o', b'k'][..], 1000),
    ] {
        let mut c = Client::connect_all(&server, "acme").await;
        c.write_raw(&client_frame(0x8, payload)).await;
        let frames = c.raw_frames_until_eof().await;
        assert_eq!(frames.last().unwrap().close_code(), Some(want), "{payload:?}");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_refused_upgrade_says_which_version_to_speak() {
    let server = TestServer::start().await;
    let res = reqwest::get(server.url("/v1/ws")).await.unwrap();
    assert_eq!(res.status(), 426);
    assert_eq!(res.headers()["sec-websocket-version"], "13");
    assert_eq!(res.headers()["upgrade"], "websocket");
    let res = reqwest::Client::new()
        .get(server.url("/v1/ws"))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "8")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 426);
    assert_eq!(res.headers()["sec-websocket-version"], "13");
    server.stop().await;
}
