//! The registry's JetStream key-value backend against a real nats-server in
//! operator mode: the same checks the embedded backend passes, and a write
//! on one pod's store reaching another pod's watcher.

use crate::common;

use bytes::Bytes;
use common::PATIENCE;
use common::nats::Nats;
use switchboard::registry::conformance;
use switchboard::registry::jetstream::JetStreamKv;
use switchboard::registry::store::{Change, Store};

#[tokio::test]
async fn the_jetstream_backend_keeps_the_store_contract() {
    let nats = Nats::start().await;
    let store = JetStreamKv::open(nats.connect("broker.creds").await, "test")
        .await
        .unwrap();
    conformance::revisions_create_and_compare_and_swap(&store, "acme").await;
    conformance::lists_by_token_prefix_in_key_order(&store, "acme").await;
}

#[tokio::test]
async fn a_write_on_one_pod_reaches_the_other_pods_watch() {
    let nats = Nats::start().await;
    let a = JetStreamKv::open(nats.connect("broker.creds").await, "shared")
        .await
        .unwrap();
    let b = JetStreamKv::open(nats.connect("broker.creds").await, "shared")
        .await
        .unwrap();
    let mut changes = b.watch();
    let rev = a.create("orgs.acme", Bytes::from_static(b"{}")).await.unwrap();
    let heard = tokio::time::timeout(PATIENCE, changes.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        heard,
        Change::Put(switchboard::registry::store::Entry {
            key: "orgs.acme".into(),
            value: Bytes::from_static(b"{}"),
            revision: rev
        })
    );
    assert!(matches!(
        b.create("orgs.acme", Bytes::new()).await,
        Err(switchboard::registry::store::StoreError::Exists)
    ));
}
