//! Cluster mode, part 1, against a real nats-server in operator mode and two
//! pods: start-up that fails loud, the shared registry and its changes
//! enforced on every pod, and one NATS account per org made once however
//! many first uses race, kept current and pushed again when NATS loses it.
//! Publishers and isolation are in `tests/publishers.rs`.

use crate::common;

use std::time::Duration;

use common::nats::*;
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::json;
use switchboard_proto::OrgId;

#[tokio::test]
async fn an_org_made_on_one_pod_serves_on_the_other_and_gets_one_account() {
    let nats = Nats::start().await;
    let (a, b) = two_pods(&nats).await;
    let made = create_org(&a, "initech").await;
    let secret = made["hs256_secret"].as_str().unwrap();
    let token = token_signed(
        secret,
        "initech",
        "alice",
        &[">"],
        &[">"],
        switchboard::auth::now_secs() + 600,
    );
    // Pod B hears of the org through the bucket's watch (about a millisecond).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    let mut client = loop {
        match tokio_tungstenite::connect_async(b.ws_url(&token)).await {
            Ok((ws, _)) => break Client { ws },
            Err(_) if tokio::time::Instant::now() < deadline => tokio::task::yield_now().await,
            Err(e) => panic!("pod B does not serve the new org within a second: {e}"),
        }
    };
    client.subscribe(1, "chat").await;

    // 50 first uses of a fresh org, racing on two pods: one account.
    let before = server_accounts(&nats).await.len();
    let org = OrgId::new("globex").unwrap();
    let opens = (0..50).map(|i| {
        let pod = if i % 2 == 0 { &a } else { &b };
        let accounts = pod.app.accounts.clone().unwrap();
        let org = org.clone();
        async move { accounts.open(&org).await.map(|_| ()) }
    });
    for result in futures_util::future::join_all(opens).await {
        result.unwrap();
    }
    let after = server_accounts(&nats).await;
    assert_eq!(
        after.len(),
        before + 1,
        "one new account on the server: {after:?}"
    );
}

#[tokio::test]
async fn a_key_revoked_on_one_pod_is_refused_on_the_other_within_a_second() {
    let nats = Nats::start().await;
    let (a, b) = two_pods(&nats).await;
    let (status, key) = call(
        &a,
        Method::POST,
        "/v1/orgs/acme/keys",
        Some(ADMIN_TOKEN),
        Some(json!({"name": "backend", "scopes": ["publish"]})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let secret = key["key"].as_str().unwrap();
    let publish = |pod: &TestServer| {
        reqwest::Client::new()
            .post(pod.url("/v1/orgs/acme/channels/chat/publish"))
            .bearer_auth(secret)
            .json(&json!({"data": 1}))
            .send()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while publish(&b).await.unwrap().status() != StatusCode::OK {
        assert!(
            tokio::time::Instant::now() < deadline,
            "pod B never took the new key"
        );
    }
    let (status, _) = call(
        &a,
        Method::DELETE,
        &format!("/v1/orgs/acme/keys/{}", key["id"].as_str().unwrap()),
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let revoked = tokio::time::Instant::now();
    loop {
        let status = publish(&b).await.unwrap().status();
        if status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(
            revoked.elapsed() < Duration::from_secs(1),
            "pod B still takes the revoked key"
        );
    }
}

/// Runs `switchboard serve` with `args`; it must stop on its own, failing,
/// with a message containing `says`.
async fn refuses_to_start(args: &[&str], says: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::time::timeout(
        PATIENCE * 2,
        tokio::process::Command::new(common::process::BIN)
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .current_dir(dir.path())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("serve {args:?} did not stop"))
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "serve {args:?} started");
    assert!(
        stderr.contains(says),
        "serve {args:?} said {stderr:?}, not {says:?}"
    );
}

#[tokio::test]
async fn a_pod_that_cannot_reach_nats_says_why_and_stops() {
    let nats = Nats::start().await;
    let dir = nats.dir.to_str().unwrap();
    let closed = format!("nats://127.0.0.1:{}", common::nats::free_port());
    refuses_to_start(
        &["--nats-url", &closed, "--nats-dir", dir],
        "cannot connect to NATS",
    )
    .await;
    refuses_to_start(
        &["--nats-url", "http://127.0.0.1:4222", "--nats-dir", dir],
        "not a NATS URL",
    )
    .await;
    refuses_to_start(
        &["--nats-url", &nats.url, "--nats-dir", "/nonexistent"],
        "does not exist",
    )
    .await;
    refuses_to_start(&["--nats-url", &nats.url], "--nats-dir").await;
    // A directory that lost a file, and one whose creds belong to another operator.
    let broken = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&nats.dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() && !path.ends_with("sys.creds") {
            std::fs::copy(&path, broken.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    let broken = broken.path().to_str().unwrap();
    refuses_to_start(&["--nats-url", &nats.url, "--nats-dir", broken], "sys.creds").await;
    let other = Nats::start().await;
    std::fs::copy(
        other.dir.join("sys.creds"),
        std::path::Path::new(broken).join("sys.creds"),
    )
    .unwrap();
    refuses_to_start(
        &["--nats-url", &nats.url, "--nats-dir", broken],
        "cannot connect to NATS",
    )
    .await;
}

#[tokio::test]
async fn an_account_nats_lost_is_pushed_again_while_its_org_is_in_use() {
    let mut nats = Nats::start().await;
    let pod = TestServer::start_cluster(&nats, |_| {}).await;
    let mut client = Client::connect_all(&pod, "acme").await;
    client.subscribe(1, "chat.1").await;
    let made = create_publisher(&pod, "acme", json!({"name": "ingest"})).await;
    // nats-server comes back without the org accounts it had stored.
    nats.restart(true).await;
    // The pod notices its org connection refused, pushes the account from
    // the registry and reconnects; the publisher's old creds work again.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let publisher = loop {
        let options = async_nats::ConnectOptions::with_credentials(made["creds"].as_str().unwrap())
            .unwrap()
            .max_reconnects(Some(1));
        match options.connect(&nats.url).await {
            Ok(c) => break c,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the org's account never came back: {e}"),
        }
    };
    // Published until the pod's new connection listens again.
    let mut n = 0;
    let data = loop {
        n += 1;
        publisher
            .publish("pub.chat.1", json!({"n": n}).to_string().into())
            .await
            .unwrap();
        publisher.flush().await.unwrap();
        let next = tokio::time::timeout(Duration::from_millis(200), client.message()).await;
        if let Ok((_, data)) = next {
            break data;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the pod never listened again"
        );
    };
    assert!(data["n"].as_u64().is_some(), "{data}");
    client.ping(2).await;
}

#[tokio::test]
async fn concurrent_account_updates_on_two_pods_leave_nats_with_the_newest() {
    let nats = Nats::start().await;
    let (a, b) = two_pods(&nats).await;
    let mut users = Vec::new();
    let mut account = String::new();
    for i in 0..6 {
        let pod = if i % 2 == 0 { &a } else { &b };
        let made = create_publisher(pod, "acme", json!({"name": format!("p{i}")})).await;
        let jwt = made["creds"].as_str().unwrap().lines().nth(1).unwrap().to_owned();
        account = claims(&jwt)["nats"]["issuer_account"]
            .as_str()
            .unwrap()
            .to_owned();
        users.push(made["user"].as_str().unwrap().to_owned());
    }
    let paths: Vec<String> = (0..6).map(|i| format!("/v1/orgs/acme/publishers/p{i}")).collect();
    let revokes = paths.iter().enumerate().map(|(i, path)| {
        let pod = if i % 2 == 0 { &a } else { &b };
        call(pod, Method::DELETE, path, Some(ADMIN_TOKEN), None)
    });
    for (status, body) in futures_util::future::join_all(revokes).await {
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    }
    let sys = nats.connect("sys.creds").await;
    let reply = sys
        .request(format!("$SYS.REQ.ACCOUNT.{account}.CLAIMS.LOOKUP"), "".into())
        .await
        .unwrap();
    let held = claims(std::str::from_utf8(&reply.payload).unwrap());
    let revoked = held["nats"]["revocations"].as_object().unwrap();
    for user in &users {
        assert!(
            revoked.contains_key(user),
            "nats-server holds claims without {user}: {held}"
        );
    }
}

#[tokio::test]
async fn a_revocation_or_an_org_deleted_on_one_pod_closes_connections_on_the_other() {
    let nats = Nats::start().await;
    let (a, b) = two_pods(&nats).await;
    let mut mallory = Client::connect(&b, &token("acme", "mallory", &[">"], &[])).await;
    let mut alice = Client::connect(&b, &token("acme", "alice", &[">"], &[])).await;
    let (status, body) = call(
        &a,
        Method::POST,
        "/v1/orgs/acme/revocations",
        Some(ADMIN_TOKEN),
        Some(json!({"sub": "mallory"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let revoked = tokio::time::Instant::now();
    let frame = mallory.closed().await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 4003);
    assert!(
        revoked.elapsed() < Duration::from_secs(1),
        "closed {:?} after",
        revoked.elapsed()
    );
    alice.ping(1).await;

    let (status, _) = call(&a, Method::DELETE, "/v1/orgs/acme", Some(ADMIN_TOKEN), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let deleted = tokio::time::Instant::now();
    let frame = alice.closed().await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 4003);
    assert!(
        deleted.elapsed() < Duration::from_secs(1),
        "closed {:?} after",
        deleted.elapsed()
    );
    let mut other = Client::connect_all(&b, "globex").await;
    other.ping(1).await;
}

#[tokio::test]
async fn ready_and_metrics_say_when_nats_is_out_of_reach_and_sockets_stay_open() {
    let mut nats = Nats::start().await;
    let pod = TestServer::start_cluster(&nats, |_| {}).await;
    let mut client = Client::connect_all(&pod, "acme").await;
    let ready = || async { get(&pod.url("/ready"), None).await };
    assert_eq!(ready().await.0, 200);
    assert_eq!(pod.metric("switchboard_nats_connected").await, 1.0);
    nats.kill();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let (status, body) = loop {
        let (status, body) = ready().await;
        if status == 503 || tokio::time::Instant::now() > deadline {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!((status, body["status"].as_str()), (503, Some("nats_unreachable")));
    assert_eq!(pod.metric("switchboard_nats_connected").await, 0.0);
    client.ping(1).await;
    nats.revive(false).await;
    let deadline = tokio::time::Instant::now() + PATIENCE * 2;
    while ready().await.0 != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "ready again once NATS is back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client.ping(2).await;
}
