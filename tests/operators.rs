//! Operator sessions: minting with atomic role claims, the session's bearer
//! token, its socket (reconnect resumes, a second socket replaces the first),
//! expiry, and routing of client `send` frames to it, within its org only.

use crate::common;

use common::*;
use reqwest::Method;
use serde_json::json;
use switchboard_proto::{ErrorCode, RequestId, ServerFrame};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

#[tokio::test]
async fn mint_refusals() {
    let server = TestServer::start().await;
    let (status, body) = mint(&server, "acme", &["main-ai"]).await;
    assert_eq!(status, 201, "{body}");
    let sid = body["sid"].as_str().unwrap();
    assert!(sid.starts_with("op-") && sid.len() == 39, "{sid}");
    assert!(body["token"].as_str().unwrap().len() >= 43, "at least 256 bits");
    assert_eq!(body["roles"], json!(["main-ai"]));

    let post = |key: Option<&str>, body: &str| {
        let mut req = reqwest::Client::new()
            .post(server.url("/v1/operators"))
            .body(body.to_owned());
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        async move {
            let res = req.send().await.unwrap();
            (
                res.status().as_u16(),
                res.json::<serde_json::Value>().await.unwrap_or_default(),
            )
        }
    };
    let key = Some(server.api_key("acme"));
    for (what, key, body, status, code) in [
        ("no key", None, "{}", 401, "UNAUTHORIZED"),
        ("bad key", Some("sbk.acme.test.nope"), "{}", 401, "UNAUTHORIZED"),
        ("malformed", key, "{", 400, "VALIDATION_ERROR"),
        (
            "bad role",
            key,
            r#"{"roles":["main ai"]}"#,
            400,
            "VALIDATION_ERROR",
        ),
        ("unknown field", key, r#"{"rolez":[]}"#, 400, "VALIDATION_ERROR"),
    ] {
        let (got, reply) = post(key, body).await;
        assert_eq!(
            (got, reply["error"]["code"].as_str().unwrap_or("")),
            (status, code),
            "{what}: {reply}"
        );
    }
    // No body at all: a session without roles.
    assert_eq!(post(key, "").await.0, 201);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_fifty_concurrent_mints_for_a_role_exactly_one_wins() {
    let server = TestServer::start().await;
    let attempts = (0..50).map(|_| mint(&server, "acme", &["main-ai"]));
    let results = futures_util::future::join_all(attempts).await;
    let won = results.iter().filter(|(s, _)| *s == 201).count();
    assert_eq!(won, 1, "{results:?}");
    for (status, body) in results.iter().filter(|(s, _)| *s != 201) {
        assert_eq!(*status, 409);
        assert_eq!(body["error"]["code"], "CONFLICT");
        assert_eq!(body["error"]["roles"], json!(["main-ai"]));
    }
    // Empty roles never conflict; the same role in another org does not either.
    assert_eq!(mint(&server, "acme", &[]).await.0, 201);
    assert_eq!(mint(&server, "acme", &[]).await.0, 201);
    assert_eq!(mint(&server, "globex", &["main-ai"]).await.0, 201);
    // Only the conflicting roles are named.
    let (status, body) = mint(&server, "acme", &["main-ai", "helper"]).await;
    assert_eq!((status, &body["error"]["roles"]), (409, &json!(["main-ai"])));
    server.stop().await;
}

#[tokio::test]
async fn session_status_codes_and_delete_releases_roles() {
    let server = TestServer::start().await;
    let s = mint_ok(&server, "acme", &["main-ai"]).await;
    let (status, body) = session_call(&server, Method::GET, &s.sid, Some(&s.token)).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"sid": s.sid, "roles": ["main-ai"], "connected": false})
    );

    assert_eq!(session_call(&server, Method::GET, &s.sid, None).await.0, 401);
    assert_eq!(session_call(&server, Method::GET, &s.sid, Some("")).await.0, 401);
    assert_eq!(
        session_call(&server, Method::GET, &s.sid, Some("wrong")).await.0,
        401
    );
    let unknown = "op-00000000-0000-4000-8000-000000000000";
    assert_eq!(
        session_call(&server, Method::GET, unknown, Some(&s.token))
            .await
            .0,
        404,
        "unknown before token"
    );
    assert_eq!(session_call(&server, Method::GET, unknown, None).await.0, 404);
    assert_eq!(session_call(&server, Method::GET, "not-a-sid", None).await.0, 404);
    assert_eq!(
        session_call(&server, Method::DELETE, &s.sid, Some("wrong"))
            .await
            .0,
        401
    );

    // The role is held until the session is deleted, then free at once.
    assert_eq!(mint(&server, "acme", &["main-ai"]).await.0, 409);
    assert_eq!(
        session_call(&server, Method::DELETE, &s.sid, Some(&s.token))
            .await
            .0,
        204
    );
    assert_eq!(
        session_call(&server, Method::GET, &s.sid, Some(&s.token)).await.0,
        404
    );
    assert_eq!(
        session_call(&server, Method::DELETE, &s.sid, Some(&s.token))
            .await
            .0,
        404
    );
    assert_eq!(mint(&server, "acme", &["main-ai"]).await.0, 201);
    server.stop().await;
}

#[tokio::test]
async fn operator_socket_refusals_happen_before_the_upgrade() {
    let server = TestServer::start().await;
    let s = mint_ok(&server, "acme", &[]).await;
    let url = |sid: &str| format!("ws://{}/v1/operators/{sid}/ws", server.addr);
    assert_eq!(
        refused_status(upgrade_request(&url(&s.sid), &[])).await,
        401,
        "no bearer"
    );
    assert_eq!(
        refused_status(upgrade_request(&url(&s.sid), &[("authorization", "Bearer nope")])).await,
        401
    );
    let unknown = "op-00000000-0000-4000-8000-000000000000";
    let bearer = format!("Bearer {}", s.token);
    assert_eq!(
        refused_status(upgrade_request(
            &url(unknown),
            &[("authorization", bearer.as_str())]
        ))
        .await,
        404
    );
    // A client token is not an operator token.
    let client_token = format!("Bearer {}", token("acme", "a", &[">"], &[">"]));
    assert_eq!(
        refused_status(upgrade_request(
            &url(&s.sid),
            &[("authorization", client_token.as_str())]
        ))
        .await,
        401
    );
    server.stop().await;
}

#[tokio::test]
async fn client_frames_reach_the_role_holder_and_only_in_its_org() {
    let server = TestServer::start().await;
    let s = mint_ok(&server, "acme", &["main-ai"]).await;
    let mut op = Client::operator(&server, &s).await;
    let (status, body) = session_call(&server, Method::GET, &s.sid, Some(&s.token)).await;
    assert_eq!((status, &body["connected"]), (200, &json!(true)));

    let mut alice = Client::connect(&server, &token("acme", "alice", &["chat.>"], &[])).await;
    alice.send(json!({"type": "send", "id": 1, "to": "role:main-ai", "reply_to": "chat.9", "data": {"text": "hi"}})).await;
    assert!(matches!(alice.next().await, ServerFrame::Ack(a) if a.id == RequestId::Num(1)));
    let frame = op.next().await.to_json();
    assert!(frame.starts_with(r#"{"type":"frame","from":{"conn":"#), "{frame}");
    assert!(
        frame.ends_with(r#","sub":"alice"},"reply_to":"chat.9","data":{"text":"hi"}}"#),
        "{frame}"
    );
    // By sid as well; a cancel is just a frame for the operator.
    alice.send(json!({"type": "send", "id": 2, "to": format!("op:{}", s.sid), "data": {"type": "cancel", "turn": "t1"}})).await;
    alice.ack(2).await;
    match op.next().await {
        ServerFrame::Frame { data, .. } => {
            assert_eq!(
                serde_json::from_str::<serde_json::Value>(data.get()).unwrap(),
                json!({"type": "cancel", "turn": "t1"})
            )
        }
        other => panic!("{}", other.to_json()),
    }

    // Refusals: unknown role, a reply channel it may not read, another org's role.
    alice
        .send(json!({"type": "send", "id": 3, "to": "role:nobody", "data": 1}))
        .await;
    assert_eq!(
        alice.error().await,
        (Some(RequestId::Num(3)), ErrorCode::NotFound)
    );
    alice
        .send(json!({"type": "send", "id": 4, "to": "role:main-ai", "reply_to": "secret", "data": 1}))
        .await;
    assert_eq!(
        alice.error().await,
        (Some(RequestId::Num(4)), ErrorCode::Forbidden)
    );
    let mut mallory = Client::connect_all(&server, "globex").await;
    mallory
        .send(json!({"type": "send", "id": 5, "to": "role:main-ai", "data": "hello from globex"}))
        .await;
    assert_eq!(
        mallory.error().await,
        (Some(RequestId::Num(5)), ErrorCode::NotFound)
    );
    mallory
        .send(json!({"type": "send", "id": 6, "to": format!("op:{}", s.sid), "data": 1}))
        .await;
    assert_eq!(
        mallory.error().await,
        (Some(RequestId::Num(6)), ErrorCode::NotFound)
    );
    // Grants decide who may send at all.
    let no_send = switchboard::auth::ClientClaims {
        sub: "bob".into(),
        org: "acme".into(),
        exp: switchboard::auth::now_secs() + 60,
        iat: None,
        jti: None,
        subscribe: vec![],
        publish: vec![],
        send: vec![switchboard_proto::TargetPattern::parse("role:other").unwrap()],
    };
    let mut bob = Client::connect(
        &server,
        &switchboard::auth::sign_hs256(&secret("acme"), &no_send).unwrap(),
    )
    .await;
    bob.send(json!({"type": "send", "id": 7, "to": "role:main-ai", "data": 1}))
        .await;
    assert_eq!(bob.error().await, (Some(RequestId::Num(7)), ErrorCode::Forbidden));
    op.ping(99).await; // nothing else reached the operator
    server.stop().await;
}

#[tokio::test]
async fn a_reconnecting_operator_gets_what_arrived_while_it_was_away() {
    let server = TestServer::start().await;
    let s = mint_ok(&server, "acme", &["main-ai"]).await;
    let op = Client::operator(&server, &s).await;
    drop(op);
    let mut alice = Client::connect_all(&server, "acme").await;
    eventually("the session sees its socket gone", async || {
        session_call(&server, Method::GET, &s.sid, Some(&s.token)).await.1["connected"] == json!(false)
    })
    .await;
    for n in 1..=3 {
        alice
            .send(json!({"type": "send", "id": n, "to": "role:main-ai", "data": n}))
            .await;
        alice.ack(n).await;
    }
    let mut op = Client::operator(&server, &s).await;
    for n in 1..=3 {
        assert!(
            op.next().await.to_json().ends_with(&format!(r#""data":{n}}}"#)),
            "frame {n} in order"
        );
    }
    op.ping(9).await;
    server.stop().await;
}

#[tokio::test]
async fn a_second_socket_replaces_the_first() {
    let server = TestServer::start().await;
    let s = mint_ok(&server, "acme", &["main-ai"]).await;
    let mut first = Client::operator(&server, &s).await;
    let mut second = Client::operator(&server, &s).await;
    let close = first.closed().await.expect("a close frame");
    assert_eq!(close.code, CloseCode::from(4009));
    let mut alice = Client::connect_all(&server, "acme").await;
    alice
        .send(json!({"type": "send", "id": 1, "to": "role:main-ai", "data": "to the new one"}))
        .await;
    alice.ack(1).await;
    assert!(second.next().await.to_json().contains("to the new one"));
    server.stop().await;
}

/// Paused time: the two-minute expiry passes in milliseconds.
#[tokio::test(start_paused = true)]
async fn sessions_without_a_socket_expire_and_free_their_roles() {
    let server = TestServer::start().await; // sessions expire 120 s after their socket went
    let s = mint_ok(&server, "acme", &["main-ai"]).await;
    let op = Client::operator(&server, &s).await;
    drop(op);
    eventually("the session sees its socket gone", async || {
        session_call(&server, Method::GET, &s.sid, Some(&s.token)).await.1["connected"] == json!(false)
    })
    .await;
    let gone = tokio::time::Instant::now();
    tokio::time::sleep(std::time::Duration::from_secs(119)).await;
    assert_eq!(
        session_call(&server, Method::GET, &s.sid, Some(&s.token)).await.0,
        200,
        "alive until its expiry"
    );
    assert_eq!(
        mint(&server, "acme", &["main-ai"]).await.0,
        409,
        "its role is still held"
    );
    eventually("the session expires", async || {
        session_call(&server, Method::GET, &s.sid, Some(&s.token)).await.0 == 404
    })
    .await;
    assert!(gone.elapsed() >= std::time::Duration::from_secs(120));
    assert_eq!(mint(&server, "acme", &["main-ai"]).await.0, 201);
    server.stop().await;
}

#[tokio::test]
async fn a_full_buffer_refuses_senders_and_tells_the_operator() {
    // Room for two of the frames below (~92 bytes each, as queues count them), not three.
    let server = TestServer::start_with(|c| c.operators.buffer_bytes = Some(200)).await;
    let s = mint_ok(&server, "acme", &["main-ai"]).await;
    let mut alice = Client::connect_all(&server, "acme").await;
    for n in 1..=2 {
        alice
            .send(json!({"type": "send", "id": n, "to": "role:main-ai", "data": n}))
            .await;
        alice.ack(n).await;
    }
    alice
        .send(json!({"type": "send", "id": 3, "to": "role:main-ai", "data": 3}))
        .await;
    assert_eq!(
        alice.error().await,
        (Some(RequestId::Num(3)), ErrorCode::Unavailable)
    );
    let mut op = Client::operator(&server, &s).await;
    assert!(op.next().await.to_json().ends_with(r#""data":1}"#));
    assert!(op.next().await.to_json().ends_with(r#""data":2}"#));
    assert_eq!(op.next().await.to_json(), r#"{"type":"gap","dropped":1}"#);
    server.stop().await;
}

#[tokio::test]
async fn the_org_lists_its_sessions() {
    let server = TestServer::start().await;
    let a = mint_ok(&server, "acme", &["main-ai"]).await;
    let _b = mint_ok(&server, "acme", &[]).await;
    let _other = mint_ok(&server, "globex", &["main-ai"]).await;
    let _op = Client::operator(&server, &a).await;
    let res = reqwest::Client::new()
        .get(server.url("/v1/operators"))
        .bearer_auth(server.api_key("acme"))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = res.json().await.unwrap();
    let sessions = body["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2, "{body}");
    let a_entry = sessions.iter().find(|x| x["sid"] == a.sid).unwrap();
    assert_eq!(
        (&a_entry["roles"], &a_entry["connected"]),
        (&json!(["main-ai"]), &json!(true))
    );
    assert!(sessions.iter().any(|x| x["connected"] == json!(false)));
    let res = reqwest::Client::new()
        .get(server.url("/v1/operators"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    server.stop().await;
}
