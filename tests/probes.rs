//! The probes and `/metrics` over real HTTP. A binary of its own: the metrics
//! recorder is process-wide, and its delivery count is asserted exactly.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn probes_and_metrics() {
    let server = TestServer::start().await;
    assert_eq!(
        get(&server.url("/health"), None).await,
        (200, json!({"status": "ok"}))
    );
    assert_eq!(
        get(&server.url("/ready"), None).await,
        (200, json!({"status": "ready"}))
    );
    let (status, body) = get(&server.url("/v1/nothing-here"), None).await;
    assert_eq!((status, code(&body)), (404, "NOT_FOUND"));
    let mut c = Client::connect_all(&server, "acme").await;
    c.subscribe(1, "m").await;
    // No other test runs in this binary: the count is exact.
    let delivered = server.metric("switchboard_deliveries_total").await;
    server.publish("acme", "m", json!(1)).await;
    c.message().await;
    let text = get_text(&server.url("/metrics")).await;
    for name in [
        "switchboard_connections",
        "switchboard_subscriptions",
        "switchboard_messages_in_total",
        "switchboard_deliveries_total",
        "switchboard_delivered_bytes_total",
        "switchboard_publish_to_write_seconds",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    assert_eq!(
        server.metric("switchboard_deliveries_total").await - delivered,
        1.0,
        "one message, one subscriber"
    );
    server.stop().await;
}
