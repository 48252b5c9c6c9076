//! The `switchboard` binary as a user runs it: `init`, `token`, `serve`
//! (with and without a config), and SIGTERM draining.

use crate::common;

use common::PATIENCE;
use common::process::{run, serve, sigterm, wait_exit};
use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

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
    // --force over a file someone made world-readable: private again.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(run(dir.path(), &["init", "--force"]).status.success());
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "--force leaves the file private");
    // ... and never through a symbolic link.
    let elsewhere = dir.path().join("elsewhere.toml");
    std::fs::write(&elsewhere, "keep").unwrap();
    let link = dir.path().join("linked.toml");
    std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
    let out = run(dir.path(), &["init", "--force", "--path", "linked.toml"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("symbolic link"),
        "{out:?}"
    );
    assert_eq!(std::fs::read_to_string(&elsewhere).unwrap(), "keep");

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
    // Two keys of one org under one id: which would verify?
    std::fs::write(
        dir.path().join("dup.toml"),
        format!(
            "[[orgs]]\nid = \"a\"\n[[orgs.api_keys]]\nid = \"k\"\nsha256 = \"{0}\"\n[[orgs.api_keys]]\nid = \"k\"\nsha256 = \"{0}\"\n",
            "ab".repeat(32)
        ),
    )
    .unwrap();
    let out = run(dir.path(), &["serve", "--config", "dup.toml"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("listed twice"));
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
    let (mut ws, _) = common::connect_ws(url).await.unwrap();
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
    let (mut ws, _) = common::connect_ws(url.clone()).await.unwrap();
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
    assert!(common::connect_ws(url).await.is_err());

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

/// POSTs `body` with a bearer token; the JSON answer.
async fn post_json(
    url: String,
    bearer: impl std::fmt::Display,
    body: serde_json::Value,
) -> serde_json::Value {
    reqwest::Client::new()
        .post(url)
        .bearer_auth(bearer)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The registry is durable: what the admin API made before a kill -9 is
/// there after a restart, and no secret it handed out reached the logs.
#[tokio::test]
async fn the_registry_survives_kill_9_and_keeps_secrets_out_of_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    assert!(run(dir.path(), &["init"]).status.success());
    let config = std::fs::read_to_string(dir.path().join("switchboard.toml")).unwrap();
    let admin = config
        .lines()
        .find_map(|l| l.strip_prefix("admin_token = "))
        .unwrap()
        .trim_matches('"')
        .to_owned();
    let mut server = serve(dir.path(), &[]);
    let http = reqwest::Client::new();
    let url = |server: &common::process::Serve, path: &str| format!("http://{}{path}", server.addr);
    let org = post_json(url(&server, "/v1/orgs"), &admin, json!({"id": "initech"})).await;
    let user = post_json(
        url(&server, "/v1/orgs/initech/users"),
        &admin,
        json!({"username": "ann", "role": "owner"}),
    )
    .await;
    let key = post_json(
        url(&server, "/v1/orgs/initech/keys"),
        user["token"].as_str().unwrap(),
        json!({"scopes": ["publish"]}),
    )
    .await;
    // A refused attempt with a real secret in the wrong place must not echo it either.
    let _ = http
        .get(url(&server, "/v1/orgs/initech/users"))
        .bearer_auth(format!("{}x", key["key"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    server.child.kill().unwrap(); // SIGKILL: no shutdown, no flush
    server.child.wait().unwrap();
    let secrets = [
        admin.as_str(),
        org["hs256_secret"].as_str().unwrap(),
        user["initial_password"].as_str().unwrap(),
        user["token"].as_str().unwrap(),
        key["key"].as_str().unwrap(),
    ];
    let log = server.log.lock().unwrap().join("\n");
    assert!(!log.is_empty());
    for secret in secrets {
        assert!(!log.contains(secret), "a secret reached the log");
    }
    let data = dir.path().join("switchboard-data");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&data).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o700, "the data directory is private");
    let stored = std::fs::read(data.join("registry.redb")).unwrap();
    for secret in &secrets[1..] {
        let needle = secret.as_bytes();
        assert!(
            !stored.windows(needle.len()).any(|w| w == needle),
            "a secret is stored in plain text"
        );
    }

    let server = serve(dir.path(), &[]);
    let published = http
        .post(url(&server, "/v1/orgs/initech/channels/room/publish"))
        .bearer_auth(key["key"].as_str().unwrap())
        .json(&json!({"data": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), 200, "the key made before the kill works");
    let again = post_json(
        url(&server, "/v1/orgs/initech/users"),
        &admin,
        json!({"username": "ann"}),
    )
    .await;
    assert_eq!(again["user_id"], user["user_id"]);
    assert_eq!(again["created"], json!(false));
    // The admin CLI sees it too.
    let out = run(
        dir.path(),
        &[
            "org",
            "list",
            "--server",
            &url(&server, ""),
            "--admin-token",
            &admin,
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("initech"));
}

#[test]
fn a_wrong_master_key_fails_start_up_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    assert!(run(dir.path(), &["init"]).status.success());
    // First start: the registry is sealed with the master key made beside it.
    let mut first = serve(dir.path(), &[]);
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let wrong = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let out = std::process::Command::new(common::process::BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("SWITCHBOARD_MASTER_KEY", wrong)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("master key"), "{stderr}");
    // Without its key file the registry is not opened either.
    std::fs::remove_file(dir.path().join("switchboard-data/master.key")).unwrap();
    let out = run(dir.path(), &["serve", "--listen", "127.0.0.1:0"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is missing"),
        "{out:?}"
    );
}
