//! The in-process backplane: one pod, offsets assigned here, a bounded
//! in-memory history per channel (count and age limits). A channel's history
//! gets a fresh random epoch whenever it is created, so a client resuming
//! across a restart (or after an idle channel was forgotten) learns its
//! offsets no longer apply.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use parking_lot::Mutex;
use serde_json::value::RawValue;
use switchboard_proto::{Epoch, PreparedFrame};

use crate::backplane::{Backplane, BackplaneError, BoxFuture, History, HistoryRead, Published};
use crate::hub::{ChannelKey, Hub};
use crate::telemetry;

/// How much history each channel keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Messages kept per channel (0 keeps none: resume then never recovers).
    pub max_messages: usize,
    /// Messages older than this are dropped.
    pub max_age: Duration,
}

struct Entry {
    offset: u64,
    at: Instant,
    frame: PreparedFrame,
}

struct Log {
    epoch: Epoch,
    top: u64,
    entries: VecDeque<Entry>,
    last_used: Instant,
    /// Set when the log was removed from the map; holders must look again.
    dead: bool,
}

impl Log {
    fn new(now: Instant) -> Self {
        Self {
            epoch: random_epoch(),
            top: 0,
            entries: VecDeque::new(),
            last_used: now,
            dead: false,
        }
    }

    fn trim(&mut self, now: Instant, limits: HistoryLimits) {
        while self.entries.len() > limits.max_messages
            || self
                .entries
                .front()
                .is_some_and(|e| now.duration_since(e.at) > limits.max_age)
        {
            self.entries.pop_front();
        }
    }

    fn read(&self, since: Option<u64>, limit: usize) -> HistoryRead {
        let mut read = HistoryRead {
            epoch: self.epoch.clone(),
            top: self.top,
            complete: true,
            messages: Vec::new(),
            more: false,
        };
        let Some(since) = since else { return read };
        if since >= self.top {
            read.complete = since == self.top;
            return read;
        }
        let first = self.entries.front().map(|e| e.offset);
        if first.is_none_or(|first| first > since + 1) {
            read.complete = false;
            return read;
        }
        // Offsets here are contiguous, so the first wanted entry is found by arithmetic.
        let skip = first.map_or(0, |first| (since + 1 - first) as usize);
        let mut wanted = self.entries.iter().skip(skip);
        read.messages = wanted
            .by_ref()
            .take(limit)
            .map(|e| (e.offset, e.frame.clone()))
            .collect();
        read.more = wanted.next().is_some();
        read
    }
}

fn random_epoch() -> Epoch {
    let mut bytes = [0u8; 8];
    // The OS RNG failing is not something a broker can work around; a fixed
    // fallback would only make epochs collide across restarts, so make them
    // time-based instead.
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        bytes = nanos.to_le_bytes();
    }
    Epoch::new(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

pub struct InProcess {
    hub: Arc<Hub>,
    logs: DashMap<ChannelKey, Arc<Mutex<Log>>>,
    limits: HistoryLimits,
}

impl InProcess {
    pub fn new(hub: Arc<Hub>, limits: HistoryLimits) -> Self {
        Self {
            hub,
            logs: DashMap::new(),
            limits,
        }
    }

    /// Runs `f` on `key`'s log, creating it if needed.
    fn with_log<T>(&self, key: &ChannelKey, f: impl FnOnce(&mut Log, Instant) -> T) -> T {
        loop {
            let now = Instant::now();
            let log = Arc::clone(
                self.logs
                    .entry(key.clone())
                    .or_insert_with(|| Arc::new(Mutex::new(Log::new(now))))
                    .value(),
            );
            let mut log = log.lock();
            if log.dead {
                continue;
            }
            log.last_used = now;
            log.trim(now, self.limits);
            return f(&mut log, now);
        }
    }

    /// Forgets channels that retain nothing, have no local subscriber and
    /// were not used for `max_age`. Returns how many were forgotten.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let before = self.logs.len();
        self.logs.retain(|key, log| {
            let mut log = log.lock();
            log.trim(now, self.limits);
            let idle = log.entries.is_empty()
                && now.duration_since(log.last_used) > self.limits.max_age
                && !self.hub.has_subscribers(key);
            log.dead = idle;
            !idle
        });
        before - self.logs.len()
    }

    /// Channels with a log in memory.
    pub fn channel_count(&self) -> usize {
        self.logs.len()
    }
}

impl Backplane for InProcess {
    fn publish<'a>(
        &'a self,
        key: &'a ChannelKey,
        data: &'a RawValue,
    ) -> BoxFuture<'a, Result<Published, BackplaneError>> {
        let started = Instant::now();
        let published = self.with_log(key, |log, now| {
            log.top += 1;
            let offset = log.top;
            let frame = PreparedFrame::message(&key.channel, offset, data);
            // Delivering under the log's lock is what orders a channel's
            // messages for every subscriber, and what lets a resuming
            // subscriber read history without missing a message.
            self.hub.deliver(key, offset, &frame);
            if self.limits.max_messages > 0 {
                log.entries.push_back(Entry {
                    offset,
                    at: now,
                    frame,
                });
                log.trim(now, self.limits);
            }
            Published {
                offset,
                epoch: log.epoch.clone(),
            }
        });
        telemetry::published(started);
        Box::pin(std::future::ready(Ok(published)))
    }

    fn attach<'a>(&'a self, _key: &'a ChannelKey) -> BoxFuture<'a, Result<(), BackplaneError>> {
        // Every publish on this pod already reaches this pod's hub.
        Box::pin(std::future::ready(Ok(())))
    }

    fn detach(&self, _key: &ChannelKey) {}
}

impl History for InProcess {
    fn read<'a>(
        &'a self,
        key: &'a ChannelKey,
        since: Option<u64>,
        limit: usize,
    ) -> BoxFuture<'a, Result<HistoryRead, BackplaneError>> {
        let read = self.with_log(key, |log, _| log.read(since, limit));
        Box::pin(std::future::ready(Ok(read)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_proto::{ChannelName, OrgId};

    fn key(ch: &str) -> ChannelKey {
        ChannelKey::new(OrgId::new("o").unwrap(), ChannelName::new(ch).unwrap())
    }

    fn backplane(max_messages: usize, max_age: Duration) -> InProcess {
        InProcess::new(
            Arc::new(Hub::new(16)),
            HistoryLimits {
                max_messages,
                max_age,
            },
        )
    }

    fn data(n: u64) -> Box<RawValue> {
        RawValue::from_string(n.to_string()).unwrap()
    }

    fn block_on<T>(f: BoxFuture<'_, T>) -> T {
        futures_util::FutureExt::now_or_never(f).expect("in-process futures are ready")
    }

    fn publish(bp: &InProcess, k: &ChannelKey, n: u64) -> Published {
        block_on(bp.publish(k, &data(n))).unwrap()
    }

    fn read(bp: &InProcess, k: &ChannelKey, since: Option<u64>, limit: usize) -> HistoryRead {
        block_on(bp.read(k, since, limit)).unwrap()
    }

    fn read_offsets(r: &HistoryRead) -> Vec<u64> {
        r.messages.iter().map(|(o, _)| *o).collect()
    }

    #[test]
    fn offsets_are_monotonic_per_channel_and_epoch_is_stable() {
        let bp = backplane(10, Duration::from_secs(60));
        let (a, b) = (key("a"), key("b"));
        let epoch = read(&bp, &a, None, 0).epoch;
        for i in 1..=5 {
            let p = publish(&bp, &a, i);
            assert_eq!((p.offset, &p.epoch), (i, &epoch));
        }
        assert_eq!(publish(&bp, &b, 1).offset, 1);
        assert_ne!(read(&bp, &b, None, 0).epoch, epoch);
    }

    #[test]
    fn since_replays_exactly_what_came_after() {
        let bp = backplane(10, Duration::from_secs(60));
        let k = key("a");
        for i in 1..=5 {
            publish(&bp, &k, i);
        }
        let r = read(&bp, &k, Some(2), 100);
        assert!(r.complete);
        assert_eq!((read_offsets(&r), r.top, r.more), (vec![3, 4, 5], 5, false));
        let r = read(&bp, &k, Some(2), 2);
        assert_eq!((read_offsets(&r), r.more), (vec![3, 4], true));
        let r = read(&bp, &k, Some(5), 100);
        assert!(r.complete && r.messages.is_empty());
        assert!(
            !read(&bp, &k, Some(6), 100).complete,
            "a future offset cannot be recovered"
        );
        let r = read(&bp, &k, None, 100);
        assert!(r.complete && r.messages.is_empty());
    }

    #[test]
    fn trimmed_history_is_incomplete() {
        let bp = backplane(3, Duration::from_secs(60));
        let k = key("a");
        for i in 1..=10 {
            publish(&bp, &k, i);
        }
        assert!(!read(&bp, &k, Some(5), 100).complete);
        let r = read(&bp, &k, Some(7), 100);
        assert!(r.complete);
        assert_eq!(read_offsets(&r), vec![8, 9, 10]);
    }

    #[test]
    fn old_messages_age_out() {
        let bp = backplane(100, Duration::from_millis(20));
        let k = key("a");
        publish(&bp, &k, 1);
        std::thread::sleep(Duration::from_millis(40));
        publish(&bp, &k, 2);
        assert!(!read(&bp, &k, Some(0), 100).complete);
        assert_eq!(read_offsets(&read(&bp, &k, Some(1), 100)), vec![2]);
    }

    #[test]
    fn sweep_forgets_idle_channels_with_a_new_epoch_after() {
        let bp = backplane(100, Duration::from_millis(10));
        let k = key("a");
        publish(&bp, &k, 1);
        let epoch = read(&bp, &k, None, 0).epoch;
        assert_eq!(bp.sweep(), 0, "recently used");
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(bp.sweep(), 1);
        assert_eq!(bp.channel_count(), 0);
        assert_ne!(read(&bp, &k, None, 0).epoch, epoch);
    }

    #[test]
    fn zero_history_never_recovers_a_gap() {
        let bp = backplane(0, Duration::from_secs(60));
        let k = key("a");
        publish(&bp, &k, 1);
        publish(&bp, &k, 2);
        assert!(!read(&bp, &k, Some(1), 100).complete);
        assert!(read(&bp, &k, Some(2), 100).complete);
    }
}
