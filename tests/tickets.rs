//! WebSocket tickets: a backend mints one with its API key, a browser
//! connects with `?ticket=` and gets exactly the ticket's grants; forged,
//! foreign, expired and malformed tickets are refused before the upgrade.

use crate::common;

use common::*;
use serde_json::{Value, json};
use switchboard_proto::ErrorCode;

async fn mint_ticket(server: &TestServer, org: &str, body: Value) -> String {
    let (status, reply) = post(
        &server.url(&format!("/v1/orgs/{org}/tickets")),
        Some(server.api_key(org)),
        &body.to_string(),
    )
    .await;
    assert_eq!(status, 201, "{reply}");
    let expires_at = reply["expires_at"].as_u64().unwrap();
    let ttl = body["ttl_s"].as_u64().unwrap_or(60);
    let now = switchboard::auth::now_secs();
    assert!((now..=now + ttl).contains(&expires_at), "expires in {ttl} s");
    reply["ticket"].as_str().unwrap().to_owned()
}

fn ticket_url(server: &TestServer, ticket: &str) -> String {
    format!("ws://{}/v1/ws?ticket={ticket}", server.addr)
}

#[tokio::test]
async fn a_ticket_connects_with_exactly_its_grants() {
    let server = TestServer::start().await;
    let ticket = mint_ticket(
        &server,
        "acme",
        json!({"sub": "user-7", "subscribe": ["chat.>"], "publish": ["chat.7"], "ttl_s": 30}),
    )
    .await;
    let (ws, _) = connect_ws(ticket_url(&server, &ticket)).await.unwrap();
    let mut client = Client { ws };
    client.subscribe(1, "chat.room").await;
    client
        .send(json!({"type": "subscribe", "id": 2, "channel": "news"}))
        .await;
    assert_eq!(client.error().await.1, ErrorCode::Forbidden);
    client
        .send(json!({"type": "publish", "id": 3, "channel": "chat.8", "data": 1}))
        .await;
    assert_eq!(client.error().await.1, ErrorCode::Forbidden);
    let offset = server.publish("acme", "chat.room", json!("hi")).await;
    assert_eq!(client.message().await, (offset, json!("hi")));
    // The same org's publishes only: globex's channel of the same name stays apart.
    server.publish("globex", "chat.room", json!("not for acme")).await;
    let offset = server.publish("acme", "chat.room", json!("again")).await;
    assert_eq!(client.message().await, (offset, json!("again")));
    server.stop().await;
}

#[tokio::test]
async fn mint_refusals() {
    let server = TestServer::start().await;
    let url = server.url("/v1/orgs/acme/tickets");
    let key = Some(server.api_key("acme"));
    let cases = [
        ("no key", None, r#"{"sub":"u"}"#, 401, "UNAUTHORIZED"),
        (
            "wrong key",
            Some("sbk.acme.test.nope"),
            r#"{"sub":"u"}"#,
            401,
            "UNAUTHORIZED",
        ),
        (
            "another org's key",
            Some(server.api_key("globex")),
            r#"{"sub":"u"}"#,
            401,
            "UNAUTHORIZED",
        ),
        ("malformed JSON", key, r#"{"sub":"#, 400, "VALIDATION_ERROR"),
        (
            "no subject",
            key,
            r#"{"subscribe":[">"]}"#,
            400,
            "VALIDATION_ERROR",
        ),
        ("bad subject", key, r#"{"sub":""}"#, 400, "VALIDATION_ERROR"),
        (
            "bad pattern",
            key,
            r#"{"sub":"u","subscribe":["a..b"]}"#,
            400,
            "VALIDATION_ERROR",
        ),
        (
            "unknown field",
            key,
            r#"{"sub":"u","admin":true}"#,
            400,
            "VALIDATION_ERROR",
        ),
        (
            "zero ttl",
            key,
            r#"{"sub":"u","ttl_s":0}"#,
            400,
            "VALIDATION_ERROR",
        ),
        (
            "ttl over an hour",
            key,
            r#"{"sub":"u","ttl_s":3601}"#,
            400,
            "VALIDATION_ERROR",
        ),
    ];
    for (what, key, body, status, error) in cases {
        let (got, reply) = post(&url, key, body).await;
        assert_eq!((got, code(&reply)), (status, error), "{what}: {reply}");
    }
    let (got, reply) = post(&server.url("/v1/orgs/no%20such/tickets"), key, r#"{"sub":"u"}"#).await;
    assert_eq!((got, code(&reply)), (400, "VALIDATION_ERROR"));
    let big = format!(r#"{{"sub":"u","subscribe":["{}"]}}"#, "a".repeat(70 * 1024));
    let (got, reply) = post(&url, key, &big).await;
    assert_eq!((got, code(&reply)), (413, "FRAME_TOO_LARGE"));
    server.stop().await;
}

#[tokio::test]
async fn bad_tickets_are_refused_before_the_upgrade() {
    let server = TestServer::start().await;
    let ticket = mint_ticket(&server, "acme", json!({"sub": "u", "subscribe": [">"]})).await;
    let globex = mint_ticket(&server, "globex", json!({"sub": "u", "subscribe": [">"]})).await;
    let acme: Vec<&str> = ticket.split('.').collect();
    let foreign: Vec<&str> = globex.split('.').collect();
    let cases = [
        ("empty", String::new(), 401),
        ("garbage", "garbage".to_owned(), 401),
        ("a JWT as a ticket", token("acme", "u", &[">"], &[]), 401),
        (
            "another org's claims under this tag",
            format!(
                "{}.{}.{}.{}.{}.{}",
                acme[0], acme[1], acme[2], foreign[3], acme[4], acme[5]
            ),
            401,
        ),
        (
            "a later expiry",
            format!(
                "{}.{}.{}.{}.{}.{}",
                acme[0],
                acme[1],
                acme[2],
                acme[3],
                acme[4].parse::<u64>().unwrap() + 3600,
                acme[5]
            ),
            401,
        ),
        ("a cut tag", ticket[..ticket.len() - 2].to_owned(), 401),
    ];
    for (what, bad, status) in cases {
        assert_eq!(
            refused_status(upgrade_request(&ticket_url(&server, &bad), &[])).await,
            status,
            "{what}"
        );
    }
    // A ticket of another deployment (its own registry, other ticket keys) is refused too.
    let other = TestServer::start().await;
    assert_eq!(
        refused_status(upgrade_request(&ticket_url(&other, &ticket), &[])).await,
        401
    );
    other.stop().await;
    // Token and ticket together are ambiguous.
    let both = format!(
        "{}&token={}",
        ticket_url(&server, &ticket),
        token("acme", "u", &[">"], &[])
    );
    assert_eq!(refused_status(upgrade_request(&both, &[])).await, 400);
    // The genuine one still works.
    assert!(connect_ws(ticket_url(&server, &ticket)).await.is_ok());
    server.stop().await;
}

#[tokio::test]
async fn an_expired_ticket_is_refused_but_its_socket_lives_on() {
    let server = TestServer::start().await;
    let ticket = mint_ticket(&server, "acme", json!({"sub": "u", "ttl_s": 1})).await;
    let (ws, _) = connect_ws(ticket_url(&server, &ticket)).await.unwrap();
    let mut opened = Client { ws };
    // A JWT socket whose token runs out a second after the ticket's: the
    // sweep that closes it would have closed the ticket's socket too.
    let exp = switchboard::auth::now_secs() + 2 - switchboard::auth::LEEWAY_SECS;
    let mut bounded = Client::connect(
        &server,
        &token_signed(&secret("acme"), "acme", "a", &[">"], &[], exp),
    )
    .await;
    let close = bounded.closed().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 4001);
    let expires_at: u64 = ticket.split('.').nth(4).unwrap().parse().unwrap();
    assert!(
        switchboard::auth::now_secs() >= expires_at,
        "the ticket has expired"
    );
    // A ticket opens a connection; it does not bound its life.
    opened.ping(1).await;
    assert_eq!(
        refused_status(upgrade_request(&ticket_url(&server, &ticket), &[])).await,
        401
    );
    server.stop().await;
}
