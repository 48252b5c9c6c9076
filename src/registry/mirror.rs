//! The cluster registry's copy of its bucket in memory: the newest value of
//! every key, fed in revision order by the bucket's follower, so listing is
//! a range scan here instead of a consumer on nats-server (which costs
//! nats-server time in proportion to the whole bucket on 2.9). Reads wait
//! until the copy holds this pod's own last write.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::RwLock;
use tokio::sync::watch;

use super::store::{Change, Entry, Revision, StoreError, under};

/// Prefixes that only grow (the audit log, used tickets): read from the
/// bucket when asked for, never kept here.
const NOT_KEPT: [&str; 2] = ["audit", "used"];

/// The newest revision of each key, and its value (`None`: deleted, kept so
/// an older write arriving late cannot bring it back).
pub struct Mirror {
    keys: RwLock<BTreeMap<String, (Revision, Option<Bytes>)>>,
    /// Every revision up to this one is applied.
    applied: watch::Sender<Revision>,
    /// The newest revision this pod wrote.
    written: AtomicU64,
}

impl Default for Mirror {
    fn default() -> Self {
        Mirror {
            keys: RwLock::new(BTreeMap::new()),
            applied: watch::channel(0).0,
            written: AtomicU64::new(0),
        }
    }
}

/// Whether keys under `prefix` are kept here.
pub fn keeps(prefix: &str) -> bool {
    !NOT_KEPT.iter().any(|p| under(prefix, p))
}

impl Mirror {
    /// Takes a change (from a snapshot or the live follower); true if it is
    /// newer than what was known of its key.
    pub fn apply(&self, change: &Change) -> bool {
        let (key, revision, value) = match change {
            Change::Put(e) => (&e.key, e.revision, Some(e.value.clone())),
            Change::Delete { key, revision } => (key, *revision, None),
        };
        if !keeps(key) {
            return true;
        }
        let mut keys = self.keys.write();
        match keys.get(key.as_str()) {
            Some((known, _)) if *known >= revision => false,
            _ => {
                keys.insert(key.clone(), (revision, value));
                true
            }
        }
    }

    /// Everything up to `revision` has been applied.
    pub fn applied_up_to(&self, revision: Revision) {
        self.applied.send_if_modified(|at| {
            let newer = revision > *at;
            if newer {
                *at = revision;
            }
            newer
        });
    }

    /// Notes a write of this pod, which later reads must see.
    pub fn wrote(&self, revision: Revision) {
        self.written.fetch_max(revision, Ordering::AcqRel);
    }

    /// The keys under `prefix`, once this pod's own writes are in.
    pub async fn list(&self, prefix: &str, patience: Duration) -> Result<Vec<Entry>, StoreError> {
        let wanted = self.written.load(Ordering::Acquire);
        let mut applied = self.applied.subscribe();
        tokio::time::timeout(patience, applied.wait_for(|at| *at >= wanted))
            .await
            .map_err(|_| StoreError::Unavailable("the registry copy is behind its bucket".into()))?
            .map_err(|_| StoreError::Unavailable("the registry follower stopped".into()))?;
        let keys = self.keys.read();
        Ok(keys
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(k, _)| under(k, prefix))
            .filter_map(|(k, (revision, value))| {
                value.as_ref().map(|v| Entry {
                    key: k.clone(),
                    value: v.clone(),
                    revision: *revision,
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, revision: Revision) -> Change {
        Change::Put(Entry {
            key: key.into(),
            value: Bytes::from(revision.to_string()),
            revision,
        })
    }

    #[tokio::test]
    async fn newest_wins_and_deletes_stay_deleted() {
        let m = Mirror::default();
        assert!(m.apply(&put("keys.a.1", 3)));
        assert!(!m.apply(&put("keys.a.1", 2)), "older arrives late");
        assert!(m.apply(&put("keys.a.2", 4)));
        assert!(m.apply(&put("keys.ab.1", 5)));
        assert!(m.apply(&Change::Delete {
            key: "keys.a.2".into(),
            revision: 6
        }));
        assert!(!m.apply(&put("keys.a.2", 4)), "a deleted key is not resurrected");
        m.applied_up_to(6);
        let listed = m.list("keys.a", Duration::from_secs(1)).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].key.as_str(), listed[0].revision), ("keys.a.1", 3));
    }

    #[tokio::test]
    async fn a_read_waits_for_this_pods_writes() {
        let m = std::sync::Arc::new(Mirror::default());
        m.wrote(7);
        let reader = {
            let m = m.clone();
            tokio::spawn(async move { m.list("orgs", Duration::from_secs(5)).await })
        };
        m.apply(&put("orgs.x", 7));
        m.applied_up_to(7);
        assert_eq!(reader.await.unwrap().unwrap().len(), 1);
        m.wrote(9);
        assert!(
            m.list("orgs", Duration::from_millis(20)).await.is_err(),
            "never caught up"
        );
        assert!(!keeps("audit.acme") && !keeps("used") && keeps("orgs"));
    }
}
