#![allow(clippy::unwrap_used)] // tests fail loudly by design

//! `switchboard nats init` against a real nats-server: the server starts in
//! operator mode from the generated config, the broker's credentials connect
//! with JetStream on, the system user reads the accounts back, secrets are
//! private, and a second init refuses to replace the operator.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::PATIENCE;
use common::nats::free_port;
use common::process::run;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn nats_init_makes_an_operator_mode_deployment_nats_server_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let (port, http) = (free_port(), free_port());
    let out = run(
        dir.path(),
        &[
            "nats",
            "init",
            "--out",
            "nats",
            "--port",
            &port.to_string(),
            "--http-port",
            &http.to_string(),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let nats = dir.path().join("nats");
    for secret in ["operator.nk", "operator-signing.nk", "sys.creds", "broker.creds"] {
        let mode = std::fs::metadata(nats.join(secret)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{secret} is private");
    }
    let _server = Killed(
        Command::new("nats-server")
            .args(["-c", nats.join("nats-server.conf").to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is installed (scripts/test.sh installs it)"),
    );
    let url = format!("nats://127.0.0.1:{port}");
    let connect = |creds: &'static str| {
        let (url, path) = (url.clone(), nats.join(creds));
        async move {
            let deadline = tokio::time::Instant::now() + PATIENCE;
            loop {
                match async_nats::ConnectOptions::with_credentials_file(&path)
                    .await
                    .unwrap()
                    .max_reconnects(Some(1))
                    .connect(&url)
                    .await
                {
                    Ok(c) => return c,
                    Err(e) if tokio::time::Instant::now() < deadline => {
                        let _ = e;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => panic!("{creds} does not connect: {e}"),
                }
            }
        }
    };
    // The broker's account has JetStream (read `$JS.API.INFO` directly:
    // async-nats 0.51 does not parse 2.9's account info, NATS.md trap 8).
    let broker = connect("broker.creds").await;
    let info = tokio::time::timeout(PATIENCE, broker.request("$JS.API.INFO", "".into()))
        .await
        .unwrap()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.payload).unwrap();
    assert!(
        info.get("error").is_none(),
        "JetStream is on for the broker: {info}"
    );
    assert_eq!(info["type"], "io.nats.jetstream.api.v1.account_info_response");
    // The system user reads the broker's account back from the resolver.
    let broker_account = std::fs::read_to_string(nats.join("broker-account.jwt")).unwrap();
    let claims: serde_json::Value = {
        let body = broker_account.split('.').nth(1).unwrap();
        use base64::Engine;
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(body)
                .unwrap(),
        )
        .unwrap()
    };
    let sys = connect("sys.creds").await;
    let subject = format!(
        "$SYS.REQ.ACCOUNT.{}.CLAIMS.LOOKUP",
        claims["sub"].as_str().unwrap()
    );
    let reply = tokio::time::timeout(PATIENCE, sys.request(subject, "".into()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&reply.payload), broker_account);

    let again = run(dir.path(), &["nats", "init", "--out", "nats"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
}
