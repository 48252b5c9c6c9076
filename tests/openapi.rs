//! The OpenAPI document against the live server: schemathesis (installed
//! by the test script) generates requests for every operation from it and
//! checks that none gets a 5xx and every response matches the document.

use crate::common;

use common::*;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_response_off_the_document() {
    let server = TestServer::start().await;
    // The documented examples name org `demo` and channel `chat.1`: make
    // them exist, so generated requests reach past the 404s.
    let res = reqwest::Client::new()
        .post(server.url("/v1/orgs"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"id": "demo"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let doc: Value = reqwest::get(server.url("/v1/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));

    let schema = server.url("/v1/openapi.json");
    let header = format!("Authorization: Bearer {ADMIN_TOKEN}");
    // schemathesis keeps a cache where it runs: not in the checkout.
    let scratch = tempfile::tempdir().unwrap();
    let cwd = scratch.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("st")
            .current_dir(cwd)
            .args(["run", &schema])
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            ])
            .args(["--header", &header, "--max-examples", "25", "--request-timeout", "10", "--seed", "1"])
            .env("NO_COLOR", "1")
            .output()
    })
    .await
    .unwrap()
    .expect("schemathesis (`st`) is installed: scripts/test.sh installs it");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("passed"), "{stdout}");
    server.stop().await;
}
