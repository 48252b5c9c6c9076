//! The NATS subjects of cluster mode, inside an org's own account (so no
//! org id appears in them: the account is the tenant boundary): the
//! channel stream's `ch.<channel>`, its republished `live.<channel>`, and
//! publishers' `pub.<channel>`.
//! Defined here only, so the broker, its tests and publishers agree.

use crate::channel::{ChannelName, ChannelPattern};

/// Where publishers on NATS send a channel's events: `pub.<channel>`.
pub const PUBLISH_PREFIX: &str = "pub.";
/// Every publisher subject, as the broker subscribes to them.
pub const PUBLISH_ALL: &str = "pub.>";

/// What an org's channel stream captures: `ch.<channel>`.
pub const CHANNEL_ALL: &str = "ch.>";
/// Where the stream republishes each stored message: `live.<channel>`.
pub const LIVE_ALL: &str = "live.>";

/// A subject nobody answers: a request to it is a round trip to the server.
pub const PING: &str = "_SB.PING";

/// The stream subject of `channel`.
pub fn channel(channel: &ChannelName) -> String {
    format!("ch.{channel}")
}

/// Where `channel`'s stored messages are republished for pods to follow.
pub fn live(channel: &ChannelName) -> String {
    format!("live.{channel}")
}

/// The subject a publisher sends `channel`'s events to.
pub fn publish(channel: &ChannelName) -> String {
    format!("{PUBLISH_PREFIX}{channel}")
}

/// The subjects a publisher granted `pattern` may publish to (channel
/// patterns are NATS wildcards already: `*` one token, `>` the rest).
pub fn publish_grant(pattern: &ChannelPattern) -> String {
    format!("{PUBLISH_PREFIX}{pattern}")
}

/// The channel a publisher subject names, if it names a valid one.
pub fn published_channel(subject: &str) -> Option<ChannelName> {
    subject
        .strip_prefix(PUBLISH_PREFIX)
        .and_then(|c| ChannelName::new(c).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_round_trip() {
        let chat = ChannelName::new("chat.42").unwrap();
        assert_eq!(publish(&chat), "pub.chat.42");
        assert_eq!(
            (channel(&chat).as_str(), live(&chat).as_str()),
            ("ch.chat.42", "live.chat.42")
        );
        assert_eq!(published_channel("pub.chat.42"), Some(chat));
        assert_eq!(published_channel("pub."), None);
        assert_eq!(published_channel("live.chat"), None);
        assert_eq!(published_channel("pub.a b"), None);
        let p = ChannelPattern::new("chat.*").unwrap();
        assert_eq!(publish_grant(&p), "pub.chat.*");
    }
}
