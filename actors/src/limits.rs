//! Per-connection, per-session and per-org limits the actors enforce, each
//! default with its reason. `src/config.rs` reads them from the config file
//! and checks them together with [`Limits::problems`].

use std::time::Duration;

use crate::sink::QUEUE_SLOT_BYTES;

/// Bytes a connection may have queued for it. About ten seconds of a busy
/// channel of 1 KiB messages: a client further behind than that is cheaper
/// to cut off (it resumes from history) than to buffer for. Bounded in bytes,
/// not frames, so a few large messages cannot pin megabytes.
pub const DEFAULT_OUTBOUND_QUEUE_BYTES: usize = 1 << 20;
/// Enough for a dashboard watching many channels; more is usually a bug.
pub const DEFAULT_MAX_SUBSCRIPTIONS: usize = 256;
/// A person types far slower; an agent streaming tokens publishes through
/// its operator session or HTTP, not through a client connection.
pub const DEFAULT_PUBLISH_RATE: u32 = 50;
pub const DEFAULT_PUBLISH_BURST: u32 = 100;
/// Subscribes and unsubscribes per second per connection. A reconnecting
/// dashboard resubscribes everything at once (the burst covers
/// `max_subscriptions`); a client churning through channel names is slowed
/// to a pace that costs the pod nothing.
pub const DEFAULT_SUBSCRIBE_RATE: u32 = 50;
pub const DEFAULT_SUBSCRIBE_BURST: u32 = 300;
/// Refusals (error replies) per second per connection, and the burst: an
/// honest client rarely gets one; past these, a connection's next frame is
/// read only once the budget refills, so a client flooding bad or
/// over-the-rate requests is slowed by TCP instead of costing a reply each.
pub const REFUSAL_RATE: u32 = 20;
pub const REFUSAL_BURST: u32 = 100;
/// How long an org with no connection keeps its actor warm.
pub const DEFAULT_ORG_IDLE: Duration = Duration::from_secs(60);
/// Long enough for an agent runtime to restart or a deploy to roll.
pub const DEFAULT_SESSION_EXPIRY: Duration = Duration::from_secs(120);
/// A browser watching a turn should not spin longer than this for an
/// operator gone quiet.
pub const DEFAULT_TURN_GRACE: Duration = Duration::from_secs(15);
/// What an absent operator's session keeps for it, in bytes. A quarter of a
/// connection's queue, so what it replays on return (and the gap notice)
/// always fits into its new socket's queue.
pub const DEFAULT_OPERATOR_BUFFER_BYTES: usize = 256 << 10;
/// A long agent reply is tens of KiB; half a megabyte is a runaway. Counted
/// as the reply's JSON-escaped size, which is what its snapshot costs a
/// subscriber's queue, so it must stay below the queue bound.
pub const DEFAULT_MAX_TURN_BYTES: usize = 512 << 10;
/// An agent platform runs a few agents and consoles per org; each session
/// may hold up to its buffer while its operator is away.
pub const DEFAULT_MAX_SESSIONS_PER_ORG: usize = 100;
/// One agent streaming several replies at once (tools, parallel answers).
pub const DEFAULT_MAX_TURNS_PER_SESSION: usize = 16;
/// The longest token rollup window a turn may ask for: past it, a reply
/// would read as stalled.
pub const MAX_ROLLUP: Duration = Duration::from_secs(10);
/// What a frame costs beyond its payload, at most: the WebSocket header
/// and the JSON around the payload (type, channel name, offsets, ids).
pub const FRAME_ENVELOPE_BYTES: usize = 1024;

#[derive(Clone, Debug)]
pub struct Limits {
    /// Bytes a connection may have queued (each frame's length plus
    /// [`QUEUE_SLOT_BYTES`]) before it is cut off as a slow consumer.
    pub outbound_queue_bytes: usize,
    /// Channels one connection may subscribe to.
    pub max_subscriptions: usize,
    /// Publishes (and sends) per second per connection, sustained; 0 = unlimited.
    pub publish_rate: u32,
    /// Publishes a connection may burst above the sustained rate.
    pub publish_burst: u32,
    /// Subscribes and unsubscribes per second per connection; 0 = unlimited.
    pub subscribe_rate: u32,
    pub subscribe_burst: u32,
    /// Most messages replayed on one resume.
    pub replay_limit: usize,
    /// How long an org with no connection keeps its actor.
    pub org_idle: Duration,
    /// How long an operator session lives without a socket.
    pub session_expiry: Duration,
    /// How long a live turn waits for its operator's socket to come back
    /// before it is ended with `operator_gone`.
    pub turn_grace: Duration,
    /// Bytes kept for an operator while its socket is away.
    pub operator_buffer_bytes: usize,
    /// Most text one turn may hold, JSON-escaped.
    pub max_turn_bytes: usize,
    /// Operator sessions one org may hold at once.
    pub max_sessions_per_org: usize,
    /// Live turns one operator session may stream at once.
    pub max_turns_per_session: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            outbound_queue_bytes: DEFAULT_OUTBOUND_QUEUE_BYTES,
            max_subscriptions: DEFAULT_MAX_SUBSCRIPTIONS,
            publish_rate: DEFAULT_PUBLISH_RATE,
            publish_burst: DEFAULT_PUBLISH_BURST,
            subscribe_rate: DEFAULT_SUBSCRIBE_RATE,
            subscribe_burst: DEFAULT_SUBSCRIBE_BURST,
            replay_limit: crate::memory::DEFAULT_HISTORY_MESSAGES,
            org_idle: DEFAULT_ORG_IDLE,
            session_expiry: DEFAULT_SESSION_EXPIRY,
            turn_grace: DEFAULT_TURN_GRACE,
            operator_buffer_bytes: DEFAULT_OPERATOR_BUFFER_BYTES,
            max_turn_bytes: DEFAULT_MAX_TURN_BYTES,
            max_sessions_per_org: DEFAULT_MAX_SESSIONS_PER_ORG,
            max_turns_per_session: DEFAULT_MAX_TURNS_PER_SESSION,
        }
    }
}

impl Limits {
    /// What is wrong with these limits together, given the largest frame a
    /// client may send: every frame the server builds must fit into an empty
    /// queue, and an operator's buffer (with its gap notice) must fit into
    /// its new socket's queue.
    pub fn problems(&self, max_frame_bytes: usize) -> Vec<String> {
        let mut problems = Vec::new();
        let queue = self.outbound_queue_bytes;
        let fits = |bytes: usize| bytes + FRAME_ENVELOPE_BYTES + QUEUE_SLOT_BYTES <= queue;
        for (name, value) in [
            ("limits.outbound_queue_bytes", queue),
            ("limits.max_subscriptions", self.max_subscriptions),
            ("operators.max_turn_bytes", self.max_turn_bytes),
            ("operators.max_sessions_per_org", self.max_sessions_per_org),
            ("operators.max_turns_per_session", self.max_turns_per_session),
        ] {
            if value == 0 {
                problems.push(format!("{name} must be at least 1"));
            }
        }
        if !fits(max_frame_bytes) {
            problems.push(format!(
                "limits.outbound_queue_bytes ({queue}) must exceed limits.max_frame_bytes \
                 ({max_frame_bytes}) by at least {} bytes, or a maximal message could never be delivered",
                FRAME_ENVELOPE_BYTES + QUEUE_SLOT_BYTES
            ));
        }
        if !fits(self.max_turn_bytes) {
            problems.push(format!(
                "limits.outbound_queue_bytes ({queue}) must exceed operators.max_turn_bytes ({}) \
                 by at least {} bytes, or a long turn's snapshot could never be delivered",
                self.max_turn_bytes,
                FRAME_ENVELOPE_BYTES + QUEUE_SLOT_BYTES
            ));
        }
        if !fits(self.operator_buffer_bytes) {
            problems.push(format!(
                "operators.buffer_bytes ({}) must be below limits.outbound_queue_bytes ({queue}) \
                 by at least {} bytes, so a returning operator's replay fits its socket's queue",
                self.operator_buffer_bytes,
                FRAME_ENVELOPE_BYTES + QUEUE_SLOT_BYTES
            ));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fit_together() {
        assert_eq!(Limits::default().problems(64 << 10), Vec::<String>::new());
    }

    #[test]
    fn every_misfit_is_named() {
        let limits = Limits {
            outbound_queue_bytes: 100_000,
            max_turn_bytes: 100_000,
            operator_buffer_bytes: 200_000,
            max_sessions_per_org: 0,
            ..Limits::default()
        };
        let problems = limits.problems(100_000);
        assert_eq!(problems.len(), 4, "{problems:#?}");
        assert!(problems[0].starts_with("operators.max_sessions_per_org"));
    }
}
