//! [`Liveness`]: the timing side of a socket, kept in atomics so one sweep a
//! second (the `Connections` supervisor's heartbeat) can judge every
//! connection: ping a quiet peer, close a silent one, one past its token's
//! expiry, or one trickling a message slower than allowed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use switchboard_actors::CloseReason;
use switchboard_actors::clock::{self, Instant, millis_between};

use crate::auth::now_secs;

/// When to ping a quiet peer, when to give up on a silent one, and how long
/// one message may take to arrive.
#[derive(Clone, Copy, Debug)]
pub struct Heartbeat {
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    pub frame_timeout: Duration,
}

/// What a heartbeat decided about a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Fine,
    /// Quiet for half an interval: send it a ping.
    Ping,
    Close(CloseReason),
}

pub struct Liveness {
    heartbeat: Heartbeat,
    /// The origin of the millisecond clocks below.
    born: Instant,
    last_heard_ms: AtomicU64,
    /// When the heartbeat next pings. Each connection keeps its own phase,
    /// so connections opened together are not all pinged in the same sweep.
    next_ping_ms: AtomicU64,
    /// When the connection's token expires (`u64::MAX`: never).
    expires_ms: AtomicU64,
    /// One more than when the message being read began; 0 between messages.
    message_since_ms: AtomicU64,
}

impl Liveness {
    pub fn new(heartbeat: Heartbeat) -> Self {
        // Spread first pings over half an interval, deterministically.
        static SPREAD: AtomicU64 = AtomicU64::new(0);
        let interval = heartbeat.ping_interval.as_millis() as u64;
        let n = SPREAD.fetch_add(1, Ordering::Relaxed);
        let jitter = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) % (interval / 2).max(1);
        Self {
            heartbeat,
            born: clock::now(),
            last_heard_ms: AtomicU64::new(0),
            next_ping_ms: AtomicU64::new(interval - jitter),
            expires_ms: AtomicU64::new(u64::MAX),
            message_since_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        millis_between(self.born, clock::now())
    }

    /// The connection ends once `unix_secs` (wall clock) has passed.
    pub fn expire_at(&self, unix_secs: u64) {
        let left_ms = unix_secs.saturating_sub(now_secs()).saturating_mul(1000);
        self.expires_ms
            .store(self.now_ms().saturating_add(left_ms), Ordering::Relaxed);
    }

    /// The peer sent something: it is alive.
    pub fn heard(&self) {
        self.last_heard_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Starts the clock on a message when one began (the reader's progress
    /// changed and is mid-message), stops it between messages.
    pub fn track_message(&self, before: Option<u64>, after: Option<u64>) {
        match after {
            None => self.message_since_ms.store(0, Ordering::Relaxed),
            Some(_) if after != before => self.message_since_ms.store(self.now_ms() + 1, Ordering::Relaxed),
            Some(_) => {}
        }
    }

    /// Judges the connection at `now`.
    pub fn check(&self, now: Instant) -> Verdict {
        let now = millis_between(self.born, now);
        let ms = |d: Duration| d.as_millis() as u64;
        if now >= self.expires_ms.load(Ordering::Relaxed) {
            return Verdict::Close(CloseReason::TokenExpired);
        }
        let since = self.message_since_ms.load(Ordering::Relaxed);
        if since > 0 && now.saturating_sub(since - 1) >= ms(self.heartbeat.frame_timeout) {
            return Verdict::Close(CloseReason::FrameTimeout);
        }
        let silent = now.saturating_sub(self.last_heard_ms.load(Ordering::Relaxed));
        if silent >= ms(self.heartbeat.idle_timeout) {
            return Verdict::Close(CloseReason::IdleTimeout);
        }
        let interval = ms(self.heartbeat.ping_interval);
        if now < self.next_ping_ms.load(Ordering::Relaxed) {
            return Verdict::Fine;
        }
        self.next_ping_ms.store(now + interval, Ordering::Relaxed);
        // A peer heard from recently needs no ping this round.
        if silent >= interval / 2 {
            Verdict::Ping
        } else {
            Verdict::Fine
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEARTBEAT: Heartbeat = Heartbeat {
        ping_interval: Duration::from_secs(25),
        idle_timeout: Duration::from_secs(60),
        frame_timeout: Duration::from_secs(10),
    };

    #[tokio::test(start_paused = true)]
    async fn pings_quiet_peers_and_closes_silent_expired_and_trickling_ones() {
        let l = Liveness::new(HEARTBEAT);
        let at = |secs| l.born + Duration::from_secs(secs);
        assert_eq!(l.check(at(30)), Verdict::Ping, "30 s of silence: a ping");
        assert_eq!(l.check(at(31)), Verdict::Fine, "not again this interval");
        assert_eq!(l.check(at(60)), Verdict::Close(CloseReason::IdleTimeout));

        let l = Liveness::new(HEARTBEAT);
        l.track_message(None, Some(0));
        assert_eq!(l.check(l.born + Duration::from_secs(9)), Verdict::Fine);
        l.track_message(Some(0), Some(0)); // the same message, still coming
        assert_eq!(
            l.check(l.born + Duration::from_secs(10)),
            Verdict::Close(CloseReason::FrameTimeout)
        );

        let l = Liveness::new(HEARTBEAT);
        l.expire_at(now_secs() + 5);
        assert_eq!(l.check(l.born + Duration::from_secs(4)), Verdict::Fine);
        assert_eq!(
            l.check(l.born + Duration::from_secs(6)),
            Verdict::Close(CloseReason::TokenExpired)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_that_completes_restarts_the_clock() {
        let l = Liveness::new(HEARTBEAT);
        l.track_message(None, Some(0));
        tokio::time::advance(Duration::from_secs(8)).await;
        l.heard();
        l.track_message(Some(0), Some(1)); // one finished, another began
        assert_eq!(l.check(l.born + Duration::from_secs(12)), Verdict::Fine);
        l.track_message(Some(1), None);
        assert_eq!(
            l.check(l.born + Duration::from_secs(19)),
            Verdict::Fine,
            "between messages, only silence counts"
        );
    }
}
