#![allow(clippy::unwrap_used)] // tests fail loudly by design

//! Cluster mode, part 1, against a real nats-server in operator mode and two
//! pods: the shared registry, one NATS account per org made once however
//! many first uses race, publishers on NATS reaching WebSocket subscribers,
//! and the tenant boundary enforced by NATS itself.

mod common;

use std::time::Duration;

use common::nats::Nats;
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use switchboard_proto::OrgId;

/// Two pods of one cluster. Each imports the test config's orgs with API
/// keys of its own; the last import wins, so both use B's keys.
async fn two_pods(nats: &Nats) -> (TestServer, TestServer) {
    let mut a = TestServer::start_cluster(nats, |_| {}).await;
    let b = TestServer::start_cluster(nats, |_| {}).await;
    a.api_keys = b.api_keys.clone();
    (a, b)
}

/// The accounts nats-server knows (system and broker included).
async fn server_accounts(nats: &Nats) -> Vec<String> {
    let sys = nats.connect("sys.creds").await;
    let reply = tokio::time::timeout(PATIENCE, sys.request("$SYS.REQ.CLAIMS.LIST", "".into()))
        .await
        .unwrap()
        .unwrap();
    let body: Value = serde_json::from_slice(&reply.payload).unwrap();
    body["data"]
        .as_array()
        .unwrap_or_else(|| panic!("a list of accounts: {body}"))
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

async fn create_publisher(pod: &TestServer, org: &str, body: Value) -> Value {
    let (status, made) = call(
        pod,
        Method::POST,
        &format!("/v1/orgs/{org}/publishers"),
        Some(ADMIN_TOKEN),
        Some(body),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    made
}

/// A stock NATS client with a publisher's creds; its errors and
/// disconnections arrive on the returned channel.
async fn publisher(
    nats: &Nats,
    made: &Value,
) -> (
    async_nats::Client,
    tokio::sync::mpsc::UnboundedReceiver<async_nats::Event>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::with_credentials(made["creds"].as_str().unwrap())
        .unwrap()
        .max_reconnects(Some(1))
        .event_callback(move |e| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(e);
            }
        })
        .connect(&nats.url)
        .await
        .unwrap();
    (client, rx)
}

/// Waits for a permission error about `subject`.
async fn refused(events: &mut tokio::sync::mpsc::UnboundedReceiver<async_nats::Event>, subject: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("no permission error for {subject}"))
            .unwrap();
        if let async_nats::Event::ServerError(e) = &event
            && e.to_string().to_lowercase().contains("permissions violation")
            && e.to_string().contains(subject)
        {
            return;
        }
    }
}

/// Waits until `events` reports the connection lost.
async fn cut(events: &mut tokio::sync::mpsc::UnboundedReceiver<async_nats::Event>, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(async_nats::Event::Disconnected | async_nats::Event::Closed)) => return,
            Ok(Some(_)) => continue,
            Ok(None) => return,
            Err(_) => panic!("the connection was not cut within {within:?}"),
        }
    }
}

#[tokio::test]
async fn an_org_made_on_one_pod_serves_on_the_other_and_gets_one_account() {
    let nats = Nats::start().await;
    let (a, b) = two_pods(&nats).await;
    let (status, made) = call(
        &a,
        Method::POST,
        "/v1/orgs",
        Some(ADMIN_TOKEN),
        Some(json!({"id": "initech"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
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

#[tokio::test]
async fn a_nats_publisher_reaches_subscribers_on_both_pods_and_bad_events_are_dropped() {
    let nats = Nats::start().await;
    let (a, b) = two_pods(&nats).await;
    let mut on_a = Client::connect_all(&a, "acme").await;
    let mut on_b = Client::connect_all(&b, "acme").await;
    on_a.subscribe(1, "chat.1").await;
    on_b.subscribe(1, "chat.1").await;
    let made = create_publisher(&a, "acme", json!({"name": "ingest"})).await;
    assert_eq!(made["subject_prefix"], "pub.");
    assert!(made["user"].as_str().unwrap().starts_with('U'));
    let (nc, _events) = publisher(&nats, &made).await;
    let malformed_before = a.metric("switchboard_nats_publisher_events_total").await;
    nc.publish("pub.chat.1", r#"{"n":1}"#.into()).await.unwrap();
    nc.publish("pub.chat.1", "not json".into()).await.unwrap();
    nc.publish("pub.chat.1", "null".into()).await.unwrap();
    let big = format!("\"{}\"", "x".repeat(70 * 1024));
    nc.publish("pub.chat.1", big.into()).await.unwrap();
    nc.publish("pub.chat.1", "[2]".into()).await.unwrap();
    nc.flush().await.unwrap();
    for client in [&mut on_a, &mut on_b] {
        let (_, first) = client.message().await;
        assert_eq!(first, json!({"n": 1}));
        let (_, second) = client.message().await;
        assert_eq!(second, json!([2]), "the bad events were dropped, nothing else");
    }
    // Every event is counted (by result) on every pod that read it.
    assert!(a.metric("switchboard_nats_publisher_events_total").await >= malformed_before + 5.0);
    let page = a.metrics().await;
    for result in ["delivered", "malformed", "oversized"] {
        assert!(
            page.contains(&format!(
                "switchboard_nats_publisher_events_total{{result=\"{result}\"}}"
            )),
            "{result} is counted"
        );
    }
    // The history holds the publisher's messages like any other.
    let (status, history) = get(
        &a.url("/v1/orgs/acme/channels/chat.1/history"),
        Some(a.api_key("acme")),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(history["messages"].as_array().unwrap().len(), 2, "{history}");

    let (status, list) = call(
        &b,
        Method::GET,
        "/v1/orgs/acme/publishers",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["publishers"][0]["name"], "ingest");
    assert!(
        list["publishers"][0].get("creds").is_none(),
        "secrets are shown once"
    );
}

#[tokio::test]
async fn nats_keeps_orgs_and_subjects_apart() {
    let nats = Nats::start().await;
    let (a, b) = two_pods(&nats).await;
    let mut on_a = Client::connect_all(&a, "acme").await;
    on_a.subscribe(1, "alerts.disk").await;
    let acme_pub = create_publisher(&a, "acme", json!({"name": "alerts", "channels": ["alerts.*"]})).await;
    let globex_pub = create_publisher(&b, "globex", json!({"name": "spy"})).await;
    let (nc, mut events) = publisher(&nats, &acme_pub).await;

    // Org B's server user and its publisher see nothing of org A.
    let globex_server = b
        .app
        .accounts
        .as_ref()
        .unwrap()
        .open(&OrgId::new("globex").unwrap())
        .await
        .unwrap();
    let mut everything = globex_server.subscribe(">").await.unwrap();
    // Its own first message proves the subscription live on the server.
    globex_server.publish("ready", "r".into()).await.unwrap();
    let ready = tokio::time::timeout(PATIENCE, futures_util::StreamExt::next(&mut everything))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ready.subject.as_str(), "ready");
    let (spy, mut spy_events) = publisher(&nats, &globex_pub).await;
    let _ = spy.subscribe(">").await.unwrap();
    refused(&mut spy_events, ">").await;

    nc.publish("pub.alerts.disk", r#"{"full":true}"#.into())
        .await
        .unwrap();
    nc.flush().await.unwrap();
    let (_, data) = on_a.message().await;
    assert_eq!(data, json!({"full": true}));
    a.publish("acme", "alerts.disk", json!("over http")).await;
    let (_, data) = on_a.message().await;
    assert_eq!(data, json!("over http"));
    // A marker in org B's own account: the first thing its `>` sees.
    globex_server.publish("marker", "m".into()).await.unwrap();
    let first = tokio::time::timeout(PATIENCE, futures_util::StreamExt::next(&mut everything))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.subject.as_str(), "marker", "org B saw {first:?}");

    // A publisher may only publish on its own channels' publisher subjects.
    for subject in [
        "pub.chat",
        "live.alerts.disk",
        "ch.alerts.disk",
        "op.s1",
        "$SYS.REQ.CLAIMS.LIST",
        "$KV.switchboard.orgs.acme",
    ] {
        nc.publish(subject, "{}".into()).await.unwrap();
        nc.flush().await.unwrap();
        refused(&mut events, subject).await;
    }
    let _ = nc.subscribe("pub.>").await.unwrap();
    refused(&mut events, "pub.>").await;
}

#[tokio::test]
async fn revoking_a_publisher_cuts_only_it_and_deleting_the_org_cuts_everything() {
    let nats = Nats::start().await;
    let (a, b) = two_pods(&nats).await;
    let (status, _) = call(
        &a,
        Method::POST,
        "/v1/orgs",
        Some(ADMIN_TOKEN),
        Some(json!({"id": "initech"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let one = create_publisher(&a, "initech", json!({"name": "one"})).await;
    let two = create_publisher(&b, "initech", json!({"name": "two"})).await;
    let (_one, mut one_events) = publisher(&nats, &one).await;
    let (two_client, mut two_events) = publisher(&nats, &two).await;
    let org = OrgId::new("initech").unwrap();
    let pod_conn = a.app.accounts.as_ref().unwrap().open(&org).await.unwrap();

    let (status, body) = call(
        &b,
        Method::DELETE,
        "/v1/orgs/initech/publishers/one",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    cut(&mut one_events, Duration::from_secs(1)).await;
    let (status, body) = call(
        &b,
        Method::DELETE,
        "/v1/orgs/initech/publishers/one",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "NOT_FOUND"));
    // The other one still publishes.
    two_client.publish("pub.chat", "1".into()).await.unwrap();
    tokio::time::timeout(PATIENCE, two_client.flush())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        two_client.connection_state(),
        async_nats::connection::State::Connected
    );

    let (status, _) = call(&a, Method::DELETE, "/v1/orgs/initech", Some(ADMIN_TOKEN), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    cut(&mut two_events, Duration::from_secs(1)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while pod_conn.connection_state() == async_nats::connection::State::Connected {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the pod's org connection outlived the org"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, body) = call(
        &b,
        Method::GET,
        "/v1/orgs/initech/publishers",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // The id can be used again: a new org, a new account.
    let (status, _) = call(
        &b,
        Method::POST,
        "/v1/orgs",
        Some(ADMIN_TOKEN),
        Some(json!({"id": "initech"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let again = create_publisher(&b, "initech", json!({"name": "one"})).await;
    let (client, _) = publisher(&nats, &again).await;
    tokio::time::timeout(PATIENCE, client.flush())
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn publisher_requests_are_checked() {
    let nats = Nats::start().await;
    let pod = TestServer::start_cluster(&nats, |_| {}).await;
    for (body, want) in [
        (json!({"name": ""}), StatusCode::BAD_REQUEST),
        (json!({"name": "a b"}), StatusCode::BAD_REQUEST),
        (
            json!({"name": "x", "channels": ["a.>.b"]}),
            StatusCode::BAD_REQUEST,
        ),
        (json!({"name": "x", "extra": 1}), StatusCode::BAD_REQUEST),
        (json!({"nam": "x"}), StatusCode::BAD_REQUEST),
    ] {
        let (status, answer) = call(
            &pod,
            Method::POST,
            "/v1/orgs/acme/publishers",
            Some(ADMIN_TOKEN),
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, want, "{body} → {answer}");
        assert_eq!(code(&answer), "VALIDATION_ERROR");
    }
    create_publisher(&pod, "acme", json!({"name": "x"})).await;
    let (status, answer) = call(
        &pod,
        Method::POST,
        "/v1/orgs/acme/publishers",
        Some(ADMIN_TOKEN),
        Some(json!({"name": "x"})),
    )
    .await;
    assert_eq!((status, code(&answer)), (StatusCode::CONFLICT, "CONFLICT"));
    // Org B's key cannot mint publishers of org A; no key, no publisher.
    let (status, _) = call(
        &pod,
        Method::POST,
        "/v1/orgs/acme/publishers",
        Some(pod.api_key("globex")),
        Some(json!({"name": "y"})),
    )
    .await;
    assert!(
        status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN,
        "{status}"
    );
    let (status, _) = call(
        &pod,
        Method::POST,
        "/v1/orgs/acme/publishers",
        None,
        Some(json!({"name": "y"})),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = call(
        &pod,
        Method::POST,
        "/v1/orgs/nobody/publishers",
        Some(ADMIN_TOKEN),
        Some(json!({"name": "y"})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // One pod on its own has no NATS: it says so.
    let single = TestServer::start().await;
    let (status, answer) = call(
        &single,
        Method::POST,
        "/v1/orgs/acme/publishers",
        Some(ADMIN_TOKEN),
        Some(json!({"name": "x"})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--nats-url"),
        "{answer}"
    );
}

#[tokio::test]
async fn a_python_publisher_reaches_websocket_subscribers_on_two_pods() {
    let nats = Nats::start().await;
    let (a, b) = two_pods(&nats).await;
    let mut on_a = Client::connect_all(&a, "acme").await;
    let mut on_b = Client::connect_all(&b, "acme").await;
    on_a.subscribe(1, "chat.py").await;
    on_b.subscribe(1, "chat.py").await;
    let made = create_publisher(&b, "acme", json!({"name": "python", "channels": ["chat.*"]})).await;
    let creds = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(creds.path(), made["creds"].as_str().unwrap()).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/nats_publisher.py");
    let out = tokio::time::timeout(
        PATIENCE,
        tokio::process::Command::new("python3")
            .args([script, "--url", &nats.url, "--creds"])
            .arg(creds.path())
            .args(["--channel", "chat.py", "--count", "3"])
            .output(),
    )
    .await
    .unwrap()
    .expect("python3 runs (scripts/test.sh installs nats-py)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for client in [&mut on_a, &mut on_b] {
        let mut last = 0;
        for n in 0..3 {
            let (offset, data) = client.message().await;
            assert_eq!(data, json!({"n": n, "from": "nats-py"}));
            assert!(offset > last, "offsets grow");
            last = offset;
        }
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

/// The claims of a JWT, unverified.
fn claims(jwt: &str) -> Value {
    use base64::Engine;
    let body = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .unwrap(),
    )
    .unwrap()
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
