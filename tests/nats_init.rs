//! `switchboard nats init` against a real nats-server: the server starts in
//! operator mode from the generated config, the broker's credentials connect
//! with JetStream on, the system user reads the accounts back, secrets are
//! private, and a second init refuses to replace the operator.

use crate::common;

use std::os::unix::fs::PermissionsExt;

use common::PATIENCE;
use common::nats::{Nats, claims};
use common::process::run;

#[tokio::test]
async fn nats_init_makes_an_operator_mode_deployment_nats_server_accepts() {
    let nats = Nats::start().await;
    for secret in [
        "operator.nk",
        "operator-signing.nk",
        "sys.creds",
        "broker.creds",
        "master.key",
    ] {
        let mode = std::fs::metadata(nats.dir.join(secret))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{secret} is private");
    }
    // The broker's account has JetStream (read `$JS.API.INFO` directly:
    // async-nats 0.51 does not parse 2.9's account info, NATS.md trap 8).
    let broker = nats.connect("broker.creds").await;
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
    let broker_account = std::fs::read_to_string(nats.dir.join("broker-account.jwt")).unwrap();
    let claims = claims(&broker_account);
    let sys = nats.connect("sys.creds").await;
    let subject = format!(
        "$SYS.REQ.ACCOUNT.{}.CLAIMS.LOOKUP",
        claims["sub"].as_str().unwrap()
    );
    let reply = tokio::time::timeout(PATIENCE, sys.request(subject, "".into()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&reply.payload), broker_account);

    let again = run(&nats.dir, &["nats", "init", "--out", "."]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
}
