//! The embedded registry backend: one redb file in the data directory. redb
//! is a pure-Rust, copy-on-write B-tree with ACID transactions: a commit is
//! fsynced before it returns, so what was acknowledged survives a kill -9,
//! and a crash mid-write leaves the previous state. Each value is stored
//! with its revision; one counter in the same transaction numbers writes.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use redb::{Database, ReadableTable, TableDefinition};
use tokio::sync::broadcast;

use super::store::{BoxFuture, Change, Entry, Revision, Store, StoreError, check_key, under};

/// key → revision (8 bytes, big endian) followed by the value.
const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
/// `revision` → the last revision handed out.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION: &str = "revision";
/// Changes a slow watcher may be behind before it must read everything again.
const WATCH_BUFFER: usize = 1024;

pub struct Embedded {
    db: Arc<Database>,
    changes: broadcast::Sender<Change>,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn decode(key: &str, raw: &[u8]) -> Result<Entry, StoreError> {
    let (rev, value) = raw
        .split_first_chunk::<8>()
        .ok_or_else(|| unavailable(format!("record {key} is truncated")))?;
    Ok(Entry {
        key: key.to_owned(),
        value: Bytes::copy_from_slice(value),
        revision: u64::from_be_bytes(*rev),
    })
}

/// What a write expects to find under its key.
#[derive(Clone, Copy)]
enum Expect {
    Anything,
    Absent,
    At(Revision),
}

impl Embedded {
    /// Opens (or creates) the store in `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(|e| unavailable(format!("{}: {e}", path.display())))?;
        Self::init(db)
    }

    /// A store that lives in memory only (for tests).
    pub fn in_memory() -> Result<Self, StoreError> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(unavailable)?;
        Self::init(db)
    }

    fn init(db: Database) -> Result<Self, StoreError> {
        // Both tables exist from the first start, so reads never miss one.
        let txn = db.begin_write().map_err(unavailable)?;
        txn.open_table(KV).map_err(unavailable)?;
        txn.open_table(META).map_err(unavailable)?;
        txn.commit().map_err(unavailable)?;
        Ok(Self {
            db: Arc::new(db),
            changes: broadcast::channel(WATCH_BUFFER).0,
        })
    }

    /// Runs blocking store work off the async workers.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(unavailable)?
    }

    async fn write(
        &self,
        key: &str,
        value: Option<Bytes>,
        expect: Expect,
    ) -> Result<Option<Revision>, StoreError> {
        check_key(key)?;
        let owned = key.to_owned();
        let stored = value.clone();
        let (revision, existed) = self
            .blocking(move |db| {
                let txn = db.begin_write().map_err(unavailable)?;
                let result = {
                    let mut kv = txn.open_table(KV).map_err(unavailable)?;
                    let mut meta = txn.open_table(META).map_err(unavailable)?;
                    let current = match kv.get(owned.as_str()).map_err(unavailable)? {
                        Some(raw) => Some(decode(&owned, raw.value())?.revision),
                        None => None,
                    };
                    match (expect, current) {
                        (Expect::Absent, Some(_)) => return Err(StoreError::Exists),
                        (Expect::At(want), got) if got != Some(want) => return Err(StoreError::Conflict),
                        _ => {}
                    }
                    let revision = meta.get(REVISION).map_err(unavailable)?.map_or(0, |r| r.value()) + 1;
                    meta.insert(REVISION, revision).map_err(unavailable)?;
                    match &stored {
                        Some(v) => {
                            let mut raw = Vec::with_capacity(8 + v.len());
                            raw.extend_from_slice(&revision.to_be_bytes());
                            raw.extend_from_slice(v);
                            kv.insert(owned.as_str(), raw.as_slice()).map_err(unavailable)?;
                        }
                        None => {
                            kv.remove(owned.as_str()).map_err(unavailable)?;
                        }
                    }
                    (revision, current.is_some())
                };
                txn.commit().map_err(unavailable)?;
                Ok(result)
            })
            .await?;
        let change = match value {
            Some(value) => Change::Put(Entry {
                key: key.to_owned(),
                value,
                revision,
            }),
            None if !existed => return Ok(None),
            None => Change::Delete {
                key: key.to_owned(),
                revision,
            },
        };
        // Nobody watching is fine.
        let _ = self.changes.send(change);
        Ok(Some(revision))
    }
}

impl Store for Embedded {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Entry>, StoreError>> {
        Box::pin(async move {
            check_key(key)?;
            let key = key.to_owned();
            self.blocking(move |db| {
                let txn = db.begin_read().map_err(unavailable)?;
                let kv = txn.open_table(KV).map_err(unavailable)?;
                let raw = kv.get(key.as_str()).map_err(unavailable)?;
                raw.map(|r| decode(&key, r.value())).transpose()
            })
            .await
        })
    }

    fn put<'a>(&'a self, key: &'a str, value: Bytes) -> BoxFuture<'a, Result<Revision, StoreError>> {
        Box::pin(async move { Ok(self.write(key, Some(value), Expect::Anything).await?.unwrap_or(0)) })
    }

    fn create<'a>(&'a self, key: &'a str, value: Bytes) -> BoxFuture<'a, Result<Revision, StoreError>> {
        Box::pin(async move { Ok(self.write(key, Some(value), Expect::Absent).await?.unwrap_or(0)) })
    }

    fn update<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        expected: Revision,
    ) -> BoxFuture<'a, Result<Revision, StoreError>> {
        Box::pin(async move {
            Ok(self
                .write(key, Some(value), Expect::At(expected))
                .await?
                .unwrap_or(0))
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move { Ok(self.write(key, None, Expect::Anything).await?.is_some()) })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<Entry>, StoreError>> {
        Box::pin(async move {
            check_key(prefix)?;
            let prefix = prefix.to_owned();
            self.blocking(move |db| {
                let txn = db.begin_read().map_err(unavailable)?;
                let kv = txn.open_table(KV).map_err(unavailable)?;
                let mut out = Vec::new();
                for item in kv.range(prefix.as_str()..).map_err(unavailable)? {
                    let (k, v) = item.map_err(unavailable)?;
                    let key = k.value();
                    if !key.starts_with(prefix.as_str()) {
                        break;
                    }
                    if under(key, &prefix) {
                        out.push(decode(key, v.value())?);
                    }
                }
                Ok(out)
            })
            .await
        })
    }

    fn watch(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::conformance;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[tokio::test]
    async fn revisions_create_and_compare_and_swap() {
        let store = Embedded::in_memory().unwrap();
        conformance::revisions_create_and_compare_and_swap(&store, "acme").await;
    }

    #[tokio::test]
    async fn lists_by_token_prefix_in_key_order() {
        let store = Embedded::in_memory().unwrap();
        conformance::lists_by_token_prefix_in_key_order(&store, "acme").await;
    }

    #[tokio::test]
    async fn what_was_written_is_there_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.redb");
        let rev = {
            let store = Embedded::open(&path).unwrap();
            store.put("orgs.acme", b("kept")).await.unwrap()
        };
        let store = Embedded::open(&path).unwrap();
        let got = store.get("orgs.acme").await.unwrap().unwrap();
        assert_eq!((got.value, got.revision), (b("kept"), rev));
        assert!(
            store.put("orgs.x", b("")).await.unwrap() > rev,
            "revisions keep growing"
        );
    }
}
