//! The broker's one monotonic clock. Every timing decision (heartbeats,
//! token expiry on open sockets, history age, operator grace and expiry,
//! rollup windows, rate limits) reads tokio's clock, so a test pauses and
//! advances time (`tokio::time::pause`, `advance`) instead of sleeping.
//! Only JWT and ticket expiry, which are wall-clock by definition, read the
//! system time, and they do so once, at connect.

pub use tokio::time::Instant;

/// Now, on the clock tests can pause.
pub fn now() -> Instant {
    Instant::now()
}

/// Milliseconds from `since` to `now`, for clocks kept in atomics.
pub fn millis_between(since: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(since).as_millis()).unwrap_or(u64::MAX)
}

/// [`governor`]'s view of this clock, so rate limits pause with it too.
#[derive(Clone, Copy, Debug, Default)]
pub struct RateClock;

impl governor::clock::Clock for RateClock {
    type Instant = std::time::Instant;

    fn now(&self) -> std::time::Instant {
        Instant::now().into_std()
    }
}

/// A direct (per-connection) rate limiter on [`RateClock`].
pub type RateLimiter = governor::RateLimiter<
    governor::state::NotKeyed,
    governor::state::InMemoryState,
    RateClock,
    governor::middleware::NoOpMiddleware<std::time::Instant>,
>;

/// Takes one cell from `limiter`; when it is spent, when the next one is due.
pub fn spent(limiter: &RateLimiter) -> Option<Instant> {
    limiter
        .check()
        .err()
        .map(|not_until| Instant::from_std(not_until.earliest_possible()))
}

/// A limiter allowing `rate` per second with bursts of `burst`; `None` when
/// `rate` is 0 (unlimited).
pub fn rate_limiter(rate: u32, burst: u32) -> Option<RateLimiter> {
    let rate = std::num::NonZeroU32::new(rate)?;
    let burst = std::num::NonZeroU32::new(burst).unwrap_or(rate);
    let quota = governor::Quota::per_second(rate).allow_burst(burst);
    Some(governor::RateLimiter::direct_with_clock(quota, RateClock))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn rate_limits_follow_the_paused_clock() {
        let limiter = rate_limiter(2, 2).unwrap();
        assert!(limiter.check().is_ok() && limiter.check().is_ok());
        let due = spent(&limiter).expect("the burst is spent");
        assert_eq!(
            due - Instant::now(),
            Duration::from_millis(500),
            "the next in half a second at 2/s"
        );
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(spent(&limiter), None, "half a second refilled one");
        assert!(rate_limiter(0, 5).is_none(), "0 is unlimited");
    }

    #[test]
    fn millis_saturate() {
        let t = Instant::now();
        assert_eq!(millis_between(t + Duration::from_secs(1), t), 0);
        assert_eq!(millis_between(t, t + Duration::from_millis(1500)), 1500);
    }
}
