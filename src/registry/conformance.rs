//! What every [`Store`] backend must do, as checks both backends' tests run
//! (the embedded one in unit tests, the JetStream one against a real
//! nats-server in `tests/cluster_registry.rs`). Panics on the first breach.

#![allow(clippy::unwrap_used)] // test support: a breach fails the test loudly

use std::time::Duration;

use bytes::Bytes;

use super::store::{Change, Store, StoreError};

/// How long a change may take to reach a watcher.
const WATCH_PATIENCE: Duration = Duration::from_secs(5);

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// Revisions, create-if-absent, compare-and-swap, delete, watch order.
/// `ns` keeps keys apart when several checks share one store.
pub async fn revisions_create_and_compare_and_swap(store: &dyn Store, ns: &str) {
    let key = format!("orgs.{ns}");
    let none = format!("orgs.{ns}-none");
    let mut changes = store.watch();
    let r1 = store.create(&key, b("1")).await.unwrap();
    assert!(matches!(
        store.create(&key, b("2")).await,
        Err(StoreError::Exists)
    ));
    let r2 = store.update(&key, b("2"), r1).await.unwrap();
    assert!(r2 > r1);
    assert!(matches!(
        store.update(&key, b("3"), r1).await,
        Err(StoreError::Conflict)
    ));
    assert!(matches!(
        store.update(&none, b("3"), r1).await,
        Err(StoreError::Conflict)
    ));
    let got = store.get(&key).await.unwrap().unwrap();
    assert_eq!((got.value, got.revision), (b("2"), r2));
    assert!(store.delete(&key).await.unwrap());
    assert!(!store.delete(&key).await.unwrap());
    assert_eq!(store.get(&key).await.unwrap(), None);
    assert!(matches!(
        store.get("orgs.a b").await,
        Err(StoreError::InvalidKey(_))
    ));
    assert!(
        matches!(store.update(&key, b("4"), r2).await, Err(StoreError::Conflict)),
        "a deleted key is not updated"
    );
    let r3 = store.create(&key, b("again")).await.unwrap();
    assert!(r3 > r2, "a deleted key can be created again");
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let change = tokio::time::timeout(WATCH_PATIENCE, changes.recv())
            .await
            .expect("the watch hears every write")
            .unwrap();
        if change.key() != key {
            continue;
        }
        seen.push(match change {
            Change::Put(e) => format!("put {} {}", e.key, e.revision),
            Change::Delete { key, .. } => format!("delete {key}"),
        });
    }
    assert_eq!(
        seen,
        vec![
            format!("put {key} {r1}"),
            format!("put {key} {r2}"),
            format!("delete {key}"),
            format!("put {key} {r3}"),
        ],
        "failed writes and no-op deletes are silent"
    );
}

/// `list` matches whole tokens and returns keys in order (under a prefix a
/// backend may keep in memory, `users`, and one it may not, `audit`).
pub async fn lists_by_token_prefix_in_key_order(store: &dyn Store, ns: &str) {
    for base in ["users", "audit"] {
        let ns = format!("{base}.{ns}");
        for key in ["b", "a", "c"] {
            store.put(&format!("{ns}.{key}"), b(key)).await.unwrap();
        }
        store.put(&format!("{ns}2.a"), b("other")).await.unwrap();
        store.put(&format!("{ns}.c"), b("newer")).await.unwrap();
        store.delete(&format!("{ns}.b")).await.unwrap();
        let listed: Vec<(String, Bytes)> = store
            .list(&ns)
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.key, e.value))
            .collect();
        assert_eq!(
            listed,
            vec![(format!("{ns}.a"), b("a")), (format!("{ns}.c"), b("newer"))],
            "under {base}"
        );
        assert!(store.list(&format!("{ns}-empty")).await.unwrap().is_empty());
    }
}
