//! Agent turns streamed by an operator: tokens in order to every watcher,
//! one snapshot (not a replay) for whoever joins or resumes mid-turn, one
//! compacted message in history once it ends, rollup, and `operator_gone`
//! when the operator does not come back.

use crate::common;

use std::time::Duration;

use common::*;
use serde_json::json;
use switchboard_proto::{ErrorCode, RequestId, ServerFrame, TurnFailure, TurnStatus};

async fn start_turn(op: &mut Client, id: u64, turn: &str, channel: &str) -> u64 {
    op.send(json!({"type": "turn_start", "id": id, "turn": turn, "channel": channel}))
        .await;
    op.ack(id).await.offset.unwrap()
}

async fn say(op: &mut Client, turn: &str, text: &str) {
    op.send(json!({"type": "token", "turn": turn, "text": text}))
        .await;
}

#[tokio::test]
async fn a_turn_streams_in_order_and_is_compacted_in_history() {
    let server = TestServer::start().await;
    let s = mint_ok(&server, "acme", &["main-ai"]).await;
    let mut op = Client::operator(&server, &s).await;
    let mut watcher = Client::connect_all(&server, "acme").await;
    watcher.subscribe(1, "turns.c1").await;

    let start = start_turn(&mut op, 1, "t1", "turns.c1").await;
    let words = ["Hel", "lo", ", ", "wor", "ld \"quoted\"\n"];
    for w in words {
        say(&mut op, "t1", w).await;
    }
    op.send(json!({"type": "turn_end", "id": 2, "turn": "t1"})).await;
    let end = op.ack(2).await.offset.unwrap();
    assert_eq!(end, start + words.len() as u64 + 1);

    assert!(
        matches!(watcher.channel_event().await, ServerFrame::TurnStart { offset, .. } if offset == start)
    );
    let mut text = String::new();
    for (i, w) in words.iter().enumerate() {
        match watcher.channel_event().await {
            ServerFrame::Token { offset, text: t, .. } => {
                assert_eq!((offset, t.as_str()), (start + 1 + i as u64, *w));
                text.push_str(&t);
            }
            other => panic!("{}", other.to_json()),
        }
    }
    assert!(matches!(watcher.channel_event().await, ServerFrame::TurnEnd { offset, .. } if offset == end));
    assert_eq!(text, words.concat());

    // History keeps the turn as one message with the whole text.
    let res = reqwest::Client::new()
        .get(server.url("/v1/orgs/acme/channels/turns.c1/history"))
        .bearer_auth(server.api_key("acme"))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["messages"].as_array().unwrap().len(), 1, "{body}");
    let m = &body["messages"][0];
    let metrics = get_text(&server.url("/metrics")).await;
    for name in [
        "switchboard_operator_sessions",
        "switchboard_operator_sessions_connected",
        "switchboard_turns_started_total",
        "switchboard_turns_finished_total",
        "switchboard_tokens_total",
    ] {
        assert!(metrics.contains(name), "{name} in /metrics");
    }
    assert_eq!(
        (&m["type"], &m["text"], &m["status"], &m["offset"]),
        (
            &json!("turn"),
            &json!(words.concat()),
            &json!("done"),
            &json!(end)
        )
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_tokens_to_two_hundred_watchers_with_one_resuming_mid_turn() {
    raise_fd_limit();
    let server = TestServer::start().await;
    let s = mint_ok(&server, "acme", &["main-ai"]).await;
    let mut op = Client::operator(&server, &s).await;
    let token_str = token("acme", "watcher", &["turns.>"], &[]);
    let mut watchers = Vec::new();
    for _ in 0..200 {
        let mut c = Client::connect(&server, &token_str).await;
        let ack = c.subscribe(1, "turns.big").await;
        watchers.push((c, ack.epoch.unwrap().as_str().to_owned()));
    }
    let (mut resumer, epoch) = watchers.pop().unwrap();
    let readers: Vec<_> = watchers
        .into_iter()
        .map(|(mut c, _)| {
            tokio::spawn(async move {
                let mut text = String::new();
                loop {
                    let frame = c.channel_event().await;
                    apply_turn(&mut text, &frame, "big");
                    if matches!(frame, ServerFrame::TurnEnd { .. }) {
                        return text;
                    }
                }
            })
        })
        .collect();

    let start = start_turn(&mut op, 1, "big", "turns.big").await;
    let tokens: Vec<String> = (0..2000).map(|i| format!("tok{i} ")).collect();
    let expected = tokens.concat();
    // The resumer reads the first 300 tokens, then drops its connection.
    let resumer_task = tokio::spawn(async move {
        let mut text = String::new();
        let mut last = 0;
        while text.matches("tok").count() < 300 {
            let frame = resumer.channel_event().await;
            last = frame.offset().unwrap();
            apply_turn(&mut text, &frame, "big");
        }
        (text, last)
    });
    for t in &tokens[..1000] {
        say(&mut op, "big", t).await;
    }
    op.ping(3).await; // the first 1000 tokens are in the channel
    let (mut text, last) = resumer_task.await.unwrap();
    // Back, resuming from the last offset it saw, while the turn goes on.
    let mut back = Client::connect(&server, &token_str).await;
    let ack = back.resume(2, "turns.big", last, &epoch).await;
    assert_eq!(ack.recovered, Some(true));
    let first = back.channel_event().await;
    let ServerFrame::TurnSnapshot {
        start_offset,
        text_so_far,
        ..
    } = &first
    else {
        panic!("expected one snapshot, got {}", first.to_json());
    };
    assert_eq!(*start_offset, start);
    assert!(text_so_far.starts_with(&text) && text_so_far.len() > text.len());
    apply_turn(&mut text, &first, "big");
    let op_task = tokio::spawn(async move {
        for t in &tokens[1000..] {
            say(&mut op, "big", t).await;
        }
        op.send(json!({"type": "turn_end", "id": 2, "turn": "big"})).await;
        op.ack(2).await;
        op
    });
    let mut frames_after_snapshot = 0;
    loop {
        let frame = back.channel_event().await;
        assert!(
            !matches!(
                frame,
                ServerFrame::TurnSnapshot { .. } | ServerFrame::TurnStart { .. }
            ),
            "one snapshot only"
        );
        frames_after_snapshot += 1;
        apply_turn(&mut text, &frame, "big");
        if matches!(frame, ServerFrame::TurnEnd { .. }) {
            break;
        }
    }
    let _op = op_task.await.unwrap();
    assert_eq!(text, expected, "the resumed watcher has the operator's text");
    assert_eq!(
        frames_after_snapshot, 1001,
        "the second half and turn_end, after one snapshot of the first"
    );
    for r in readers {
        assert_eq!(r.await.unwrap(), expected);
    }
    server.stop().await;
}

#[tokio::test]
async fn late_joiners_get_a_snapshot_then_live_tokens() {
    let server = TestServer::start().await;
    let s = mint_ok(&server, "acme", &[]).await;
    let mut op = Client::operator(&server, &s).await;
    start_turn(&mut op, 1, "t", "turns.x").await;
    for w in ["one ", "two "] {
        say(&mut op, "t", w).await;
    }
    op.ping(2).await; // the tokens were handled
    let mut late = Client::connect_all(&server, "acme").await;
    let ack = late.subscribe(1, "turns.x").await;
    assert_eq!(ack.offset, Some(3));
    match late.channel_event().await {
        ServerFrame::TurnSnapshot {
            text_so_far, offset, ..
        } => assert_eq!((text_so_far.as_str(), offset), ("one two ", 3)),
        other => panic!("{}", other.to_json()),
    }
    say(&mut op, "t", "three").await;
    op.ping(3).await;
    assert!(
        matches!(late.channel_event().await, ServerFrame::Token { text, offset: 4, .. } if text == "three")
    );
    server.stop().await;
}

/// Paused time: 200 tokens at exactly 5 ms apart, windows of exactly 40 ms.
#[tokio::test(start_paused = true)]
async fn rollup_coalesces_tokens_without_changing_the_text() {
    let server = TestServer::start_with(|c| {
        c.orgs[0].rollup = vec![switchboard::directory::RollupConfig {
            channels: "turns.>".into(),
            window_ms: 40,
        }];
    })
    .await;
    let s = mint_ok(&server, "acme", &[]).await;
    let mut op = Client::operator(&server, &s).await;
    let mut watcher = Client::connect_all(&server, "acme").await;
    watcher.subscribe(1, "turns.r").await;
    start_turn(&mut op, 1, "t", "turns.r").await;
    let tokens: Vec<String> = (0..200).map(|i| format!("w{i} ")).collect();
    // 200 tokens/s for one second.
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    for t in &tokens {
        tick.tick().await;
        say(&mut op, "t", t).await;
    }
    op.send(json!({"type": "turn_end", "id": 2, "turn": "t"})).await;
    op.ack(2).await;
    let mut text = String::new();
    let mut token_frames = 0;
    let mut first = None;
    loop {
        let frame = watcher.channel_event().await;
        if let ServerFrame::Token { text: t, .. } = &frame {
            token_frames += 1;
            first.get_or_insert(t.clone());
        }
        apply_turn(&mut text, &frame, "t");
        if matches!(frame, ServerFrame::TurnEnd { .. }) {
            break;
        }
    }
    assert_eq!(text, tokens.concat(), "same text");
    assert_eq!(first.as_deref(), Some("w0 "), "the first token goes out at once");
    println!("rollup: 200 tokens in {token_frames} frames");
    // The first at once, then one per 40 ms window over the second they take.
    assert!(
        (25..=27).contains(&token_frames),
        "{token_frames} frames for 200 tokens"
    );
    server.stop().await;
}

/// Paused time: the grace period passes in milliseconds.
#[tokio::test(start_paused = true)]
async fn a_turn_whose_operator_does_not_come_back_ends_with_operator_gone() {
    let server = TestServer::start_with(|c| c.operators.turn_grace_secs = Some(5)).await;
    let s = mint_ok(&server, "acme", &["main-ai"]).await;
    let mut watcher = Client::connect_all(&server, "acme").await;
    watcher.subscribe(1, "turns.g").await;
    let mut op = Client::operator(&server, &s).await;
    start_turn(&mut op, 1, "t", "turns.g").await;
    say(&mut op, "t", "half a rep").await;
    op.ping(2).await;
    drop(op);
    let gone = tokio::time::Instant::now();
    assert!(matches!(
        watcher.channel_event().await,
        ServerFrame::TurnStart { .. }
    ));
    assert!(matches!(watcher.channel_event().await, ServerFrame::Token { .. }));
    match watcher.channel_event().await {
        ServerFrame::TurnError { reason, .. } => assert_eq!(reason, TurnFailure::OperatorGone),
        other => panic!("{}", other.to_json()),
    }
    assert!(
        gone.elapsed() >= Duration::from_secs(5),
        "not before the grace period ended"
    );
    let mut replay = Client::connect_all(&server, "acme").await;
    let epoch = replay.subscribe(1, "turns.g").await.epoch.unwrap();
    replay
        .send(json!({"type": "unsubscribe", "id": 2, "channel": "turns.g"}))
        .await;
    replay.ack(2).await;
    replay.resume(3, "turns.g", 0, epoch.as_str()).await;
    match replay.channel_event().await {
        ServerFrame::Turn {
            text, status, reason, ..
        } => {
            assert_eq!(
                (text.as_str(), status, reason),
                ("half a rep", TurnStatus::Error, Some(TurnFailure::OperatorGone))
            )
        }
        other => panic!("{}", other.to_json()),
    }
    server.stop().await;
}

/// Paused time: waiting past the grace period costs nothing.
#[tokio::test(start_paused = true)]
async fn an_operator_back_within_the_grace_period_finishes_its_turn() {
    let server = TestServer::start_with(|c| c.operators.turn_grace_secs = Some(2)).await;
    let s = mint_ok(&server, "acme", &[]).await;
    let mut watcher = Client::connect_all(&server, "acme").await;
    watcher.subscribe(1, "turns.b").await;
    let mut op = Client::operator(&server, &s).await;
    start_turn(&mut op, 1, "t", "turns.b").await;
    say(&mut op, "t", "a").await;
    op.ping(2).await;
    drop(op);
    let mut op = Client::operator(&server, &s).await;
    say(&mut op, "t", "b").await;
    op.send(json!({"type": "turn_end", "id": 3, "turn": "t"})).await;
    op.ack(3).await;
    tokio::time::sleep(Duration::from_secs(10)).await; // past the grace period: nothing more may come
    let mut text = String::new();
    for _ in 0..4 {
        let frame = watcher.channel_event().await;
        assert!(
            !matches!(frame, ServerFrame::TurnError { .. }),
            "{}",
            frame.to_json()
        );
        apply_turn(&mut text, &frame, "t");
    }
    assert_eq!(text, "ab");
    watcher.ping(9).await;
    server.stop().await;
}

#[tokio::test]
async fn deleting_the_session_ends_its_turns_and_generation_outlives_the_browser() {
    let server = TestServer::start().await;
    let s = mint_ok(&server, "acme", &[]).await;
    let mut op = Client::operator(&server, &s).await;
    // Nobody watches while the turn streams.
    start_turn(&mut op, 1, "t", "turns.d").await;
    say(&mut op, "t", "nobody saw this live").await;
    op.ping(2).await;
    assert_eq!(
        session_call(&server, reqwest::Method::DELETE, &s.sid, Some(&s.token))
            .await
            .0,
        204
    );
    let close = op.closed().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 4010);
    let mut later = Client::connect_all(&server, "acme").await;
    let epoch = later.subscribe(1, "turns.d").await.epoch.unwrap();
    later
        .send(json!({"type": "unsubscribe", "id": 2, "channel": "turns.d"}))
        .await;
    later.ack(2).await;
    later.resume(3, "turns.d", 0, epoch.as_str()).await;
    match later.channel_event().await {
        ServerFrame::Turn { text, reason, .. } => {
            assert_eq!(
                (text.as_str(), reason),
                ("nobody saw this live", Some(TurnFailure::OperatorGone))
            )
        }
        other => panic!("{}", other.to_json()),
    }
    server.stop().await;
}

#[tokio::test]
async fn operator_mistakes_get_errors_and_the_socket_keeps_working() {
    let server = TestServer::start().await;
    let s = mint_ok(&server, "acme", &[]).await;
    let mut op = Client::operator(&server, &s).await;
    say(&mut op, "nope", "x").await;
    assert_eq!(op.error().await, (None, ErrorCode::NotFound));
    start_turn(&mut op, 1, "t", "turns.e").await;
    op.send(json!({"type": "turn_start", "id": 2, "turn": "t", "channel": "turns.e"}))
        .await;
    assert_eq!(op.error().await, (Some(RequestId::Num(2)), ErrorCode::Conflict));
    op.send(json!({"type": "turn_end", "id": 3, "turn": "other"}))
        .await;
    assert_eq!(op.error().await, (Some(RequestId::Num(3)), ErrorCode::NotFound));
    op.send_raw(tokio_tungstenite::tungstenite::Message::text("{oops"))
        .await;
    assert_eq!(op.error().await, (None, ErrorCode::ValidationError));
    op.send(json!({"type": "turn_start", "id": 4, "turn": "bad id!", "channel": "turns.e"}))
        .await;
    assert_eq!(
        op.error().await,
        (Some(RequestId::Num(4)), ErrorCode::ValidationError)
    );
    op.send(json!({"type": "publish", "id": 5, "channel": "news", "data": {"k": 1}}))
        .await;
    assert_eq!(op.ack(5).await.offset, Some(1));
    op.ping(6).await;
    server.stop().await;
}

#[tokio::test]
async fn draining_lets_live_turns_finish_before_sockets_close() {
    let server = TestServer::start().await;
    let app = server.app.clone();
    let s = mint_ok(&server, "acme", &[]).await;
    let mut op = Client::operator(&server, &s).await;
    let mut watcher = Client::connect_all(&server, "acme").await;
    watcher.subscribe(1, "turns.s").await;
    start_turn(&mut op, 1, "t", "turns.s").await;
    say(&mut op, "t", "still ").await;
    let stopping = tokio::spawn(server.stop());
    // With no drain delay the listener closes at once: readiness is read
    // from the server itself.
    eventually("the server drains", async || !app.is_ready()).await;
    say(&mut op, "t", "talking").await;
    op.send(json!({"type": "turn_end", "id": 2, "turn": "t"})).await;
    op.ack(2).await;
    let text = watcher.turn_text("t").await;
    assert_eq!(text, "still talking");
    let close = watcher.closed().await.expect("then a close frame");
    assert_eq!(u16::from(close.code), 1001);
    drop(op);
    stopping.await.unwrap();
}
