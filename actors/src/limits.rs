//! Per-connection and per-org limits the actors enforce. Defaults live in
//! `src/config.rs` with the reasons for each.

use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Limits {
    /// Frames a connection may have queued before it is cut off as a slow consumer.
    pub outbound_queue: usize,
    /// Channels one connection may subscribe to.
    pub max_subscriptions: usize,
    /// Publishes (and sends) per second per connection, sustained; 0 = unlimited.
    pub publish_rate: u32,
    /// Publishes a connection may burst above the sustained rate.
    pub publish_burst: u32,
    /// Most messages replayed on one resume.
    pub replay_limit: usize,
    /// How long an org with no connection keeps its actor.
    pub org_idle: Duration,
    /// How long an operator session lives without a socket.
    pub session_expiry: Duration,
    /// How long a live turn waits for its operator's socket to come back
    /// before it is ended with `operator_gone`.
    pub turn_grace: Duration,
    /// Frames kept for an operator while its socket is away.
    pub operator_buffer: usize,
    /// Most text one turn may hold.
    pub max_turn_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            outbound_queue: 1024,
            max_subscriptions: 256,
            publish_rate: 50,
            publish_burst: 100,
            replay_limit: 10_000,
            org_idle: Duration::from_secs(60),
            session_expiry: Duration::from_secs(120),
            turn_grace: Duration::from_secs(15),
            operator_buffer: 1024,
            max_turn_bytes: 1 << 20,
        }
    }
}
