//! The registry's storage seam: a key-value store with revisions, shaped so
//! that both backends implement it the same way: the embedded one
//! ([`super::embedded`], one file in the data directory) and, in cluster
//! mode, a JetStream key-value bucket. Keys are `.`-separated tokens of
//! `A-Z a-z 0-9 - _ =` (what a JetStream key allows), listed by prefix; every
//! write gets a revision from one counter, which compare-and-swap checks.

use bytes::Bytes;
pub use switchboard_actors::backplane::BoxFuture;
use tokio::sync::broadcast;

/// A write's position in the store's history; 0 is never a revision.
pub type Revision = u64;

/// One stored value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: Bytes,
    pub revision: Revision,
}

/// What a watcher hears: every write, in revision order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Put(Entry),
    Delete { key: String, revision: Revision },
}

impl Change {
    pub fn key(&self) -> &str {
        match self {
            Change::Put(e) => &e.key,
            Change::Delete { key, .. } => key,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `create` found the key already there.
    #[error("the key exists")]
    Exists,
    /// `update` found another revision (or no value) under the key.
    #[error("the key changed since it was read")]
    Conflict,
    /// The key is not a `.`-separated list of allowed tokens.
    #[error("invalid key {0:?}")]
    InvalidKey(String),
    /// The store cannot be read or written; the detail is for the log.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// The registry's storage.
pub trait Store: Send + Sync + 'static {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Entry>, StoreError>>;

    /// Writes `value` under `key` whatever was there.
    fn put<'a>(&'a self, key: &'a str, value: Bytes) -> BoxFuture<'a, Result<Revision, StoreError>>;

    /// Writes `value` only if nothing is stored under `key` ([`StoreError::Exists`]).
    fn create<'a>(&'a self, key: &'a str, value: Bytes) -> BoxFuture<'a, Result<Revision, StoreError>>;

    /// Writes `value` only if `key` is still at `expected` ([`StoreError::Conflict`]).
    fn update<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        expected: Revision,
    ) -> BoxFuture<'a, Result<Revision, StoreError>>;

    /// Removes `key`; true if it was there.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Every entry whose key starts with the tokens of `prefix` (`"users.acme"`
    /// lists `users.acme.*`, not `users.acme2.*`), in key order.
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<Entry>, StoreError>>;

    /// Changes from now on. A receiver that falls behind gets `Lagged` and
    /// must read again what it keeps.
    fn watch(&self) -> broadcast::Receiver<Change>;
}

/// Checks that `key` is a list of tokens a JetStream key allows.
pub fn check_key(key: &str) -> Result<(), StoreError> {
    let valid = !key.is_empty()
        && key.len() <= 1024
        && key.split('.').all(|t| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'='))
        });
    if valid {
        Ok(())
    } else {
        Err(StoreError::InvalidKey(key.to_owned()))
    }
}

/// Whether `key` lies under `prefix` (token-wise).
pub fn under(key: &str, prefix: &str) -> bool {
    key.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

/// Encodes any text as a key token (hex), for names that may hold other characters.
pub fn token(text: &str) -> String {
    crate::auth::hex(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_tokens() {
        assert!(check_key("orgs.acme").is_ok());
        assert!(check_key("users.acme.0a1b-x_y=").is_ok());
        for bad in [
            "",
            "orgs..acme",
            ".orgs",
            "orgs.",
            "orgs.a b",
            "orgs.a@b",
            "orgs.>",
        ] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
        assert!(under("users.acme.x", "users.acme"));
        assert!(under("users.acme", "users.acme"));
        assert!(!under("users.acme2.x", "users.acme"));
        assert_eq!(token("a@b"), "614062");
    }
}
