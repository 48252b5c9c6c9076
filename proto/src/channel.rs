//! Channel names and the grant patterns that match them.
//!
//! A name is `.`-separated tokens of `A-Z a-z 0-9 _ - : @ = ~`, at most
//! [`MAX_CHANNEL_LEN`] bytes: safe as a NATS subject token sequence, a URL path
//! segment and a JSON string without escaping. Patterns (only in grants) may
//! use `*` for exactly one token and a final `>` for one or more tokens.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ids::{InvalidId, string_id_impls};

/// Longest channel name, in bytes.
pub const MAX_CHANNEL_LEN: usize = 128;

fn name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':' | b'@' | b'=' | b'~')
}

fn check_tokens<'a>(
    what: &'static str,
    s: &'a str,
    mut token_ok: impl FnMut(&'a str, bool) -> Result<(), InvalidId>,
) -> Result<(), InvalidId> {
    if s.is_empty() || s.len() > MAX_CHANNEL_LEN {
        return Err(InvalidId::new(what, "must be 1 to 128 bytes"));
    }
    let mut tokens = s.split('.').peekable();
    while let Some(token) = tokens.next() {
        if token.is_empty() {
            return Err(InvalidId::new(what, "must not have empty '.'-separated tokens"));
        }
        token_ok(token, tokens.peek().is_none())?;
    }
    Ok(())
}

/// A concrete channel, such as `chat.42` or `turns.t-9`. Never contains wildcards.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

impl ChannelName {
    pub fn new(s: &str) -> Result<Self, InvalidId> {
        check_tokens("channel", s, |token, _| {
            if token.bytes().all(name_byte) {
                Ok(())
            } else {
                Err(InvalidId::new(
                    "channel",
                    "may only contain letters, digits, '.', '_', '-', ':', '@', '=' and '~'",
                ))
            }
        })?;
        Ok(Self(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

string_id_impls!(ChannelName);

/// A grant pattern: a channel name whose tokens may also be `*` (any one
/// token) or, as the last token, `>` (one or more tokens).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ChannelPattern(Arc<str>);

impl ChannelPattern {
    pub fn new(s: &str) -> Result<Self, InvalidId> {
        check_tokens("channel pattern", s, |token, last| match token {
            "*" => Ok(()),
            ">" if last => Ok(()),
            ">" => Err(InvalidId::new(
                "channel pattern",
                "may only use '>' as the last token",
            )),
            _ if token.bytes().all(name_byte) => Ok(()),
            _ => Err(InvalidId::new(
                "channel pattern",
                "tokens are names, '*' or a final '>'",
            )),
        })?;
        Ok(Self(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `channel` is covered by this pattern.
    pub fn matches(&self, channel: &ChannelName) -> bool {
        let mut pattern = self.0.split('.');
        let mut name = channel.as_str().split('.');
        loop {
            match (pattern.next(), name.next()) {
                (Some(">"), Some(_)) => return true,
                (Some("*"), Some(_)) => {}
                (Some(p), Some(n)) if p == n => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }
}

impl fmt::Display for ChannelPattern {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChannelPattern {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "ChannelPattern({:?})", &*self.0)
    }
}

impl Serialize for ChannelPattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ChannelPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        ChannelPattern::new(&s).map_err(serde::de::Error::custom)
    }
}

/// What a connection may do, from its token's claims.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grants {
    /// Channels it may subscribe to (and read history of).
    #[serde(default)]
    pub subscribe: Vec<ChannelPattern>,
    /// Channels it may publish on.
    #[serde(default)]
    pub publish: Vec<ChannelPattern>,
    /// Operator sessions it may `send` frames to.
    #[serde(default)]
    pub send: Vec<crate::client::TargetPattern>,
}

impl Grants {
    pub fn may_subscribe(&self, channel: &ChannelName) -> bool {
        self.subscribe.iter().any(|p| p.matches(channel))
    }

    pub fn may_publish(&self, channel: &ChannelName) -> bool {
        self.publish.iter().any(|p| p.matches(channel))
    }

    pub fn may_send(&self, target: &crate::client::Target) -> bool {
        self.send.iter().any(|p| p.matches(target))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn name(s: &str) -> ChannelName {
        ChannelName::new(s).unwrap()
    }

    fn pat(s: &str) -> ChannelPattern {
        ChannelPattern::new(s).unwrap()
    }

    #[test]
    fn valid_and_invalid_names() {
        for ok in ["chat", "chat.42", "turns.t-9", "user.alice@example", "a:b=c~d_e"] {
            assert!(ChannelName::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", ".", "a.", ".a", "a..b", "a b", "a/b", "chat.*", "chat.>", "é", "a\"b",
        ] {
            assert!(ChannelName::new(bad).is_err(), "{bad:?}");
        }
        assert!(ChannelName::new(&"a".repeat(128)).is_ok());
        assert!(ChannelName::new(&"a".repeat(129)).is_err());
    }

    #[test]
    fn patterns() {
        assert!(pat("chat.*").matches(&name("chat.42")));
        assert!(!pat("chat.*").matches(&name("chat.42.x")));
        assert!(!pat("chat.*").matches(&name("chat")));
        assert!(pat("chat.>").matches(&name("chat.42.x")));
        assert!(!pat("chat.>").matches(&name("chat")));
        assert!(pat(">").matches(&name("anything.at.all")));
        assert!(pat("*.42").matches(&name("chat.42")));
        assert!(pat("chat.42").matches(&name("chat.42")));
        assert!(!pat("chat.42").matches(&name("chat.43")));
        assert!(!pat("chat.4").matches(&name("chat.42")));
        assert!(ChannelPattern::new("a.>.b").is_err());
        assert!(ChannelPattern::new("a.b*").is_err());
        assert!(ChannelPattern::new("").is_err());
    }

    #[test]
    fn grants() {
        let g = Grants {
            subscribe: vec![pat("chat.*")],
            publish: vec![pat("chat.1")],
            send: vec![],
        };
        assert!(g.may_subscribe(&name("chat.2")));
        assert!(!g.may_publish(&name("chat.2")));
        assert!(g.may_publish(&name("chat.1")));
        assert!(!Grants::default().may_subscribe(&name("chat.1")));
    }

    proptest! {
        #[test]
        fn valid_names_are_their_own_pattern(s in "[a-z0-9_:@=~-]{1,10}(\\.[a-z0-9_:@=~-]{1,10}){0,5}") {
            let n = ChannelName::new(&s).unwrap();
            prop_assert!(ChannelPattern::new(&s).unwrap().matches(&n));
            prop_assert!(pat(">").matches(&n));
        }

        #[test]
        fn arbitrary_strings_never_panic(s in ".{0,200}") {
            let _ = ChannelName::new(&s);
            if let Ok(p) = ChannelPattern::new(&s) {
                let _ = p.matches(&name("a.b.c"));
            }
        }
    }
}
