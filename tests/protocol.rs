//! The client protocol over real WebSockets: the happy path, every kind of
//! bad input (each answered with its code while the connection keeps
//! working), refused upgrades, and org isolation.

use crate::common;

use common::*;
use serde_json::json;
use switchboard_proto::{ErrorCode, RequestId, ServerFrame};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

#[tokio::test]
async fn subscribe_publish_and_receive_in_order() {
    let server = TestServer::start().await;
    let mut alice = Client::connect_all(&server, "acme").await;
    let mut bob = Client::connect_all(&server, "acme").await;
    let ack = alice.subscribe(1, "chat.1").await;
    assert_eq!((ack.offset, ack.recovered), (Some(0), None));
    assert!(ack.epoch.is_some());
    bob.subscribe(1, "chat.1").await;

    bob.send(json!({"type": "publish", "id": 2, "channel": "chat.1", "data": {"text": "hi"}}))
        .await;
    // The publisher is also a subscriber: its message and its ack both arrive.
    let mut got_ack = false;
    let mut got_msg = false;
    for _ in 0..2 {
        match bob.next().await {
            ServerFrame::Ack(a) => {
                assert_eq!((a.id, a.offset), (RequestId::Num(2), Some(1)));
                got_ack = true;
            }
            ServerFrame::Message { offset, .. } => {
                assert_eq!(offset, 1);
                got_msg = true;
            }
            other => panic!("{}", other.to_json()),
        }
    }
    assert!(got_ack && got_msg);
    assert_eq!(server.publish("acme", "chat.1", json!("two")).await, 2);
    assert_eq!(alice.message().await, (1, json!({"text": "hi"})));
    assert_eq!(alice.message().await, (2, json!("two")));

    alice
        .send(json!({"type": "unsubscribe", "id": 3, "channel": "chat.1"}))
        .await;
    alice.ack(3).await;
    server.publish("acme", "chat.1", json!("three")).await;
    alice.ping(4).await; // nothing arrived between the unsubscribe ack and the pong
    server.stop().await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_the_connection_keeps_working() {
    let server = TestServer::start_with(|c| c.limits.max_frame_bytes = Some(1024)).await;
    let mut c = Client::connect(&server, &token("acme", "t", &["chat.*"], &["chat.1"])).await;
    c.subscribe(1, "chat.1").await;
    let cases: Vec<(Message, Option<RequestId>, ErrorCode)> = vec![
        (Message::text("{nope"), None, ErrorCode::ValidationError),
        (Message::text("[1,2]"), None, ErrorCode::ValidationError),
        (
            Message::text(r#"{"type":"dance","id":5}"#),
            Some(RequestId::Num(5)),
            ErrorCode::ValidationError,
        ),
        (
            Message::text(r#"{"id":6}"#),
            Some(RequestId::Num(6)),
            ErrorCode::ValidationError,
        ),
        (
            Message::text(r#"{"type":"subscribe","id":7,"channel":"bad name!"}"#),
            Some(RequestId::Num(7)),
            ErrorCode::ValidationError,
        ),
        (
            Message::text(r#"{"type":"subscribe","id":8,"channel":"chat.>"}"#),
            Some(RequestId::Num(8)),
            ErrorCode::ValidationError,
        ),
        (
            Message::text(r#"{"type":"subscribe","id":9,"channel":"secret.1"}"#),
            Some(RequestId::Num(9)),
            ErrorCode::Forbidden,
        ),
        (
            Message::text(r#"{"type":"publish","id":10,"channel":"chat.2","data":1}"#),
            Some(RequestId::Num(10)),
            ErrorCode::Forbidden,
        ),
        (
            Message::text(r#"{"type":"subscribe","id":11,"channel":"chat.1"}"#),
            Some(RequestId::Num(11)),
            ErrorCode::AlreadySubscribed,
        ),
        (
            Message::text(r#"{"type":"unsubscribe","id":12,"channel":"chat.9"}"#),
            Some(RequestId::Num(12)),
            ErrorCode::NotFound,
        ),
        (
            Message::text(r#"{"type":"publish","id":13,"channel":"chat.1"}"#),
            Some(RequestId::Num(13)),
            ErrorCode::ValidationError,
        ),
        (
            Message::text(r#"{"type":"send","id":14,"to":"role:main-ai","data":1}"#),
            Some(RequestId::Num(14)),
            ErrorCode::NotFound,
        ),
        (Message::binary(vec![1, 2, 3]), None, ErrorCode::ValidationError),
        (Message::text("x".repeat(5000)), None, ErrorCode::FrameTooLarge),
        (
            Message::text(format!(
                r#"{{"type":"publish","id":1,"channel":"chat.1","data":"{}"}}"#,
                "y".repeat(2000)
            )),
            None,
            ErrorCode::FrameTooLarge,
        ),
    ];
    for (i, (msg, id, code)) in cases.into_iter().enumerate() {
        let shown = format!("{msg:?}").chars().take(80).collect::<String>();
        c.send_raw(msg).await;
        assert_eq!(c.error().await, (id, code), "case {i}: {shown}");
        c.ping(1000 + i as u64).await;
    }
    // Still subscribed, still receiving.
    server.publish("acme", "chat.1", json!("after")).await;
    assert_eq!(c.message().await.1, json!("after"));
    server.stop().await;
}

#[tokio::test]
async fn refused_upgrades_are_http_errors() {
    let server =
        TestServer::start_with(|c| c.orgs[0].allowed_origins = vec!["https://app.acme.test".into()]).await;
    let base = format!("ws://{}/v1/ws", server.addr);
    let now = switchboard::auth::now_secs();
    let cases = [
        ("no token", base.clone(), vec![], 401),
        ("garbage", format!("{base}?token=garbage"), vec![], 401),
        ("empty", format!("{base}?token="), vec![], 401),
        (
            "expired",
            server.ws_url(&token_signed(
                &secret("acme"),
                "acme",
                "a",
                &[">"],
                &[],
                now - 600,
            )),
            vec![],
            401,
        ),
        (
            "signed by another org",
            server.ws_url(&token_signed(
                &secret("acme"),
                "globex",
                "a",
                &[">"],
                &[],
                now + 60,
            )),
            vec![],
            401,
        ),
        (
            "unknown org",
            server.ws_url(&token_signed(
                &secret("acme"),
                "initech",
                "a",
                &[">"],
                &[],
                now + 60,
            )),
            vec![],
            401,
        ),
        (
            "foreign origin",
            server.ws_url(&token("acme", "a", &[">"], &[])),
            vec![("origin", "https://evil.test")],
            403,
        ),
    ];
    for (what, url, headers, status) in cases {
        assert_eq!(
            refused_status(upgrade_request(&url, &headers)).await,
            status,
            "{what}"
        );
    }
    // The allowed origin, and a bearer header instead of the query.
    let ok = upgrade_request(
        &server.ws_url(&token("acme", "a", &[">"], &[])),
        &[("origin", "https://app.acme.test")],
    );
    assert!(connect_ws(ok).await.is_ok());
    let bearer = format!("Bearer {}", token("globex", "a", &[">"], &[]));
    let ok = upgrade_request(&base, &[("authorization", bearer.as_str())]);
    assert!(connect_ws(ok).await.is_ok());

    // Not a WebSocket request at all: a JSON error.
    let res = reqwest::get(server.url("/v1/ws")).await.unwrap();
    assert_eq!(res.status(), 426);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "VALIDATION_ERROR");
    // A refused token says no more than that.
    let res = reqwest::Client::new()
        .get(format!("{}/v1/ws?token=garbage", server.url("")))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"]["message"], "missing or invalid credentials");
    server.stop().await;
}

#[tokio::test]
async fn orgs_never_see_each_other() {
    let server = TestServer::start().await;
    let mut acme = Client::connect_all(&server, "acme").await;
    let mut globex = Client::connect_all(&server, "globex").await;
    acme.subscribe(1, "chat").await;
    globex.subscribe(1, "chat").await;
    server.publish("globex", "chat", json!("for globex")).await;
    server.publish("acme", "chat", json!("for acme")).await;
    assert_eq!(
        acme.message().await,
        (1, json!("for acme")),
        "globex's message never reached acme"
    );
    assert_eq!(globex.message().await, (1, json!("for globex")));
    // An acme key cannot publish into globex.
    let res = reqwest::Client::new()
        .post(server.url("/v1/orgs/globex/channels/chat/publish"))
        .bearer_auth(server.api_key("acme"))
        .json(&json!({"data": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    globex.ping(2).await;
    server.stop().await;
}

#[tokio::test]
async fn client_close_is_answered() {
    let server = TestServer::start().await;
    let mut c = Client::connect_all(&server, "acme").await;
    c.subscribe(1, "x").await;
    c.send_raw(Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    })))
    .await;
    let frame = c.closed().await.expect("a close frame back");
    assert_eq!(frame.code, CloseCode::Normal);
    eventually("connection released", async || server.connections().await == 0).await;
    server.stop().await;
}

/// Paused time: the minute of silence below takes milliseconds.
#[tokio::test(start_paused = true)]
async fn quiet_peers_are_pinged_and_silent_ones_dropped() {
    let server = TestServer::start().await; // pings every 25 s, gives up after 60 s
    let mut live = Client::connect_all(&server, "acme").await;
    let mut silent = Client::connect_all(&server, "acme").await;
    let started = tokio::time::Instant::now();
    // `live` keeps reading (tungstenite answers pings as it reads); `silent`
    // only looks at its bytes and never answers.
    let live_side = async {
        let mut pings = 0;
        let until = started + std::time::Duration::from_secs(70);
        while let Ok(msg) = tokio::time::timeout_at(until, futures_util::StreamExt::next(&mut live.ws)).await
        {
            match msg {
                Some(Ok(Message::Ping(_))) => pings += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        pings
    };
    let silent_side = async {
        let frames = silent.raw_frames_until_eof().await;
        (frames, started.elapsed())
    };
    let (pings, (frames, silent_for)) = tokio::join!(live_side, silent_side);
    assert!(
        (2..=3).contains(&pings),
        "a quiet client is pinged about every 25 s ({pings} pings in 70 s)"
    );
    live.ping(1).await; // still connected
    let (close, pinged) = frames.split_last().expect("frames");
    assert!(
        pinged.iter().all(|f| f.opcode == 0x9),
        "only pings before the close"
    );
    assert_eq!(
        (close.close_code(), &close.payload[2..]),
        (Some(1008), &b"idle timeout"[..])
    );
    assert!(
        (60..63).contains(&silent_for.as_secs()),
        "closed after 60 s of silence, not before ({silent_for:?})"
    );
    server.stop().await;
}

/// Paused time: a ten-minute token expires in milliseconds.
#[tokio::test(start_paused = true)]
async fn a_socket_closes_when_its_token_expires() {
    // Sockets silent for the whole test stay open: only the token ends one.
    let server = TestServer::start_with(|c| {
        c.limits.ping_interval_secs = Some(1800);
        c.limits.idle_timeout_secs = Some(3600);
    })
    .await;
    let lifetime = 600;
    let exp = switchboard::auth::now_secs() + lifetime;
    let mut expiring = Client::connect(
        &server,
        &token_signed(&secret("acme"), "acme", "a", &[">"], &[], exp),
    )
    .await;
    let mut lasting = Client::connect_all(&server, "acme").await; // an hour
    expiring.subscribe(1, "x").await;
    lasting.subscribe(1, "x").await;
    let started = tokio::time::Instant::now();
    let deadline = std::time::Duration::from_secs(lifetime + switchboard::auth::LEEWAY_SECS);
    tokio::time::sleep(deadline - std::time::Duration::from_secs(2)).await;
    expiring.ping(2).await; // not before its time, leeway included
    let close = expiring.closed().await.expect("a close frame");
    assert_eq!(
        (u16::from(close.code), close.reason.as_str()),
        (4001, "token expired; reconnect with a fresh one and resume")
    );
    assert!(started.elapsed() >= deadline - std::time::Duration::from_secs(1));
    let offset = server.publish("acme", "x", serde_json::json!(1)).await;
    assert_eq!(lasting.message().await, (offset, serde_json::json!(1)));
    server.stop().await;
}

#[tokio::test]
async fn the_connection_limit_is_enforced_with_a_clear_error() {
    let server = TestServer::start_with(|c| c.limits.max_connections = Some(2)).await;
    let first = Client::connect_all(&server, "acme").await;
    let _second = Client::connect_all(&server, "acme").await;
    let url = server.ws_url(&token("acme", "third", &[">"], &[]));
    assert_eq!(refused_status(upgrade_request(&url, &[])).await, 503);
    drop(first);
    eventually("a place frees up", async || server.connections().await == 1).await;
    let mut third = Client::connect(&server, &token("acme", "third", &[">"], &[])).await;
    third.ping(1).await;
    server.stop().await;
}
