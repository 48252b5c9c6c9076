#![allow(clippy::unwrap_used)] // tests fail loudly by design

//! The `switchboard` binary as a user runs it: `init`, `token`, `serve`
//! (with and without a config), and SIGTERM draining.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::PATIENCE;
use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

fn run(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).current_dir(dir).output().unwrap()
}

/// A `switchboard serve` process; killed if the test fails early.
struct Serve {
    child: Child,
    addr: String,
    /// Everything it printed to stderr before it was listening.
    banner: Vec<String>,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

fn serve(dir: &Path, args: &[&str]) -> Serve {
    let mut child = Command::new(BIN)
        .arg("serve")
        .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
        .args(args)
        .current_dir(dir)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut banner = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && v["fields"]["message"] == "switchboard listening"
            {
                let _ = tx.send((
                    v["fields"]["addr"].as_str().unwrap().to_owned(),
                    std::mem::take(&mut banner),
                ));
            } else {
                banner.push(line);
            }
        }
    });
    let (addr, banner) = rx.recv_timeout(PATIENCE).expect("the server starts listening");
    Serve { child, addr, banner }
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + PATIENCE * 2;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(std::time::Instant::now() < deadline, "the server exits in time");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn init_writes_a_private_config_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &["init"]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("API key for org demo"), "{stdout}");
    let path = dir.path().join("switchboard.toml");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "secrets are not world-readable");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        !text.contains(stdout.split_whitespace().last().unwrap()),
        "the API key is stored hashed only"
    );

    let again = run(dir.path(), &["init"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    assert!(run(dir.path(), &["init", "--force"]).status.success());

    let token = run(
        dir.path(),
        &[
            "token",
            "--org",
            "demo",
            "--sub",
            "alice",
            "--subscribe",
            "chat.*",
        ],
    );
    assert!(token.status.success());
    assert_eq!(
        String::from_utf8(token.stdout).unwrap().trim().split('.').count(),
        3,
        "a JWT"
    );
    let missing = run(dir.path(), &["token", "--org", "nobody"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no org \"nobody\""));
}

#[test]
fn a_bad_config_reports_every_problem_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.toml"),
        "listen = \"nowhere\"\n[limits]\noutbound_queue_bytes = 0\n[[orgs]]\nid = \"a b\"\n",
    )
    .unwrap();
    let out = run(dir.path(), &["serve", "--config", "bad.toml"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in ["listen", "outbound_queue_bytes", "org id"] {
        assert!(err.contains(needle), "{needle} not reported in:\n{err}");
    }
    std::fs::write(dir.path().join("typo.toml"), "[limits]\noutbound_qeue = 5\n").unwrap();
    let out = run(dir.path(), &["serve", "--config", "typo.toml"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field"));
}

#[tokio::test]
async fn serve_without_config_prints_a_working_token_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &[]);
    let banner = server.banner.join("\n");
    let token = banner
        .lines()
        .find_map(|l| l.trim().strip_prefix("connect:   websocat 'ws://"))
        .and_then(|l| l.split("token=").nth(1))
        .map(|t| t.trim_end_matches('\''))
        .expect("the banner shows a connect command");
    let key = banner
        .split("Bearer ")
        .nth(1)
        .and_then(|s| s.split('\'').next())
        .expect("the banner shows a key");

    let url = format!("ws://{}/v1/ws?token={token}", server.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    futures_util::SinkExt::send(
        &mut ws,
        Message::text(r#"{"type":"subscribe","id":1,"channel":"chat.1"}"#),
    )
    .await
    .unwrap();
    let ack = tokio::time::timeout(PATIENCE, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(ack.to_text().unwrap().contains(r#""type":"ack""#));
    let res = reqwest::Client::new()
        .post(format!(
            "http://{}/v1/orgs/demo/channels/chat.1/publish",
            server.addr
        ))
        .bearer_auth(key)
        .json(&json!({"data": {"text": "hi"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let msg = tokio::time::timeout(PATIENCE, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(msg.to_text().unwrap().contains(r#""text":"hi""#));
}

#[tokio::test]
async fn sigterm_drains_closes_sockets_with_1001_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    assert!(run(dir.path(), &["init"]).status.success());
    let token = String::from_utf8(run(dir.path(), &["token", "--sub", "t"]).stdout).unwrap();
    let mut server = serve(dir.path(), &["--drain-delay-secs", "1"]);
    let url = format!("ws://{}/v1/ws?token={}", server.addr, token.trim());
    let (mut ws, _) = tokio_tungstenite::connect_async(url.clone()).await.unwrap();
    futures_util::SinkExt::send(
        &mut ws,
        Message::text(r#"{"type":"subscribe","id":1,"channel":"c"}"#),
    )
    .await
    .unwrap();
    tokio::time::timeout(PATIENCE, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    sigterm(&server.child);
    // Not ready while draining, so a load balancer stops sending traffic here.
    let ready = format!("http://{}/ready", server.addr);
    common::eventually("ready turns false", async || {
        reqwest::get(&ready).await.is_ok_and(|r| r.status() == 503)
    })
    .await;
    // New WebSockets are refused meanwhile.
    assert!(tokio_tungstenite::connect_async(url).await.is_err());

    let close = loop {
        match tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("a close in time")
        {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close.map(|f| f.code), Some(CloseCode::Away), "1001 going away");
    drop(ws);
    let status = wait_exit(&mut server.child);
    assert_eq!(status.code(), Some(0));
}
