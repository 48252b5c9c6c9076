//! The operator side, bounded: sessions per org, live turns per session and
//! per channel, bytes per turn, the rollup window a turn may ask for. (That
//! frames for an operator are never lost silently is in `operator_rebuffer.rs`.)

use crate::common;

use std::time::Duration;

use common::*;
use serde_json::json;
use switchboard_proto::{ErrorCode, RequestId, ServerFrame};

async fn start_turn(op: &mut Client, id: u64, turn: &str, channel: &str) -> ServerFrame {
    op.send(json!({"type": "turn_start", "id": id, "turn": turn, "channel": channel}))
        .await;
    op.next().await
}

fn refused(frame: &ServerFrame) -> Option<(Option<RequestId>, ErrorCode)> {
    match frame {
        ServerFrame::Error { id, code, .. } => Some((id.clone(), *code)),
        _ => None,
    }
}

#[tokio::test]
async fn an_org_holds_a_bounded_number_of_sessions() {
    let server = TestServer::start_with(|c| c.operators.max_sessions_per_org = Some(2)).await;
    let a = mint_ok(&server, "acme", &[]).await;
    mint_ok(&server, "acme", &[]).await;
    let (status, body) = mint(&server, "acme", &[]).await;
    assert_eq!((status, code(&body)), (429, "LIMIT_EXCEEDED"), "{body}");
    mint_ok(&server, "globex", &[]).await; // another org's budget
    assert_eq!(
        session_call(&server, reqwest::Method::DELETE, &a.sid, Some(&a.token))
            .await
            .0,
        204
    );
    mint_ok(&server, "acme", &[]).await;
    server.stop().await;
}

#[tokio::test]
async fn turns_are_bounded_per_session_and_per_channel() {
    let server = TestServer::start_with(|c| {
        c.operators.max_turns_per_session = Some(2);
        c.operators.max_turns_per_channel = Some(1);
    })
    .await;
    let s = mint_ok(&server, "acme", &[]).await;
    let mut op = Client::operator(&server, &s).await;
    assert!(matches!(
        start_turn(&mut op, 1, "t1", "turns.a").await,
        ServerFrame::Ack(_)
    ));
    // The channel already streams one turn.
    assert_eq!(
        refused(&start_turn(&mut op, 2, "t2", "turns.a").await),
        Some((Some(RequestId::Num(2)), ErrorCode::LimitExceeded))
    );
    assert!(matches!(
        start_turn(&mut op, 3, "t2", "turns.b").await,
        ServerFrame::Ack(_)
    ));
    // The session already streams two.
    assert_eq!(
        refused(&start_turn(&mut op, 4, "t3", "turns.c").await),
        Some((Some(RequestId::Num(4)), ErrorCode::LimitExceeded))
    );
    op.send(json!({"type": "turn_end", "id": 5, "turn": "t1"})).await;
    op.ack(5).await;
    assert!(matches!(
        start_turn(&mut op, 6, "t3", "turns.a").await,
        ServerFrame::Ack(_)
    ));
    op.ping(7).await;
    server.stop().await;
}

#[tokio::test]
async fn a_turn_is_bounded_by_what_its_text_costs_escaped() {
    let server = TestServer::start_with(|c| c.operators.max_turn_bytes = Some(1000)).await;
    let s = mint_ok(&server, "acme", &[]).await;
    let mut op = Client::operator(&server, &s).await;
    let mut watcher = Client::connect_all(&server, "acme").await;
    watcher.subscribe(1, "turns.q").await;
    start_turn(&mut op, 1, "t", "turns.q").await;
    // 400 quotes are 400 bytes of text and 800 escaped: fine once, not twice.
    let quotes = "\"".repeat(400);
    op.send(json!({"type": "token", "turn": "t", "text": quotes}))
        .await;
    op.send(json!({"type": "token", "turn": "t", "text": quotes}))
        .await;
    assert_eq!(refused(&op.next().await), Some((None, ErrorCode::LimitExceeded)));
    op.send(json!({"type": "turn_end", "id": 2, "turn": "t"})).await;
    op.ack(2).await;
    let text = watcher.turn_text("t").await;
    assert_eq!(text, quotes, "the refused token is not in the turn");
    server.stop().await;
}

/// Paused time: a window a client asks for is at most ten seconds.
#[tokio::test(start_paused = true)]
async fn a_turn_cannot_ask_for_a_rollup_window_past_ten_seconds() {
    let server = TestServer::start().await;
    let s = mint_ok(&server, "acme", &[]).await;
    let mut op = Client::operator(&server, &s).await;
    let mut watcher = Client::connect_all(&server, "acme").await;
    watcher.subscribe(1, "turns.r").await;
    op.send(json!({"type": "turn_start", "id": 1, "turn": "t", "channel": "turns.r", "rollup_ms": u32::MAX}))
        .await;
    op.ack(1).await;
    for word in ["a", "b"] {
        op.send(json!({"type": "token", "turn": "t", "text": word})).await;
    }
    op.ping(2).await;
    let started = tokio::time::Instant::now();
    assert!(matches!(
        watcher.channel_event().await,
        ServerFrame::TurnStart { .. }
    ));
    assert!(matches!(watcher.channel_event().await, ServerFrame::Token { text, .. } if text == "a"));
    // "b" waits for the window, which is clamped to 10 s (not 49 days).
    tokio::time::sleep(Duration::from_secs(9)).await;
    match watcher.channel_event().await {
        ServerFrame::Token { text, .. } => assert_eq!(text, "b"),
        other => panic!("{}", other.to_json()),
    }
    let waited = started.elapsed();
    assert!(
        (Duration::from_secs(9)..=Duration::from_secs(11)).contains(&waited),
        "{waited:?}"
    );
    server.stop().await;
}
