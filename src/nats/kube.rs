//! `switchboard nats kubernetes --dir DIR`: what `nats init` wrote, as the
//! `Secret` the Switchboard pods mount (the files a pod reads, nothing
//! more: the operator's identity seed stays offline) and the `ConfigMap`
//! every NATS server includes (`deploy/`). Printed as one JSON `List` for
//! `kubectl apply -f -`.

use std::path::Path;

use anyhow::Context;
use base64::Engine;
use serde_json::{Value, json};

use super::init::files;

/// The `Secret` the Switchboard pods mount at `--nats-dir`.
pub const POD_SECRET: &str = "switchboard-nats";
/// The `ConfigMap` holding `accounts.conf` for the NATS servers.
pub const ACCOUNTS_CONFIG_MAP: &str = "nats-accounts";
/// What a pod reads from its NATS directory.
pub const POD_FILES: [&str; 5] = [
    files::OPERATOR_JWT,
    files::OPERATOR_SIGNING_SEED,
    files::SYS_CREDS,
    files::BROKER_CREDS,
    files::MASTER_KEY,
];

fn read(dir: &Path, name: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(dir.join(name)).with_context(|| {
        format!(
            "cannot read {} (made by `switchboard nats init --out {}`)",
            dir.join(name).display(),
            dir.display()
        )
    })
}

/// The `Secret` and `ConfigMap` for the deployment, from `dir`.
pub fn manifests(dir: &Path, namespace: Option<&str>) -> anyhow::Result<Value> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut secret = serde_json::Map::new();
    for name in POD_FILES {
        secret.insert(name.to_owned(), json!(b64.encode(read(dir, name)?)));
    }
    let accounts = read(dir, files::ACCOUNTS_CONF)?;
    let meta = |name: &str| {
        let mut m = json!({"name": name, "labels": {"app.kubernetes.io/part-of": "switchboard"}});
        if let Some(ns) = namespace {
            m["namespace"] = json!(ns);
        }
        m
    };
    Ok(json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": meta(POD_SECRET), "data": secret},
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(ACCOUNTS_CONFIG_MAP), "data": {files::ACCOUNTS_CONF: accounts}},
        ],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_without_init_is_refused_with_the_command_that_makes_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = manifests(dir.path(), None).unwrap_err().to_string();
        assert!(err.contains("switchboard nats init --out"), "{err}");
    }

    #[test]
    fn the_secret_holds_what_a_pod_reads_and_not_the_operator_identity() {
        let dir = tempfile::tempdir().unwrap();
        crate::nats::init::init(&crate::nats::init::InitOptions {
            out: dir.path().into(),
            port: 4222,
            http_port: 8222,
            name: "t".into(),
            force: false,
        })
        .unwrap();
        let list = manifests(dir.path(), Some("sb")).unwrap();
        let secret = &list["items"][0];
        let keys: Vec<&String> = secret["data"].as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), POD_FILES.len());
        assert!(secret["data"].get(files::OPERATOR_SEED).is_none());
        let seed = base64::engine::general_purpose::STANDARD
            .decode(secret["data"][files::OPERATOR_SIGNING_SEED].as_str().unwrap())
            .unwrap();
        assert!(String::from_utf8(seed).unwrap().starts_with("SO"));
        assert_eq!(secret["metadata"]["namespace"], "sb");
        let conf = list["items"][1]["data"][files::ACCOUNTS_CONF].as_str().unwrap();
        assert!(conf.contains("resolver_preload") && !conf.contains('/'), "{conf}");
    }
}
