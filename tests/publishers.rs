//! Publishers on NATS (cluster mode) against a real nats-server and two
//! pods: their events reach WebSocket subscribers on both pods (from a Rust
//! and a Python client), bad events are dropped and counted, revocation and
//! org deletion cut them, and NATS itself keeps orgs and subjects apart.

use crate::common;

use std::time::Duration;

use common::nats::*;
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::json;
use switchboard_proto::OrgId;

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
    create_org(&a, "initech").await;
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
    create_org(&b, "initech").await;
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

/// Events a publisher sent while no pod was up land once, in order, when
/// pods come back (each takes in what the `PUB` stream kept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_sent_while_no_pod_is_up_land_once_when_pods_return() {
    let nats = Nats::start().await;
    let first = TestServer::start_cluster(&nats, |_| {}).await;
    let made = create_publisher(&first, "acme", json!({"name": "backend"})).await;
    first.stop().await;
    let (nc, _events) = publisher(&nats, &made).await;
    for n in 1..=3 {
        nc.publish("pub.chat.away", json!({"n": n}).to_string().into())
            .await
            .unwrap();
    }
    nc.flush().await.unwrap();
    // Two pods at once: both take the events in, each lands once.
    let a = TestServer::start_cluster(&nats, |_| {}).await;
    let b = TestServer::start_cluster(&nats, |_| {}).await;
    let url = a.url("/v1/orgs/acme/channels/chat.away/history");
    // Each pod imported the test orgs with keys of its own: the last one's hold.
    let key = b.api_key("acme").to_owned();
    eventually("the events reach the history", async || {
        let (_, history) = get(&url, Some(&key)).await;
        history["messages"].as_array().is_some_and(|m| m.len() >= 3)
    })
    .await;
    // Given time to store anything twice, nothing is.
    let mut live = Client::connect_all(&b, "acme").await;
    live.subscribe(1, "chat.away").await;
    nc.publish("pub.chat.away", json!({"n": 4}).to_string().into())
        .await
        .unwrap();
    assert_eq!(live.message().await.1, json!({"n": 4}));
    let (_, history) = get(&url, Some(&key)).await;
    let data: Vec<_> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["data"].clone())
        .collect();
    assert_eq!(
        data,
        (1..=4).map(|n| json!({"n": n})).collect::<Vec<_>>(),
        "{history}"
    );
}

/// An org with publishers stays open on every pod however idle, so its
/// events are taken in as they come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_org_with_publishers_stays_open_when_idle() {
    let nats = Nats::start().await;
    let pod = TestServer::start_cluster(&nats, |c| c.nats.org_idle_secs = Some(1)).await;
    let accounts = pod.app.accounts.as_ref().unwrap();
    accounts.open(&OrgId::new("globex").unwrap()).await.unwrap();
    create_publisher(&pod, "acme", json!({"name": "backend"})).await;
    eventually("the idle org without publishers closes", async || {
        accounts.open_orgs() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(accounts.open_orgs(), 1, "acme, with its publisher, stays open");
}
