//! Identifier newtypes. Each validates its input once, where it enters the
//! system, so the rest of the code can rely on the rules (and on the type:
//! an `OrgId` cannot be passed where a `ChannelName` is expected).

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest org id, in bytes. Org ids appear in URLs, NATS account names and logs.
pub const MAX_ORG_ID_LEN: usize = 64;
/// Longest subject (`sub` claim), in bytes.
pub const MAX_SUBJECT_LEN: usize = 256;
/// Longest string request id a client may send, in bytes.
pub const MAX_REQUEST_ID_LEN: usize = 64;

/// Why an identifier was refused. The message is safe to show to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {reason}")]
pub struct InvalidId {
    pub what: &'static str,
    pub reason: &'static str,
}

impl InvalidId {
    pub(crate) fn new(what: &'static str, reason: &'static str) -> Self {
        Self { what, reason }
    }
}

/// A tenant id: 1 to 64 characters out of `A-Z a-z 0-9 _ -`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrgId(Arc<str>);

impl OrgId {
    pub fn new(s: &str) -> Result<Self, InvalidId> {
        if s.is_empty() || s.len() > MAX_ORG_ID_LEN {
            return Err(InvalidId::new("org id", "must be 1 to 64 characters"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(InvalidId::new(
                "org id",
                "may only contain letters, digits, '_' and '-'",
            ));
        }
        Ok(Self(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The authenticated principal of a connection (a JWT `sub`): any non-empty
/// string up to 256 bytes without control characters.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subject(Arc<str>);

impl Subject {
    pub fn new(s: &str) -> Result<Self, InvalidId> {
        if s.is_empty() || s.len() > MAX_SUBJECT_LEN {
            return Err(InvalidId::new("subject", "must be 1 to 256 bytes"));
        }
        if s.chars().any(char::is_control) {
            return Err(InvalidId::new("subject", "must not contain control characters"));
        }
        Ok(Self(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A role an operator session may claim (`main-ai`): 1 to 64 characters out of
/// `A-Z a-z 0-9 _ -`. Exclusive inside an org.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoleName(Arc<str>);

impl RoleName {
    pub fn new(s: &str) -> Result<Self, InvalidId> {
        if s.is_empty() || s.len() > 64 {
            return Err(InvalidId::new("role", "must be 1 to 64 characters"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(InvalidId::new(
                "role",
                "may only contain letters, digits, '_' and '-'",
            ));
        }
        Ok(Self(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An operator session id: `op-` followed by a lowercase hyphenated UUID.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sid(Arc<str>);

impl Sid {
    pub fn new(s: &str) -> Result<Self, InvalidId> {
        let uuid = s
            .strip_prefix("op-")
            .ok_or(InvalidId::new("sid", "must start with 'op-'"))?;
        let shape_ok = uuid.len() == 36
            && uuid.bytes().enumerate().all(|(i, b)| match i {
                8 | 13 | 18 | 23 => b == b'-',
                _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
            });
        if !shape_ok {
            return Err(InvalidId::new("sid", "must be 'op-' and a lowercase UUID"));
        }
        Ok(Self(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A turn (one agent reply), named by the operator: 1 to 64 characters out of
/// `A-Z a-z 0-9 _ - . :`, unique among the session's live turns.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TurnId(Arc<str>);

impl TurnId {
    pub fn new(s: &str) -> Result<Self, InvalidId> {
        if s.is_empty() || s.len() > 64 {
            return Err(InvalidId::new("turn", "must be 1 to 64 characters"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
        {
            return Err(InvalidId::new(
                "turn",
                "may only contain letters, digits, '_', '-', '.' and ':'",
            ));
        }
        Ok(Self(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A connection, unique within one pod for the life of the process.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ConnId(pub u64);

/// Names one incarnation of a channel's history. When history is lost (an
/// in-memory store restarted, a stream recreated) the epoch changes, and a
/// client resuming with the old epoch learns that it cannot be recovered.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Epoch(String);

impl Epoch {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The `id` a client puts on a request, echoed on its reply: a non-negative
/// integer or a short string.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum RequestId {
    Num(u64),
    Str(Box<str>),
}

impl Serialize for RequestId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            RequestId::Num(n) => s.serialize_u64(*n),
            RequestId::Str(v) => s.serialize_str(v),
        }
    }
}

impl<'de> Deserialize<'de> for RequestId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = RequestId;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(
                    f,
                    "a non-negative integer or a string of at most {MAX_REQUEST_ID_LEN} bytes"
                )
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RequestId, E> {
                Ok(RequestId::Num(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RequestId, E> {
                if v.len() > MAX_REQUEST_ID_LEN {
                    return Err(E::invalid_length(v.len(), &self));
                }
                Ok(RequestId::Str(v.into()))
            }
        }
        d.deserialize_any(V)
    }
}

macro_rules! string_id_impls {
    ($t:ident) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($t), &*self.0)
            }
        }
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                $t::new(&s).map_err(serde::de::Error::custom)
            }
        }
        impl std::str::FromStr for $t {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, InvalidId> {
                $t::new(s)
            }
        }
    };
}
pub(crate) use string_id_impls;

string_id_impls!(OrgId);
string_id_impls!(Subject);
string_id_impls!(RoleName);
string_id_impls!(Sid);
string_id_impls!(TurnId);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "c{}", self.0)
    }
}

impl fmt::Debug for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "ConnId({})", self.0)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "Epoch({:?})", self.0)
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            RequestId::Num(n) => write!(f, "{n}"),
            RequestId::Str(s) => write!(f, "{s:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn org_ids() {
        assert!(OrgId::new("acme-1_x").is_ok());
        assert!(OrgId::new("").is_err());
        assert!(OrgId::new("a.b").is_err());
        assert!(OrgId::new("a b").is_err());
        assert!(OrgId::new(&"a".repeat(65)).is_err());
        assert!(OrgId::new(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn subjects() {
        assert!(Subject::new("alice@example.com").is_ok());
        assert!(Subject::new("").is_err());
        assert!(Subject::new("a\nb").is_err());
    }

    #[test]
    fn roles_and_sids() {
        assert!(RoleName::new("main-ai").is_ok());
        assert!(RoleName::new("main ai").is_err());
        assert!(Sid::new("op-0b3c6f1e-2a4d-4c8e-9f00-1234567890ab").is_ok());
        assert!(Sid::new("op-0B3C6F1E-2A4D-4C8E-9F00-1234567890AB").is_err());
        assert!(Sid::new("0b3c6f1e-2a4d-4c8e-9f00-1234567890ab").is_err());
        assert!(Sid::new("op-nope").is_err());
    }

    #[test]
    fn request_ids() {
        let n: RequestId = serde_json::from_str("7").unwrap();
        assert_eq!(n, RequestId::Num(7));
        let s: RequestId = serde_json::from_str("\"sub-1\"").unwrap();
        assert_eq!(s, RequestId::Str("sub-1".into()));
        assert!(serde_json::from_str::<RequestId>("-1").is_err());
        assert!(serde_json::from_str::<RequestId>("1.5").is_err());
        assert!(serde_json::from_str::<RequestId>("{}").is_err());
        let long = format!("\"{}\"", "x".repeat(65));
        assert!(serde_json::from_str::<RequestId>(&long).is_err());
    }
}
