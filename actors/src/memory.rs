//! The in-process backplane: one pod, offsets assigned here, a bounded
//! in-memory history per channel (count and age limits). A channel's history
//! gets a fresh random epoch whenever it is created, so a client resuming
//! across a restart (or after an idle channel was forgotten) learns its
//! offsets no longer apply.
//!
//! Turns are compacted: a live turn is kept as its text so far (replayed as
//! one `turn_snapshot`), a finished one as one `turn` message at the offset
//! of its end. Tokens are not kept one by one.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use parking_lot::Mutex;
use switchboard_proto::{Epoch, PreparedFrame, TurnEvent, TurnId, TurnStatus};

use crate::backplane::{Backplane, BackplaneError, BoxFuture, Event, History, HistoryRead, Published};
use crate::hub::{ChannelKey, Hub, Offsetted};
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

struct LiveTurn {
    start_offset: u64,
    last_offset: u64,
    text: String,
}

struct Log {
    epoch: Epoch,
    top: u64,
    entries: VecDeque<Entry>,
    /// The newest offset dropped by the count or age limit: a resume from
    /// before it cannot be exact.
    trimmed_through: u64,
    turns: HashMap<TurnId, LiveTurn>,
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
            trimmed_through: 0,
            turns: HashMap::new(),
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
            if let Some(e) = self.entries.pop_front() {
                self.trimmed_through = self.trimmed_through.max(e.offset);
            }
        }
    }

    fn keep(&mut self, offset: u64, now: Instant, frame: PreparedFrame, limits: HistoryLimits) {
        if limits.max_messages == 0 {
            self.trimmed_through = offset;
            return;
        }
        self.entries.push_back(Entry {
            offset,
            at: now,
            frame,
        });
        self.trim(now, limits);
    }

    fn read(&self, key: &ChannelKey, since: Option<u64>, limit: usize) -> HistoryRead {
        let mut read = HistoryRead {
            epoch: self.epoch.clone(),
            top: self.top,
            complete: true,
            messages: Vec::new(),
            more: false,
        };
        // Without `since`, a joiner gets only the live turns, so it can show
        // a reply in progress without replaying history.
        let (since, kept) = match since {
            None => (0, self.entries.range(self.entries.len()..)),
            Some(since) if since > self.top || since < self.trimmed_through => {
                read.complete = false;
                return read;
            }
            Some(since) => (
                since,
                self.entries
                    .range(self.entries.partition_point(|e| e.offset <= since)..),
            ),
        };
        let kept = kept.map(|e| (e.offset, e.frame.clone()));
        let mut live: Vec<_> = self
            .turns
            .iter()
            .filter(|(_, t)| t.last_offset > since)
            .map(|(id, t)| {
                let event = TurnEvent::Snapshot {
                    turn: id,
                    start_offset: t.start_offset,
                    text: &t.text,
                };
                (
                    t.last_offset,
                    PreparedFrame::turn(&key.channel, t.last_offset, event),
                )
            })
            .collect();
        live.sort_by_key(|(offset, _)| *offset);
        let mut all: Vec<Offsetted> = kept.chain(live).collect();
        all.sort_by_key(|(offset, _)| *offset);
        read.more = all.len() > limit;
        all.truncate(limit);
        read.messages = all;
        read
    }

    /// Appends `event` at the next offset; returns the offset and the frame
    /// subscribers get.
    fn append(
        &mut self,
        key: &ChannelKey,
        event: Event<'_>,
        now: Instant,
        limits: HistoryLimits,
    ) -> Result<(u64, PreparedFrame), BackplaneError> {
        let offset = self.top + 1;
        let channel = &key.channel;
        let frame = match event {
            Event::Message(data) => PreparedFrame::message(channel, offset, data),
            Event::TurnStart(turn) => {
                if self.turns.contains_key(turn) {
                    return Err(BackplaneError::TurnExists(turn.clone()));
                }
                self.turns.insert(
                    turn.clone(),
                    LiveTurn {
                        start_offset: offset,
                        last_offset: offset,
                        text: String::new(),
                    },
                );
                PreparedFrame::turn(channel, offset, TurnEvent::Start { turn })
            }
            Event::Token(turn, text) => {
                let live = self
                    .turns
                    .get_mut(turn)
                    .ok_or_else(|| BackplaneError::NoSuchTurn(turn.clone()))?;
                live.text.push_str(text);
                live.last_offset = offset;
                PreparedFrame::turn(channel, offset, TurnEvent::Token { turn, text })
            }
            Event::TurnEnd(turn) | Event::TurnError { turn, .. } => {
                let live = self
                    .turns
                    .remove(turn)
                    .ok_or_else(|| BackplaneError::NoSuchTurn(turn.clone()))?;
                let (status, reason, message, live_event) = match event {
                    Event::TurnError { reason, message, .. } => (
                        TurnStatus::Error,
                        Some(reason),
                        message,
                        TurnEvent::Error {
                            turn,
                            reason,
                            message,
                        },
                    ),
                    _ => (TurnStatus::Done, None, None, TurnEvent::End { turn }),
                };
                let finished = TurnEvent::Finished {
                    turn,
                    start_offset: live.start_offset,
                    text: &live.text,
                    status,
                    reason,
                    message,
                };
                self.keep(
                    offset,
                    now,
                    PreparedFrame::turn(channel, offset, finished),
                    limits,
                );
                self.top = offset;
                return Ok((offset, PreparedFrame::turn(channel, offset, live_event)));
            }
        };
        if matches!(event, Event::Message(_)) {
            self.keep(offset, now, frame.clone(), limits);
        }
        self.top = offset;
        Ok((offset, frame))
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

    /// Forgets channels that retain nothing, have no live turn and no local
    /// subscriber, and were not used for `max_age`. Returns how many.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let before = self.logs.len();
        self.logs.retain(|key, log| {
            let mut log = log.lock();
            log.trim(now, self.limits);
            let idle = log.entries.is_empty()
                && log.turns.is_empty()
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
        event: Event<'a>,
    ) -> BoxFuture<'a, Result<Published, BackplaneError>> {
        let started = Instant::now();
        let published = self.with_log(key, |log, now| {
            let (offset, frame) = log.append(key, event, now, self.limits)?;
            // Delivering under the log's lock is what orders a channel's
            // messages for every subscriber, and what lets a resuming
            // subscriber read history without missing a message.
            self.hub.deliver(key, offset, &frame);
            Ok(Published {
                offset,
                epoch: log.epoch.clone(),
            })
        });
        if published.is_ok() {
            telemetry::published(started);
        }
        Box::pin(std::future::ready(published))
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
        let read = self.with_log(key, |log, _| log.read(key, since, limit));
        Box::pin(std::future::ready(Ok(read)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;
    use switchboard_proto::{ChannelName, OrgId, ServerFrame};

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

    fn block_on<T>(f: BoxFuture<'_, T>) -> T {
        futures_util::FutureExt::now_or_never(f).expect("in-process futures are ready")
    }

    fn publish(bp: &InProcess, k: &ChannelKey, n: u64) -> Published {
        let data = RawValue::from_string(n.to_string()).unwrap();
        block_on(bp.publish(k, Event::Message(&data))).unwrap()
    }

    fn event(bp: &InProcess, k: &ChannelKey, e: Event<'_>) -> Result<Published, BackplaneError> {
        block_on(bp.publish(k, e))
    }

    fn read(bp: &InProcess, k: &ChannelKey, since: Option<u64>, limit: usize) -> HistoryRead {
        block_on(bp.read(k, since, limit)).unwrap()
    }

    fn read_offsets(r: &HistoryRead) -> Vec<u64> {
        r.messages.iter().map(|(o, _)| *o).collect()
    }

    fn frames(r: &HistoryRead) -> Vec<ServerFrame> {
        r.messages
            .iter()
            .map(|(_, f)| ServerFrame::decode(&f.payload()).unwrap())
            .collect()
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
    fn joiners_without_since_get_live_turns_only() {
        let bp = backplane(10, Duration::from_secs(60));
        let k = key("c");
        let t = TurnId::new("t").unwrap();
        publish(&bp, &k, 1);
        event(&bp, &k, Event::TurnStart(&t)).unwrap();
        event(&bp, &k, Event::Token(&t, "abc")).unwrap();
        let r = read(&bp, &k, None, 100);
        assert_eq!((read_offsets(&r), r.top), (vec![3], 3));
        assert!(
            matches!(&frames(&r)[0], ServerFrame::TurnSnapshot { text_so_far, .. } if text_so_far == "abc")
        );
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

    #[test]
    fn live_turns_replay_as_one_snapshot_and_finished_ones_as_one_message() {
        let bp = backplane(100, Duration::from_secs(60));
        let k = key("turns.c1");
        let t = TurnId::new("t1").unwrap();
        publish(&bp, &k, 1); // offset 1
        assert_eq!(event(&bp, &k, Event::TurnStart(&t)).unwrap().offset, 2);
        assert!(matches!(
            event(&bp, &k, Event::TurnStart(&t)),
            Err(BackplaneError::TurnExists(_))
        ));
        for word in ["Hel", "lo", " there"] {
            event(&bp, &k, Event::Token(&t, word)).unwrap(); // 3, 4, 5
        }
        publish(&bp, &k, 6); // a message in the middle of the turn
        event(&bp, &k, Event::Token(&t, "!")).unwrap(); // 7

        // From the start: message 1, message 6, then the snapshot at 7.
        let r = read(&bp, &k, Some(0), 100);
        assert!(r.complete);
        assert_eq!(read_offsets(&r), vec![1, 6, 7]);
        match &frames(&r)[2] {
            ServerFrame::TurnSnapshot {
                turn,
                start_offset,
                text_so_far,
                offset,
                ..
            } => {
                assert_eq!(
                    (turn.as_str(), *start_offset, text_so_far.as_str(), *offset),
                    ("t1", 2, "Hello there!", 7)
                );
            }
            other => panic!("{}", other.to_json()),
        }
        // From inside the turn: still one snapshot; from after its last token: none.
        assert_eq!(read_offsets(&read(&bp, &k, Some(4), 100)), vec![6, 7]);
        assert!(read(&bp, &k, Some(7), 100).messages.is_empty());

        assert_eq!(event(&bp, &k, Event::TurnEnd(&t)).unwrap().offset, 8);
        assert!(matches!(
            event(&bp, &k, Event::Token(&t, "late")),
            Err(BackplaneError::NoSuchTurn(_))
        ));
        let r = read(&bp, &k, Some(3), 100);
        assert_eq!(read_offsets(&r), vec![6, 8]);
        match &frames(&r)[1] {
            ServerFrame::Turn {
                text,
                status,
                start_offset,
                ..
            } => {
                assert_eq!(
                    (text.as_str(), *status, *start_offset),
                    ("Hello there!", TurnStatus::Done, 2)
                );
            }
            other => panic!("{}", other.to_json()),
        }
    }

    #[test]
    fn failed_turns_keep_their_reason() {
        let bp = backplane(100, Duration::from_secs(60));
        let k = key("c");
        let t = TurnId::new("t").unwrap();
        event(&bp, &k, Event::TurnStart(&t)).unwrap();
        event(&bp, &k, Event::Token(&t, "par")).unwrap();
        event(
            &bp,
            &k,
            Event::TurnError {
                turn: &t,
                reason: "operator_gone",
                message: None,
            },
        )
        .unwrap();
        match &frames(&read(&bp, &k, Some(0), 10))[0] {
            ServerFrame::Turn {
                text, status, reason, ..
            } => {
                assert_eq!(
                    (text.as_str(), *status, reason.as_deref()),
                    ("par", TurnStatus::Error, Some("operator_gone"))
                );
            }
            other => panic!("{}", other.to_json()),
        }
    }
}
