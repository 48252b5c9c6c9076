//! The HTTP API: publish and history with org API keys, and every refusal
//! as a JSON error with its status (probes and metrics: `probes.rs`).

use crate::common;

use common::*;
use serde_json::json;
use switchboard::auth::new_api_key;
use switchboard::directory::{ApiKeyConfig, Scope};
use switchboard_proto::OrgId;

#[tokio::test]
async fn publish_refusals() {
    let server = TestServer::start_with(|c| c.limits.max_frame_bytes = Some(256)).await;
    let url = server.url("/v1/orgs/acme/channels/chat/publish");
    let key = Some(server.api_key("acme"));
    let cases = [
        ("no key", url.clone(), None, r#"{"data":1}"#, 401, "UNAUTHORIZED"),
        (
            "wrong key",
            url.clone(),
            Some("sbk.acme.test.nope"),
            r#"{"data":1}"#,
            401,
            "UNAUTHORIZED",
        ),
        (
            "not a key",
            url.clone(),
            Some("hello"),
            r#"{"data":1}"#,
            401,
            "UNAUTHORIZED",
        ),
        (
            "other org's key",
            url.clone(),
            Some(server.api_key("globex")),
            r#"{"data":1}"#,
            401,
            "UNAUTHORIZED",
        ),
        (
            "unknown org",
            server.url("/v1/orgs/initech/channels/chat/publish"),
            key,
            r#"{"data":1}"#,
            401,
            "UNAUTHORIZED",
        ),
        (
            "bad org id",
            server.url("/v1/orgs/a%20b/channels/chat/publish"),
            key,
            r#"{"data":1}"#,
            400,
            "VALIDATION_ERROR",
        ),
        (
            "bad channel",
            server.url("/v1/orgs/acme/channels/chat.*/publish"),
            key,
            r#"{"data":1}"#,
            400,
            "VALIDATION_ERROR",
        ),
        (
            "malformed JSON",
            url.clone(),
            key,
            r#"{"data":"#,
            400,
            "VALIDATION_ERROR",
        ),
        (
            "missing data",
            url.clone(),
            key,
            r#"{"text":1}"#,
            400,
            "VALIDATION_ERROR",
        ),
        (
            "null data",
            url.clone(),
            key,
            r#"{"data":null}"#,
            400,
            "VALIDATION_ERROR",
        ),
        (
            "too large",
            url.clone(),
            key,
            &format!(r#"{{"data":"{}"}}"#, "x".repeat(300)),
            413,
            "FRAME_TOO_LARGE",
        ),
    ];
    for (what, url, key, body, status, want) in cases {
        let (got, reply) = post(&url, key, body).await;
        assert_eq!((got, code(&reply)), (status, want), "{what}: {reply}");
    }
    let (status, reply) = post(&url, key, r#"{"data":{"n":1}}"#).await;
    assert_eq!((status, reply["offset"].as_u64()), (200, Some(1)));
    assert!(reply["epoch"].is_string());
    server.stop().await;
}

#[tokio::test]
async fn history_pages_through_what_was_published() {
    let server = TestServer::start_with(|c| c.history.max_messages = Some(5)).await;
    for n in 1..=8 {
        server.publish("acme", "news", json!({ "n": n })).await;
    }
    let key = Some(server.api_key("acme"));
    let history = |q: &str| server.url(&format!("/v1/orgs/acme/channels/news/history{q}"));
    let offsets = |page: &serde_json::Value| -> Vec<u64> {
        page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["offset"].as_u64().unwrap())
            .collect()
    };
    let (status, page) = get(&history("?since=5&limit=2"), key).await;
    assert_eq!(status, 200);
    assert_eq!(offsets(&page), vec![6, 7]);
    assert_eq!(
        (
            page["top"].as_u64(),
            page["first"].as_u64(),
            page["complete"].as_bool(),
            page["more"].as_bool()
        ),
        (Some(8), Some(4), Some(true), Some(true))
    );
    assert_eq!(page["messages"][0]["data"], json!({"n": 6}));
    // Without `since`: the retained tail (1-3 were trimmed, 5 kept), and where it starts.
    let (_, page) = get(&history(""), key).await;
    assert_eq!(offsets(&page), vec![4, 5, 6, 7, 8]);
    assert_eq!(
        (page["first"].as_u64(), page["complete"].as_bool()),
        (Some(4), Some(true))
    );
    let (_, page) = get(&history("?limit=2"), key).await;
    assert_eq!(offsets(&page), vec![7, 8], "the newest two");
    // From 0, offsets 1-3 are gone: not complete, and nothing is pretended.
    let (_, page) = get(&history("?since=0"), key).await;
    assert_eq!(page["complete"], json!(false));
    assert_eq!(offsets(&page), Vec::<u64>::new());
    // A channel nobody used: empty, complete.
    let (status, page) = get(&server.url("/v1/orgs/acme/channels/nothing/history"), key).await;
    assert_eq!(
        (
            status,
            page["top"].as_u64(),
            page["complete"].as_bool(),
            &page["first"]
        ),
        (200, Some(0), Some(true), &json!(null))
    );
    // Refusals.
    assert_eq!(get(&history(""), None).await.0, 401);
    assert_eq!(get(&history(""), Some(server.api_key("globex"))).await.0, 401);
    let (status, reply) = get(&history("?since=-1"), key).await;
    assert_eq!((status, code(&reply)), (400, "VALIDATION_ERROR"));
    server.stop().await;
}

#[tokio::test]
async fn keys_are_scoped() {
    let publish_only = new_api_key(&OrgId::new("acme").unwrap(), "pub").unwrap();
    let stored = ApiKeyConfig {
        id: publish_only.id.clone(),
        sha256: publish_only.sha256_hex.clone(),
        scopes: vec![Scope::Publish],
    };
    let server = TestServer::start_with(|c| c.orgs[0].api_keys.push(stored)).await;
    let (status, _) = post(
        &server.url("/v1/orgs/acme/channels/c/publish"),
        Some(&publish_only.plaintext),
        r#"{"data":1}"#,
    )
    .await;
    assert_eq!(status, 200);
    let (status, reply) = get(
        &server.url("/v1/orgs/acme/channels/c/history"),
        Some(&publish_only.plaintext),
    )
    .await;
    assert_eq!((status, code(&reply)), (403, "FORBIDDEN"));
    let (status, reply) = post(
        &server.url("/v1/orgs/acme/tickets"),
        Some(&publish_only.plaintext),
        r#"{"sub":"u"}"#,
    )
    .await;
    assert_eq!((status, code(&reply)), (403, "FORBIDDEN"));
    server.stop().await;
}

#[tokio::test]
async fn presence_says_who_is_subscribed_and_refuses_what_it_should() {
    let server = TestServer::start().await;
    let mut clients = Vec::new();
    for (sub, channel) in [
        ("alice", "room"),
        ("alice", "room"),
        ("bob", "room"),
        ("carol", "elsewhere"),
    ] {
        let mut c = Client::connect(&server, &token("acme", sub, &[">"], &[])).await;
        c.subscribe(1, channel).await;
        clients.push(c);
    }
    let url = server.url("/v1/orgs/acme/channels/room/presence");
    let (status, body) = get(&url, Some(server.api_key("acme"))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"channel": "room", "pods": 1, "subscribers": [
            {"sub": "alice", "connections": 2},
            {"sub": "bob", "connections": 1},
        ]})
    );
    clients[2]
        .send(json!({"type": "unsubscribe", "id": 2, "channel": "room"}))
        .await;
    clients[2].ack(2).await;
    let (_, body) = get(&url, Some(server.api_key("acme"))).await;
    assert_eq!(body["subscribers"], json!([{"sub": "alice", "connections": 2}]));
    let (_, body) = get(
        &server.url("/v1/orgs/acme/channels/nobody.here/presence"),
        Some(server.api_key("acme")),
    )
    .await;
    assert_eq!(body["subscribers"], json!([]));
    // Refusals: no key, another org's key, a bad channel name.
    assert_eq!(get(&url, None).await.0, 401);
    let (status, _) = get(&url, Some(server.api_key("globex"))).await;
    assert!(status == 401 || status == 403, "{status}");
    let (status, body) = get(
        &server.url("/v1/orgs/acme/channels/bad%20name/presence"),
        Some(server.api_key("acme")),
    )
    .await;
    assert_eq!((status, code(&body)), (400, "VALIDATION_ERROR"));
}
