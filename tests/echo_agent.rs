//! `examples/echo_agent.rs` run as the README says: it mints a session for
//! `role:main-ai`, a client's `send` comes back as a streamed turn, and a
//! restarted agent resumes its session and gets what was sent meanwhile.

use crate::common;

use std::process::{Command, Stdio};

use common::*;
use serde_json::json;
use switchboard_proto::ServerFrame;

/// `cargo test` (the whole suite) builds the examples next to the test
/// binaries; run alone, this test needs `cargo build --example echo_agent` first.
fn example(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    dir.join("examples").join(name)
}

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_agent(server: &TestServer, dir: &std::path::Path) -> Killed {
    let args = [
        "--url",
        &server.url(""),
        "--api-key",
        server.api_key("acme"),
        "--tokens-per-sec",
        "200",
    ];
    let child = Command::new(example("echo_agent"))
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the example was built by cargo test");
    Killed(child)
}

/// Reads one whole turn from `c`: its text and how many token frames carried it.
async fn read_turn(c: &mut Client) -> (String, usize) {
    let turn = loop {
        if let ServerFrame::TurnStart { turn, .. } = c.channel_event().await {
            break turn.as_str().to_owned();
        }
    };
    let (mut text, mut tokens) = (String::new(), 0);
    loop {
        let frame = c.channel_event().await;
        tokens += usize::from(matches!(frame, ServerFrame::Token { .. }));
        apply_turn(&mut text, &frame, &turn);
        if matches!(frame, ServerFrame::TurnEnd { .. }) {
            return (text, tokens);
        }
    }
}

#[tokio::test]
async fn the_echo_agent_answers_with_a_streamed_turn_and_resumes_its_session() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(&server, dir.path());
    let list = server.url("/v1/operators");
    let key = server.api_key("acme").to_owned();
    let online = async || {
        let res = reqwest::Client::new()
            .get(&list)
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        let body: serde_json::Value = res.json().await.unwrap();
        body["sessions"].as_array().is_some_and(|s| {
            s.len() == 1 && s[0]["roles"] == json!(["main-ai"]) && s[0]["connected"] == json!(true)
        })
    };
    eventually("the agent is online", online).await;

    let mut c = Client::connect_all(&server, "acme").await;
    c.subscribe(1, "chat.1").await;
    c.send(json!({"type": "send", "id": 2, "to": "role:main-ai", "reply_to": "chat.1", "data": {"text": "hello brave world"}})).await;
    c.ack(2).await;
    assert_eq!(
        read_turn(&mut c).await,
        ("dlrow evarb olleh".into(), 3),
        "a word at a time"
    );

    // Stopped, then started again: the same session (no 409 for its own
    // role), and what was sent while it was down arrives.
    let saved = std::fs::read_to_string(dir.path().join("echo_agent.session")).unwrap();
    drop(agent);
    c.send(
        json!({"type": "send", "id": 3, "to": "role:main-ai", "reply_to": "chat.1", "data": {"text": "ab"}}),
    )
    .await;
    c.ack(3).await;
    let _agent = start_agent(&server, dir.path());
    assert_eq!(read_turn(&mut c).await.0, "ba");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("echo_agent.session")).unwrap(),
        saved
    );
    eventually("one session, connected", online).await;
    server.stop().await;
}
