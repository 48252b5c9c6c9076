//! The admin API over real HTTP: orgs (admin token), users (idempotent),
//! scoped API keys, ticket keys and the audit log; cross-org attempts,
//! revocation, and a registry that survives a restart.

use crate::common;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use switchboard::auth::{ClientClaims, now_secs, sign_hs256};
use switchboard_proto::ChannelPattern;

/// One request; returns (status, JSON body or null).
fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

fn client_token(org: &str, secret: &str) -> String {
    sign_hs256(
        secret,
        &ClientClaims {
            sub: "alice".into(),
            org: org.into(),
            exp: now_secs() + 600,
            iat: None,
            jti: None,
            subscribe: vec![ChannelPattern::new(">").unwrap()],
            publish: vec![],
            send: vec![],
        },
    )
    .unwrap()
}

#[tokio::test]
async fn org_lifecycle_with_the_admin_token() {
    let server = TestServer::start().await;
    let made = create_org(&server, "initech").await;
    assert_eq!(
        (made["id"].as_str(), made["name"].as_str()),
        (Some("initech"), Some("Initech"))
    );
    let secret = made["hs256_secret"].as_str().unwrap().to_owned();

    // The generated secret signs client tokens that connect at once.
    let mut client = Client::connect(&server, &client_token("initech", &secret)).await;
    client.subscribe(1, "chat.1").await;

    let (status, body) = call(
        &server,
        Method::POST,
        "/v1/orgs",
        Some(ADMIN_TOKEN),
        Some(json!({"id": "initech"})),
    )
    .await;
    assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "CONFLICT"));
    for (bearer, want) in [
        (None, StatusCode::UNAUTHORIZED),
        (Some("wrong"), StatusCode::UNAUTHORIZED),
    ] {
        let (status, _) = call(
            &server,
            Method::POST,
            "/v1/orgs",
            bearer,
            Some(json!({"id": "x"})),
        )
        .await;
        assert_eq!(status, want);
    }
    // An org key, even with every scope, does not manage orgs.
    let (status, _) = call(
        &server,
        Method::GET,
        "/v1/orgs",
        Some(server.api_key("acme")),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    for bad in [
        json!({"id": "a b"}),
        json!({"name": "no id"}),
        json!({"id": "x", "extra": 1}),
    ] {
        let (status, body) = call(&server, Method::POST, "/v1/orgs", Some(ADMIN_TOKEN), Some(bad)).await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::BAD_REQUEST, "VALIDATION_ERROR")
        );
    }
    let res = reqwest::Client::new()
        .post(server.url("/v1/orgs"))
        .bearer_auth(ADMIN_TOKEN)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);

    let (_, list) = call(&server, Method::GET, "/v1/orgs", Some(ADMIN_TOKEN), None).await;
    let ids: Vec<&str> = list["orgs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["id"].as_str())
        .collect();
    assert_eq!(ids, vec!["acme", "globex", "initech"], "config orgs are imported");
    let (status, org) = call(&server, Method::GET, "/v1/orgs/initech", Some(ADMIN_TOKEN), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(org["jwt_keys"], json!([{"alg": "HS256", "kid": null}]));
    assert!(!org.to_string().contains(&secret), "no secret in a read");
    let (status, _) = call(&server, Method::GET, "/v1/orgs/nobody", Some(ADMIN_TOKEN), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Something to forget: a message in its history, an operator session.
    let (_, key) = call(
        &server,
        Method::POST,
        "/v1/orgs/initech/keys",
        Some(ADMIN_TOKEN),
        Some(json!({})),
    )
    .await;
    let res = reqwest::Client::new()
        .post(server.url("/v1/orgs/initech/channels/chat.1/publish"))
        .bearer_auth(key["key"].as_str().unwrap())
        .json(&json!({"data": "kept until the org goes"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let (status, op) = call(
        &server,
        Method::POST,
        "/v1/operators",
        key["key"].as_str(),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let op_path = format!("/v1/operators/{}", op["sid"].as_str().unwrap());

    // Deleting the org closes its clients at once, with a code that says not to retry.
    let (status, _) = call(
        &server,
        Method::DELETE,
        "/v1/orgs/initech",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let close = client.closed().await.unwrap();
    assert_eq!(u16::from(close.code), 4003);
    let (status, _) = call(&server, Method::GET, "/v1/orgs/initech", Some(ADMIN_TOKEN), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let refused = connect_ws(server.ws_url(&client_token("initech", &secret))).await;
    assert!(refused.is_err(), "its tokens no longer connect");
    let (status, _) = call(&server, Method::GET, &op_path, op["token"].as_str(), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "its operator sessions ended");
    let (status, _) = call(
        &server,
        Method::DELETE,
        "/v1/orgs/initech",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // An org made again under the same id starts with nothing of the old one.
    create_org(&server, "initech").await;
    let (_, key) = call(
        &server,
        Method::POST,
        "/v1/orgs/initech/keys",
        Some(ADMIN_TOKEN),
        Some(json!({})),
    )
    .await;
    let path = "/v1/orgs/initech/channels/chat.1/history";
    let (status, history) = call(&server, Method::GET, path, key["key"].as_str(), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        history["messages"],
        json!([]),
        "the deleted org's history is gone"
    );
    server.stop().await;
}

#[tokio::test]
async fn users_are_created_once_and_their_roles_decide() {
    let server = TestServer::start().await;
    let path = "/v1/orgs/acme/users";
    let (status, first) = call(
        &server,
        Method::POST,
        path,
        Some(ADMIN_TOKEN),
        Some(json!({"username": "owner@acme.test", "role": "owner"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(
        (first["created"].as_bool(), first["token_set"].as_bool()),
        (Some(true), Some(true))
    );
    let password = first["initial_password"].as_str().unwrap();
    assert_eq!(password.len(), 32);
    assert!(password.bytes().all(|b| b.is_ascii_alphanumeric()));
    let owner_token = first["token"].as_str().unwrap().to_owned();

    let (status, again) = call(
        &server,
        Method::POST,
        path,
        Some(ADMIN_TOKEN),
        Some(json!({"username": "owner@acme.test", "role": "owner"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["user_id"], first["user_id"]);
    assert_eq!(again["created"], json!(false));
    assert!(
        again.get("initial_password").is_none() && again.get("token").is_none(),
        "secrets once"
    );

    // The owner manages users; a member only reads.
    let (status, member) = call(
        &server,
        Method::POST,
        path,
        Some(&owner_token),
        Some(json!({"username": "bob"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let member_token = member["token"].as_str().unwrap().to_owned();
    let (status, list) = call(&server, Method::GET, path, Some(&member_token), None).await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = list["users"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["username"].as_str())
        .collect();
    assert_eq!(names, vec!["bob", "owner@acme.test"]);
    let (status, body) = call(
        &server,
        Method::POST,
        path,
        Some(&member_token),
        Some(json!({"username": "eve"})),
    )
    .await;
    assert_eq!((status, code(&body)), (StatusCode::FORBIDDEN, "FORBIDDEN"));
    let (status, page) = call(
        &server,
        Method::GET,
        &format!("{path}?limit=1"),
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (page["users"].as_array().unwrap().len(), page["next"].as_str()),
        (1, Some("bob"))
    );

    // Another org's users and keys get nowhere here.
    let (status, _) = call(
        &server,
        Method::GET,
        "/v1/orgs/globex/users",
        Some(&owner_token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = call(&server, Method::GET, path, Some(server.api_key("globex")), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // An org key without the admin scope is refused; with it, it manages users.
    let (status, key) = call(
        &server,
        Method::POST,
        "/v1/orgs/acme/keys",
        Some(ADMIN_TOKEN),
        Some(json!({"scopes": ["publish"]})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = call(
        &server,
        Method::GET,
        path,
        Some(key["key"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = call(&server, Method::GET, path, Some(server.api_key("acme")), None).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "an org key with the admin scope manages users"
    );

    let bob = member["user_id"].as_str().unwrap();
    let (status, got) = call(
        &server,
        Method::GET,
        &format!("{path}/{bob}"),
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!((status, got["username"].as_str()), (StatusCode::OK, Some("bob")));
    let (status, _) = call(
        &server,
        Method::DELETE,
        &format!("{path}/{bob}"),
        Some(&owner_token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = call(&server, Method::GET, path, Some(&member_token), None).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a deleted user's token is refused"
    );
    let (status, _) = call(
        &server,
        Method::GET,
        &format!("{path}/{bob}"),
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = call(
        &server,
        Method::POST,
        path,
        Some(ADMIN_TOKEN),
        Some(json!({"username": ""})),
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "VALIDATION_ERROR")
    );
    let (status, _) = call(
        &server,
        Method::POST,
        "/v1/orgs/nobody/users",
        Some(ADMIN_TOKEN),
        Some(json!({"username": "x"})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    server.stop().await;
}

#[tokio::test]
async fn keys_are_scoped_shown_once_and_revoked_at_once() {
    let server = TestServer::start().await;
    let (status, made) = call(
        &server,
        Method::POST,
        "/v1/orgs/acme/keys",
        Some(ADMIN_TOKEN),
        Some(json!({"name": "backend", "scopes": ["publish"]})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let key = made["key"].as_str().unwrap().to_owned();
    let id = made["id"].as_str().unwrap().to_owned();
    assert!(key.starts_with(&format!("sbk.acme.{id}.")));
    let publish = |bearer: String| {
        let url = server.url("/v1/orgs/acme/channels/news/publish");
        async move {
            reqwest::Client::new()
                .post(url)
                .bearer_auth(bearer)
                .json(&json!({"data": 1}))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(publish(key.clone()).await, StatusCode::OK);
    let history = reqwest::Client::new()
        .get(server.url("/v1/orgs/acme/channels/news/history"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(history.status(), StatusCode::FORBIDDEN, "scoped to publish");
    let (_, list) = call(
        &server,
        Method::GET,
        "/v1/orgs/acme/keys",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert!(
        list["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["id"] == json!(id))
    );
    assert!(
        !list.to_string().contains(key.rsplit('.').next().unwrap()),
        "never the secret again"
    );

    let (status, _) = call(
        &server,
        Method::DELETE,
        &format!("/v1/orgs/acme/keys/{id}"),
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        publish(key).await,
        StatusCode::UNAUTHORIZED,
        "refused on the next request"
    );
    let (status, _) = call(
        &server,
        Method::DELETE,
        &format!("/v1/orgs/acme/keys/{id}"),
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(
        &server,
        Method::DELETE,
        "/v1/orgs/acme/keys/a.b",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = call(
        &server,
        Method::POST,
        "/v1/orgs/acme/keys",
        Some(ADMIN_TOKEN),
        Some(json!({"scopes": ["root"]})),
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "VALIDATION_ERROR")
    );

    let (_, audit) = call(
        &server,
        Method::GET,
        "/v1/orgs/acme/audit",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    let actions: Vec<(&str, &str)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["actor"].as_str().unwrap()))
        .collect();
    assert_eq!(actions, vec![("key.create", "admin"), ("key.revoke", "admin")]);
    server.stop().await;
}

#[tokio::test]
async fn tickets_verify_across_a_rotation_and_a_restart() {
    let data = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let server = TestServer::start_in(data.clone(), |_| {}).await;
    let mint = |server: &TestServer| {
        let url = server.url("/v1/orgs/acme/tickets");
        let key = server.api_key("acme").to_owned();
        async move {
            let res = reqwest::Client::new()
                .post(url)
                .bearer_auth(key)
                .json(&json!({"sub": "t", "subscribe": [">"], "ttl_s": 600}))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::CREATED);
            res.json::<Value>().await.unwrap()["ticket"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let before = mint(&server).await;
    let (status, rotated) = call(
        &server,
        Method::POST,
        "/v1/orgs/acme/ticket-keys",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let after = mint(&server).await;
    assert!(
        after.starts_with(&format!("sbt2.acme.{}.", rotated["id"].as_str().unwrap())),
        "the new key signs"
    );
    let ticket_url = |server: &TestServer, t: &str| format!("ws://{}/v1/ws?ticket={t}", server.addr);
    for t in [&before, &after] {
        let mut c = Client::connect_url(&ticket_url(&server, t)).await;
        c.ping(1).await;
    }
    // Another org's ticket under acme's name does not verify.
    let globex_ticket = reqwest::Client::new()
        .post(server.url("/v1/orgs/globex/tickets"))
        .bearer_auth(server.api_key("globex"))
        .json(&json!({"sub": "t"}))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["ticket"]
        .as_str()
        .unwrap()
        .replace("sbt2.globex.", "sbt2.acme.");
    let forged = format!("{}x", &after[..after.len() - 1]);
    for bad in [globex_ticket.as_str(), &forged, "sbt2.acme.k.e30.1.AAAA"] {
        let err = connect_ws(ticket_url(&server, bad)).await.unwrap_err();
        assert!(err.to_string().contains("401"), "{err}");
    }
    server.stop().await;

    // A restart keeps the keys: tickets minted before it still connect.
    let server = TestServer::start_in(data, |_| {}).await;
    let mut c = Client::connect_url(&ticket_url(&server, &after)).await;
    c.ping(2).await;
    server.stop().await;
}

#[tokio::test]
async fn what_the_api_made_survives_a_restart() {
    let data = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let server = TestServer::start_in(data.clone(), |_| {}).await;
    let made = create_org(&server, "initech").await;
    let secret = made["hs256_secret"].as_str().unwrap().to_owned();
    let (_, user) = call(
        &server,
        Method::POST,
        "/v1/orgs/initech/users",
        Some(ADMIN_TOKEN),
        Some(json!({"username": "ann", "role": "admin"})),
    )
    .await;
    let user_token = user["token"].as_str().unwrap().to_owned();
    let (_, key) = call(
        &server,
        Method::POST,
        "/v1/orgs/initech/keys",
        Some(&user_token),
        Some(json!({})),
    )
    .await;
    let key = key["key"].as_str().unwrap().to_owned();
    server.stop().await;

    let server = TestServer::start_in(data, |_| {}).await;
    let mut c = Client::connect(&server, &client_token("initech", &secret)).await;
    c.subscribe(1, "room").await;
    let res = reqwest::Client::new()
        .post(server.url("/v1/orgs/initech/channels/room/publish"))
        .bearer_auth(&key)
        .json(&json!({"data": {"n": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(c.message().await.1, json!({"n": 1}));
    let (status, again) = call(
        &server,
        Method::POST,
        "/v1/orgs/initech/users",
        Some(&user_token),
        Some(json!({"username": "ann"})),
    )
    .await;
    assert_eq!(
        (status, again["user_id"].clone()),
        (StatusCode::OK, user["user_id"].clone())
    );
    server.stop().await;
}

#[tokio::test]
async fn an_orgs_limits_are_enforced_with_clear_errors() {
    let server = TestServer::start().await;
    let limits = json!({"max_connections": 2, "max_connections_per_subject": 1, "max_operator_sessions": 1});
    let (status, made) = call(
        &server,
        Method::POST,
        "/v1/orgs",
        Some(ADMIN_TOKEN),
        Some(json!({"id": "tiny", "limits": limits})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let secret = made["hs256_secret"].as_str().unwrap();
    let token_for = |sub: &str| {
        sign_hs256(
            secret,
            &ClientClaims {
                sub: sub.into(),
                org: "tiny".into(),
                exp: now_secs() + 600,
                iat: None,
                jti: None,
                subscribe: vec![],
                publish: vec![],
                send: vec![],
            },
        )
        .unwrap()
    };
    let refusal = |err: tokio_tungstenite::tungstenite::Error| match err {
        tokio_tungstenite::tungstenite::Error::Http(res) => {
            let body: Value = serde_json::from_slice(res.body().as_deref().unwrap()).unwrap();
            (
                res.status().as_u16(),
                body["error"]["message"].as_str().unwrap().to_owned(),
            )
        }
        other => panic!("expected an HTTP refusal, got {other}"),
    };
    let mut a = Client::connect(&server, &token_for("a")).await;
    let (status, message) = refusal(connect_ws(server.ws_url(&token_for("a"))).await.unwrap_err());
    assert_eq!(status, 429);
    assert!(message.contains("subject may hold 1"), "{message}");
    let _b = Client::connect(&server, &token_for("b")).await;
    let (status, message) = refusal(connect_ws(server.ws_url(&token_for("c"))).await.unwrap_err());
    assert_eq!(status, 429);
    assert!(message.contains("org allows 2"), "{message}");
    // A place is given back when its connection ends.
    a.ping(1).await;
    drop(a);
    eventually("the place is given back", async || {
        connect_ws(server.ws_url(&token_for("c"))).await.is_ok()
    })
    .await;

    let (_, key) = call(
        &server,
        Method::POST,
        "/v1/orgs/tiny/keys",
        Some(ADMIN_TOKEN),
        Some(json!({})),
    )
    .await;
    let key = key["key"].as_str().unwrap();
    let (status, _) = call(&server, Method::POST, "/v1/operators", Some(key), Some(json!({}))).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = call(&server, Method::POST, "/v1/operators", Some(key), Some(json!({}))).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::TOO_MANY_REQUESTS, "LIMIT_EXCEEDED")
    );
    server.stop().await;
}

#[tokio::test]
async fn revoked_credentials_are_refused_and_their_connections_closed() {
    let server = TestServer::start().await;
    let now = now_secs();
    let jwt = |jti: &str, sub: &str, iat: Option<u64>| {
        sign_hs256(
            &secret("acme"),
            &ClientClaims {
                sub: sub.into(),
                org: "acme".into(),
                exp: now + 600,
                iat,
                jti: Some(jti.into()),
                subscribe: vec![ChannelPattern::new(">").unwrap()],
                publish: vec![],
                send: vec![],
            },
        )
        .unwrap()
    };
    let revoke = |body: Value| {
        call(
            &server,
            Method::POST,
            "/v1/orgs/acme/revocations",
            Some(ADMIN_TOKEN),
            Some(body),
        )
    };
    let refused = |token: String| {
        let url = server.ws_url(&token);
        async move { connect_ws(url).await.unwrap_err().to_string().contains("401") }
    };

    // One token of a subject, by its jti: its connection closes, the other stays.
    let mut turn1 = Client::connect(&server, &jwt("turn-1", "alice", None)).await;
    let mut turn2 = Client::connect(&server, &jwt("turn-2", "alice", None)).await;
    let (status, doc) = revoke(json!({"jti": "turn-1"})).await;
    assert_eq!(status, StatusCode::CREATED, "{doc}");
    assert_eq!(u16::from(turn1.closed().await.unwrap().code), 4003);
    turn2.ping(1).await;
    assert!(refused(jwt("turn-1", "alice", None)).await);

    // A subject: what it was issued so far is refused; a token issued later works.
    let mut bob = Client::connect(&server, &jwt("b-1", "bob", Some(now - 10))).await;
    let (status, _) = revoke(json!({"sub": "bob"})).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(u16::from(bob.closed().await.unwrap().code), 4003);
    assert!(refused(jwt("b-2", "bob", Some(now - 10))).await);
    assert!(
        refused(jwt("b-3", "bob", None)).await,
        "no iat: issued whenever, refused"
    );
    let mut later = Client::connect(&server, &jwt("b-4", "bob", Some(now + 5))).await;
    later.ping(2).await;
    turn2.ping(3).await;

    // A ticket by its id; and a single-use ticket connects once.
    let mint = |body: Value| {
        let url = server.url("/v1/orgs/acme/tickets");
        let key = server.api_key("acme").to_owned();
        async move {
            let res = reqwest::Client::new()
                .post(url)
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::CREATED);
            res.json::<Value>().await.unwrap()
        }
    };
    let ticket_url = |t: &Value| {
        format!(
            "ws://{}/v1/ws?ticket={}",
            server.addr,
            t["ticket"].as_str().unwrap()
        )
    };
    let t = mint(json!({"sub": "carol"})).await;
    let mut carol = Client::connect_url(&ticket_url(&t)).await;
    let (status, _) = revoke(json!({"ticket": t["id"]})).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(u16::from(carol.closed().await.unwrap().code), 4003);
    assert!(connect_ws(ticket_url(&t)).await.is_err());
    let once = mint(json!({"sub": "dave", "single_use": true})).await;
    let mut dave = Client::connect_url(&ticket_url(&once)).await;
    dave.ping(4).await;
    let again = connect_ws(ticket_url(&once)).await.unwrap_err();
    assert!(again.to_string().contains("401"), "{again}");

    let (_, list) = call(
        &server,
        Method::GET,
        "/v1/orgs/acme/revocations",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(list["revocations"].as_array().unwrap().len(), 3);
    for bad in [
        json!({}),
        json!({"jti": "a", "sub": "b"}),
        json!({"jti": ""}),
        json!({"nope": 1}),
    ] {
        let (status, body) = revoke(bad).await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::BAD_REQUEST, "VALIDATION_ERROR")
        );
    }
    let (status, _) = call(
        &server,
        Method::POST,
        "/v1/orgs/acme/revocations",
        Some(server.api_key("globex")),
        Some(json!({"jti": "x"})),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "another org's key revokes nothing here"
    );
    server.stop().await;
}

/// An identity provider's JWKS endpoint: serves `keys` and counts fetches.
async fn jwks_server(
    keys: std::sync::Arc<std::sync::Mutex<Value>>,
    fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> String {
    let app = axum::Router::new().route(
        "/jwks",
        axum::routing::get(move || {
            let (keys, fetches) = (keys.clone(), fetches.clone());
            async move {
                fetches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                axum::Json(keys.lock().unwrap().clone())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/jwks")
}

#[tokio::test]
async fn keys_published_at_a_jwks_url_are_fetched_cached_and_rotated() {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    let server = TestServer::start_with(|c| c.limits.jwks_refetch_secs = Some(0)).await;
    // The Ed25519 test key as a JWK: its raw 32 bytes end the SPKI DER.
    let pem = include_str!("keys/ed25519-public.pem");
    let der = STANDARD
        .decode(
            pem.lines()
                .filter(|l| !l.starts_with("-----"))
                .collect::<String>(),
        )
        .unwrap();
    let x = URL_SAFE_NO_PAD.encode(&der[der.len() - 32..]);
    let jwk =
        |kid: &str| json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"});
    let keys = std::sync::Arc::new(std::sync::Mutex::new(json!({"keys": [jwk("ed-1")]})));
    let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let url = jwks_server(keys.clone(), fetches.clone()).await;
    let (status, _) = call(
        &server,
        Method::POST,
        "/v1/orgs",
        Some(ADMIN_TOKEN),
        Some(json!({"id": "idp", "jwks_url": url})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let signing = jsonwebtoken::EncodingKey::from_ed_pem(include_bytes!("keys/ed25519-private.pem")).unwrap();
    let token = |kid: &str| {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some(kid.into());
        let claims = ClientClaims {
            sub: "alice".into(),
            org: "idp".into(),
            exp: now_secs() + 600,
            iat: None,
            jti: None,
            subscribe: vec![],
            publish: vec![],
            send: vec![],
        };
        jsonwebtoken::encode(&header, &claims, &signing).unwrap()
    };
    let fetched = || fetches.load(std::sync::atomic::Ordering::SeqCst);
    let connects = |kid: &str| {
        let url = server.ws_url(&token(kid));
        async move { connect_ws(url).await.is_ok() }
    };

    assert!(connects("ed-1").await, "fetched on first use");
    assert!(connects("ed-1").await);
    assert_eq!(fetched(), 1, "then served from the cache");
    assert!(!connects("ed-2").await, "a key id the provider does not publish");
    assert_eq!(fetched(), 2, "an unknown key id refetches");
    // The provider rotates to a new key id.
    *keys.lock().unwrap() = json!({"keys": [jwk("ed-2")]});
    assert!(
        connects("ed-2").await,
        "the rotation is picked up without a restart"
    );
    assert!(!connects("ed-1").await, "the retired key id no longer verifies");
    // A bad URL is refused when the org is made.
    let (status, body) = call(
        &server,
        Method::POST,
        "/v1/orgs",
        Some(ADMIN_TOKEN),
        Some(json!({"id": "bad", "jwks_url": "file:///etc/passwd"})),
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "VALIDATION_ERROR")
    );
    server.stop().await;
}

#[tokio::test]
async fn an_org_may_require_audience_and_issuer_and_nbf_is_checked() {
    let server = TestServer::start().await;
    let body = json!({"id": "strict", "jwt_audience": "app", "jwt_issuer": "https://idp.test"});
    let (status, made) = call(&server, Method::POST, "/v1/orgs", Some(ADMIN_TOKEN), Some(body)).await;
    assert_eq!(status, StatusCode::CREATED);
    let key = jsonwebtoken::EncodingKey::from_secret(made["hs256_secret"].as_str().unwrap().as_bytes());
    let token = |extra: Value| {
        let mut claims = json!({"sub": "alice", "org": "strict", "exp": now_secs() + 600});
        claims
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
    };
    let connects = |t: String| {
        let url = server.ws_url(&t);
        async move { connect_ws(url).await.is_ok() }
    };
    assert!(connects(token(json!({"aud": "app", "iss": "https://idp.test"}))).await);
    assert!(!connects(token(json!({"aud": "other", "iss": "https://idp.test"}))).await);
    assert!(!connects(token(json!({"aud": "app", "iss": "https://evil.test"}))).await);
    assert!(
        !connects(token(json!({"iss": "https://idp.test"}))).await,
        "aud required"
    );
    assert!(!connects(token(json!({"aud": "app"}))).await, "iss required");
    let later = now_secs() + 300;
    assert!(
        !connects(token(
            json!({"aud": "app", "iss": "https://idp.test", "nbf": later})
        ))
        .await,
        "not valid before nbf"
    );
    server.stop().await;
}

#[tokio::test]
async fn revoking_a_key_ends_the_operator_sessions_it_minted() {
    let server = TestServer::start().await;
    let (_, made) = call(
        &server,
        Method::POST,
        "/v1/orgs/acme/keys",
        Some(ADMIN_TOKEN),
        Some(json!({"scopes": ["operators"]})),
    )
    .await;
    let (key, id) = (made["key"].as_str().unwrap(), made["id"].as_str().unwrap());
    let (status, minted) = call(
        &server,
        Method::POST,
        "/v1/operators",
        Some(key),
        Some(json!({"roles": ["bot"]})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, other) = call(
        &server,
        Method::POST,
        "/v1/operators",
        Some(server.api_key("acme")),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let session = |m: &Value| format!("/v1/operators/{}", m["sid"].as_str().unwrap());
    let token = |m: &Value| m["token"].as_str().unwrap().to_owned();
    let (status, _) = call(
        &server,
        Method::DELETE,
        &format!("/v1/orgs/acme/keys/{id}"),
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = call(
        &server,
        Method::GET,
        &session(&minted),
        Some(&token(&minted)),
        None,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the session lived on the revoked key's authority"
    );
    let (status, _) = call(&server, Method::GET, &session(&other), Some(&token(&other)), None).await;
    assert_eq!(status, StatusCode::OK, "another key's session lives on");
    // Its role is free again.
    let (status, _) = call(
        &server,
        Method::POST,
        "/v1/operators",
        Some(server.api_key("acme")),
        Some(json!({"roles": ["bot"]})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    server.stop().await;
}

#[tokio::test]
async fn an_orgs_publish_rate_applies_to_its_connections() {
    let server = TestServer::start().await;
    let (_, made) = call(
        &server,
        Method::POST,
        "/v1/orgs",
        Some(ADMIN_TOKEN),
        Some(json!({"id": "slow", "limits": {"publish_rate": 1}})),
    )
    .await;
    let claims = ClientClaims {
        sub: "p".into(),
        org: "slow".into(),
        exp: now_secs() + 600,
        iat: None,
        jti: None,
        subscribe: vec![],
        publish: vec![ChannelPattern::new(">").unwrap()],
        send: vec![],
    };
    let mut c = Client::connect(
        &server,
        &sign_hs256(made["hs256_secret"].as_str().unwrap(), &claims).unwrap(),
    )
    .await;
    // The server's burst (100) passes; the org's rate (1/s) refuses what follows.
    c.pipeline((0..110).map(|n| json!({"type": "publish", "id": n, "channel": "c", "data": n})))
        .await;
    let mut limited = 0;
    for _ in 0..110 {
        if let switchboard_proto::ServerFrame::Error { code, .. } = c.next().await {
            assert_eq!(code, switchboard_proto::ErrorCode::RateLimited);
            limited += 1;
        }
    }
    assert!(limited >= 5, "{limited} refused");
    server.stop().await;
}
