//! Operator roles and sessions across pods (cluster mode, a real
//! nats-server): a role is held once cluster-wide, a client on one pod
//! reaches an operator on another by role or by sid, an operator back on
//! any pod gets what was sent while it was away (also when its pod died),
//! and a crashed pod's role comes free after its lease.

use crate::common;

use common::nats::*;
use common::*;
use serde_json::json;
use switchboard_proto::{ErrorCode, RequestId, ServerFrame};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_mints_for_one_role_over_three_pods_give_one_session() {
    let nats = Nats::start().await;
    let pods = std::sync::Arc::new(cluster(&nats, 3, |_| {}).await);
    let mut mints = Vec::new();
    for i in 0..50 {
        let pods = pods.clone();
        mints.push(tokio::spawn(async move {
            mint(&pods[i % 3], "acme", &["main-ai"]).await
        }));
    }
    let mut statuses = Vec::new();
    for m in mints {
        let (status, body) = m.await.unwrap();
        if status == 409 {
            assert_eq!(body["error"]["roles"], json!(["main-ai"]), "{body}");
        }
        statuses.push(status);
    }
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 49, "{statuses:?}");
    // Other roles, and the same role in another org, are free.
    mint_ok(&pods[1], "acme", &["helper"]).await;
    mint_ok(&pods[2], "globex", &["main-ai"]).await;
}

/// A client's `send` of `data` to `to`, acknowledged.
async fn sent(client: &mut Client, id: u64, to: impl std::fmt::Display, data: serde_json::Value) {
    client
        .send(json!({"type": "send", "id": id, "to": to.to_string(), "data": data}))
        .await;
    client.ack(id).await;
}

/// Expects the operator to get `frame`s data `data`.
async fn receives(op: &mut Client, data: serde_json::Value) {
    match op.next().await {
        ServerFrame::Frame { data: got, .. } => {
            assert_eq!(
                serde_json::from_str::<serde_json::Value>(got.get()).unwrap(),
                data
            )
        }
        other => panic!("expected a frame, got {}", other.to_json()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_on_one_pod_reaches_an_operator_on_another_by_role_and_by_sid() {
    let nats = Nats::start().await;
    let pods = cluster(&nats, 3, |_| {}).await;
    let session = mint_ok(&pods[0], "acme", &["main-ai"]).await;
    let mut op = Client::operator(&pods[0], &session).await;
    let mut client = Client::connect_all(&pods[1], "acme").await;
    client
        .send(json!({"type": "send", "id": 1, "to": "role:main-ai", "reply_to": "replies.1", "data": {"q": "hi"}}))
        .await;
    client.ack(1).await;
    receives(&mut op, json!({"q": "hi"})).await;
    let mut other = Client::connect_all(&pods[2], "acme").await;
    let to = format!("op:{}", session.sid);
    sent(&mut other, 2, &to, json!({"q": "by sid"})).await;
    receives(&mut op, json!({"q": "by sid"})).await;
    // Nobody holds the role, nowhere; another org's operator is not reachable.
    other
        .send(json!({"type": "send", "id": 3, "to": "role:nobody", "data": 1}))
        .await;
    assert_eq!(
        other.error().await,
        (Some(RequestId::Num(3)), ErrorCode::NotFound)
    );
    let mut globex = Client::connect_all(&pods[1], "globex").await;
    globex
        .send(json!({"type": "send", "id": 4, "to": "role:main-ai", "data": 1}))
        .await;
    assert_eq!(
        globex.error().await,
        (Some(RequestId::Num(4)), ErrorCode::NotFound)
    );
    globex
        .send(json!({"type": "send", "id": 5, "to": to, "data": 1}))
        .await;
    assert_eq!(
        globex.error().await,
        (Some(RequestId::Num(5)), ErrorCode::NotFound)
    );
    // Ended on its pod: its role is free on every pod at once.
    let (status, _) = session_call(
        &pods[0],
        reqwest::Method::DELETE,
        &session.sid,
        Some(&session.token),
    )
    .await;
    assert_eq!(status, 204);
    eventually("the role comes free", async || {
        mint(&pods[2], "acme", &["main-ai"]).await.0 == 201
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_role_of_a_pod_killed_with_its_session_comes_free_after_its_lease() {
    let nats = Nats::start().await;
    let lease = |c: &mut switchboard::config::FileConfig| c.nats.role_lease_secs = Some(2);
    let processes = ProcessPods::new(&nats, lease);
    let mut doomed = processes.serve();
    assert_eq!(processes.mint(&doomed, "acme", &["main-ai"]).await.0, 201);
    let mut pods = cluster(&nats, 1, lease).await;
    let survivor = pods.remove(0);
    assert_eq!(
        mint(&survivor, "acme", &["main-ai"]).await.0,
        409,
        "held by the other pod"
    );
    doomed.child.kill().unwrap();
    let killed = std::time::Instant::now();
    eventually("the role comes free", async || {
        mint(&survivor, "acme", &["main-ai"]).await.0 == 201
    })
    .await;
    let took = killed.elapsed();
    assert!(
        took >= std::time::Duration::from_secs(1),
        "not before the lease ran out ({took:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_counts_subscribers_on_every_pod() {
    let nats = Nats::start().await;
    let pods = cluster(&nats, 3, |_| {}).await;
    let mut clients = Vec::new();
    for (pod, sub) in [(0, "alice"), (1, "bob"), (2, "alice")] {
        let mut c = Client::connect(&pods[pod], &token("acme", sub, &[">"], &[])).await;
        c.subscribe(1, "room").await;
        clients.push(c);
    }
    // Pods answer within a window: a loaded machine may need a second ask.
    let url = pods[1].url("/v1/orgs/acme/channels/room/presence");
    let mut body = serde_json::Value::Null;
    eventually("every pod answers", async || {
        let (status, answer) = get(&url, Some(pods[1].api_key("acme"))).await;
        assert_eq!(status, 200, "{answer}");
        body = answer;
        body["pods"] == 3
    })
    .await;
    assert_eq!(
        body["subscribers"],
        json!([{"sub": "alice", "connections": 2}, {"sub": "bob", "connections": 1}])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_that_reconnects_to_another_pod_takes_its_session_and_role_along() {
    let nats = Nats::start().await;
    let pods = cluster(&nats, 3, |_| {}).await;
    let session = mint_ok(&pods[0], "acme", &["main-ai"]).await;
    drop(Client::operator(&pods[0], &session).await);
    // Back, through another pod (a load balancer's choice).
    let mut op = Client::operator(&pods[1], &session).await;
    let mut client = Client::connect_all(&pods[2], "acme").await;
    sent(&mut client, 1, "role:main-ai", json!({"q": "moved?"})).await;
    receives(&mut op, json!({"q": "moved?"})).await;
    // The first pod let it go (asked there, the new host answers: its
    // operator is connected); the role is still held, once.
    eventually("the first pod lets the session go", async || {
        let (status, info) =
            session_call(&pods[0], reqwest::Method::GET, &session.sid, Some(&session.token)).await;
        status == 200 && info["connected"] == json!(true)
    })
    .await;
    assert_eq!(mint(&pods[0], "acme", &["main-ai"]).await.0, 409);
    // A wrong token moves nothing.
    let forged = Session {
        sid: session.sid.clone(),
        token: "sbo.wrong".into(),
    };
    let refused = tokio_tungstenite::connect_async(operator_request(&pods[2], &forged)).await;
    assert!(refused.is_err(), "a wrong token is refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_whose_pod_was_killed_resumes_its_session_on_another() {
    let nats = Nats::start().await;
    let processes = ProcessPods::new(&nats, |_| {});
    let mut doomed = processes.serve();
    let session = processes.mint_ok(&doomed, "acme", &["main-ai"]).await;
    let survivor = cluster(&nats, 1, |_| {}).await.remove(0);
    let mut client = Client::connect_all(&survivor, "acme").await;
    let to = format!("op:{}", session.sid);
    // Sent while its operator is away: the doomed pod parks it.
    sent(&mut client, 1, &to, json!("before")).await;
    doomed.child.kill().unwrap();
    doomed.child.wait().unwrap();
    // Nobody hosts it now: the sender's pod parks it for the session.
    sent(&mut client, 2, &to, json!("after")).await;
    let mut op = Client::operator(&survivor, &session).await;
    receives(&mut op, json!("before")).await;
    receives(&mut op, json!("after")).await;
    sent(&mut client, 3, "role:main-ai", json!("still here?")).await;
    receives(&mut op, json!("still here?")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_away_gets_what_was_sent_meanwhile_on_the_pod_it_comes_back_to() {
    let nats = Nats::start().await;
    let pods = cluster(&nats, 3, |_| {}).await;
    let session = mint_ok(&pods[0], "acme", &["main-ai"]).await;
    drop(Client::operator(&pods[0], &session).await);
    let mut client = Client::connect_all(&pods[2], "acme").await;
    for i in 1..=20 {
        sent(&mut client, i, "role:main-ai", json!(i)).await;
    }
    let mut op = Client::operator(&pods[1], &session).await;
    for i in 1..=20 {
        receives(&mut op, json!(i)).await;
    }
    sent(&mut client, 21, "role:main-ai", json!("live")).await;
    receives(&mut op, json!("live")).await;
    // Taken once: back on the first pod, nothing is handed over again.
    drop(op);
    let mut op = Client::operator(&pods[0], &session).await;
    sent(&mut client, 22, "role:main-ai", json!("next")).await;
    receives(&mut op, json!("next")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_inspected_listed_and_ended_through_any_pod() {
    let nats = Nats::start().await;
    let pods = cluster(&nats, 3, |_| {}).await;
    let session = mint_ok(&pods[0], "acme", &["main-ai"]).await;
    let mut op = Client::operator(&pods[0], &session).await;
    let (status, info) =
        session_call(&pods[1], reqwest::Method::GET, &session.sid, Some(&session.token)).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["connected"], json!(true), "{info}");
    assert_eq!(info["roles"], json!(["main-ai"]), "{info}");
    let wrong = session_call(&pods[1], reqwest::Method::DELETE, &session.sid, Some("sbo.wrong")).await;
    assert_eq!(wrong.0, 401, "{}", wrong.1);
    // Listed on a pod that hosts none of the org's sessions; not by another org.
    let (status, list) = call(
        &pods[2],
        reqwest::Method::GET,
        "/v1/operators",
        Some(pods[2].api_key("acme")),
        None,
    )
    .await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["sessions"][0]["sid"], json!(session.sid), "{list}");
    let (_, other) = call(
        &pods[2],
        reqwest::Method::GET,
        "/v1/operators",
        Some(pods[2].api_key("globex")),
        None,
    )
    .await;
    assert_eq!(other["sessions"], json!([]), "{other}");
    // Ended through another pod: its socket closes, its role is free.
    let (status, body) = session_call(
        &pods[2],
        reqwest::Method::DELETE,
        &session.sid,
        Some(&session.token),
    )
    .await;
    assert_eq!(status, 204, "{body}");
    let closed = op.closed().await.expect("a close frame");
    assert_eq!(
        u16::from(closed.code),
        switchboard_proto::ws::close::SESSION_ENDED
    );
    assert_eq!(mint(&pods[1], "acme", &["main-ai"]).await.0, 201);
    assert_eq!(
        session_call(&pods[1], reqwest::Method::GET, &session.sid, Some(&session.token))
            .await
            .0,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_pod_was_killed_is_ended_through_another_at_once() {
    let nats = Nats::start().await;
    let processes = ProcessPods::new(&nats, |_| {});
    let mut doomed = processes.serve();
    let session = processes.mint_ok(&doomed, "acme", &["main-ai"]).await;
    let (sid, token) = (session.sid.as_str(), session.token.as_str());
    let survivor = cluster(&nats, 1, |_| {}).await.remove(0);
    doomed.child.kill().unwrap();
    doomed.child.wait().unwrap();
    let (status, info) = session_call(&survivor, reqwest::Method::GET, sid, Some(token)).await;
    assert_eq!((status, &info["connected"]), (200, &json!(false)), "{info}");
    assert_eq!(
        session_call(&survivor, reqwest::Method::DELETE, sid, Some(token))
            .await
            .0,
        204
    );
    // Its role is free now, not a lease later (10 s).
    assert_eq!(mint(&survivor, "acme", &["main-ai"]).await.0, 201);
    assert_eq!(
        session_call(&survivor, reqwest::Method::GET, sid, Some(token))
            .await
            .0,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_outlives_the_graceful_shutdown_of_its_pod() {
    let nats = Nats::start().await;
    let processes = ProcessPods::new(&nats, |_| {});
    let mut leaving = processes.serve();
    let session = processes.mint_ok(&leaving, "acme", &["main-ai"]).await;
    let staying = cluster(&nats, 1, |_| {}).await.remove(0);
    let mut client = Client::connect_all(&staying, "acme").await;
    sent(&mut client, 1, "role:main-ai", json!("while you were out")).await;
    // A rollout: the pod hosting it is told to stop, and stops.
    common::process::sigterm(&leaving.child);
    assert!(common::process::wait_exit(&mut leaving.child).success());
    let mut op = Client::operator(&staying, &session).await;
    receives(&mut op, json!("while you were out")).await;
    assert_eq!(
        mint(&staying, "acme", &["main-ai"]).await.0,
        409,
        "its role moved with it"
    );
}

/// An operator whose socket drops mid-turn and comes back through another
/// pod finishes the turn there: the old host hands the turn over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_goes_on_when_its_operator_comes_back_through_another_pod() {
    let nats = Nats::start().await;
    let pods = cluster(&nats, 3, |_| {}).await;
    let mut watcher = Client::connect_all(&pods[2], "acme").await;
    watcher.subscribe(1, "chat.t").await;
    let session = mint_ok(&pods[0], "acme", &["main-ai"]).await;
    let mut op = Client::operator(&pods[0], &session).await;
    op.send(json!({"type": "turn_start", "id": 1, "turn": "t1", "channel": "chat.t", "rollup_ms": 0}))
        .await;
    op.ack(1).await;
    for text in ["Hel", "lo "] {
        op.send(json!({"type": "token", "turn": "t1", "text": text}))
            .await;
    }
    // The tokens are stored before the socket goes (a ping answered after them).
    op.send(json!({"type": "ping", "id": 2})).await;
    while !matches!(op.next().await, ServerFrame::Pong { .. }) {}
    drop(op);
    let mut op = Client::operator(&pods[1], &session).await;
    op.send(json!({"type": "token", "turn": "t1", "text": "there"}))
        .await;
    op.send(json!({"type": "turn_end", "id": 3, "turn": "t1"})).await;
    op.ack(3).await;
    let mut text = String::new();
    loop {
        match watcher.channel_event().await {
            ServerFrame::TurnStart { .. } => {}
            ServerFrame::Token { text: t, .. } => text.push_str(&t),
            ServerFrame::TurnEnd { .. } => break,
            other => panic!("the turn goes on, got {}", other.to_json()),
        }
    }
    assert_eq!(text, "Hello there");
}
