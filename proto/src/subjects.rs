//! The NATS subjects of cluster mode, inside an org's own account (so no
//! org id appears in them: the account is the tenant boundary): the
//! channel stream's `ch.<channel>.!.m` (messages) and `ch.<channel>.!.t.<turn>`
//! (a live turn's events), their republished `live.…` twins, and
//! publishers' `pub.<channel>`. `!` ends the channel name (no channel name
//! contains it), so one wildcard follows exactly one channel, in order.
//! Defined here only, so the broker, its tests and publishers agree.

use crate::channel::{ChannelName, ChannelPattern};
use crate::ids::{Sid, TurnId};

/// Where publishers on NATS send a channel's events: `pub.<channel>`.
pub const PUBLISH_PREFIX: &str = "pub.";
/// Every publisher subject, as the broker subscribes to them.
pub const PUBLISH_ALL: &str = "pub.>";
/// Where the org's publisher-event stream republishes each event, with its
/// sequence, for every pod to take into the channel stream:
/// `in.<channel>`.
pub const INGEST_ALL: &str = "in.>";
const INGEST_PREFIX: &str = "in.";

/// What an org's channel stream captures.
pub const CHANNEL_ALL: &str = "ch.>";
/// Where the stream republishes each stored message: `live.<channel>`.
pub const LIVE_ALL: &str = "live.>";

/// Where frames for an operator session hosted on another pod go: the pod
/// hosting it answers requests on `op.<sid>`.
pub fn session(sid: &Sid) -> String {
    format!("op.{sid}")
}

/// Where frames wait for an operator session whose operator is away,
/// for whichever pod it comes back to: `parked.<sid>`.
pub fn parked(sid: &Sid) -> String {
    format!("parked.{sid}")
}

/// What an org's parking stream captures.
pub const PARKED_ALL: &str = "parked.>";

/// Where pods ask each other who is subscribed to a channel (the payload
/// names it).
pub const PRESENCE: &str = "sb.presence";
/// Where pods ask each other which operator sessions of the org they host.
pub const SESSIONS: &str = "sb.sessions";
/// Every question pods ask each other (one subscription answers them all).
pub const QUESTIONS: &str = "sb.*";

/// A subject nobody answers: a request to it is a round trip to the server.
pub const PING: &str = "_SB.PING";

/// The stream subject of `channel`'s messages (and finished turns).
pub fn channel(channel: &ChannelName) -> String {
    format!("ch.{channel}.!.m")
}

/// The stream subject of one live turn's events on `channel`.
pub fn turn(channel: &ChannelName, turn: &TurnId) -> String {
    format!("ch.{channel}.!.t.{turn}")
}

/// Every live turn's subject on `channel`.
pub fn turns(channel: &ChannelName) -> String {
    format!("ch.{channel}.!.t.>")
}

/// Everything stored for `channel`: its messages and its live turns.
pub fn stored_all(channel: &ChannelName) -> String {
    format!("ch.{channel}.!.>")
}

/// Where everything stored for `channel` is republished for pods to follow
/// (one subscription: the stream's order holds across its subjects).
pub fn live(channel: &ChannelName) -> String {
    format!("live.{channel}.!.>")
}

/// What a subject of `channel` (stream or republished) carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    Messages,
    Turn(TurnId),
}

/// Which part of `channel` `subject` is, if it is one of the channel's.
pub fn part(subject: &str, channel: &ChannelName) -> Option<Part> {
    let rest = subject
        .strip_prefix("ch.")
        .or_else(|| subject.strip_prefix("live."))?
        .strip_prefix(channel.as_str())?
        .strip_prefix(".!.")?;
    match rest {
        "m" => Some(Part::Messages),
        _ => TurnId::new(rest.strip_prefix("t.")?).ok().map(Part::Turn),
    }
}

/// The stream subject a republished subject twins.
pub fn stored(live_subject: &str) -> Option<String> {
    live_subject
        .strip_prefix("live.")
        .map(|rest| format!("ch.{rest}"))
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

/// The channel a republished publisher event (`in.<channel>`) names.
pub fn ingested_channel(subject: &str) -> Option<ChannelName> {
    subject
        .strip_prefix(INGEST_PREFIX)
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
            ("ch.chat.42.!.m", "live.chat.42.!.>")
        );
        let t = TurnId::new("reply.7:a").unwrap();
        assert_eq!(turn(&chat, &t), "ch.chat.42.!.t.reply.7:a");
        assert_eq!(turns(&chat), "ch.chat.42.!.t.>");
        assert_eq!(part("live.chat.42.!.m", &chat), Some(Part::Messages));
        assert_eq!(part("ch.chat.42.!.t.reply.7:a", &chat), Some(Part::Turn(t)));
        // Another channel's subjects, however alike, are not this one's.
        let chat4 = ChannelName::new("chat.4").unwrap();
        assert_eq!(part("live.chat.42.!.m", &chat4), None);
        assert_eq!(part("live.chat.42.!.x", &chat), None);
        assert_eq!(part("live.chat.42.!.t.", &chat), None);
        assert_eq!(stored("live.chat.42.!.m").as_deref(), Some("ch.chat.42.!.m"));
        assert_eq!(published_channel("pub.chat.42"), Some(chat));
        assert_eq!(published_channel("pub."), None);
        assert_eq!(published_channel("live.chat"), None);
        assert_eq!(ingested_channel("in.chat.42"), ChannelName::new("chat.42").ok());
        assert_eq!(ingested_channel("pub.chat.42"), None);
        assert_eq!(published_channel("pub.a b"), None);
        let p = ChannelPattern::new("chat.*").unwrap();
        assert_eq!(publish_grant(&p), "pub.chat.*");
    }
}
