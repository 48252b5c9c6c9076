//! The in-process backplane: one pod, offsets assigned here, a bounded
//! in-memory history per channel (count and age limits).
//!
//! Only a publish creates state. A channel nobody published on (or whose log
//! was swept) costs nothing: reads answer for it from its epoch, derived
//! from the org, the channel and this process's incarnation, and from a
//! fixed table of sweep watermarks. When a log is swept, the watermark of
//! its hash bucket rises to its newest offset; a channel's next log starts
//! its offsets above that, so an (epoch, offset) pair never names two
//! messages, and a client resuming from before a sweep learns it may have
//! missed something (at worst a false `recovered:false` when another channel
//! of its bucket was swept, never a false `true`).
//!
//! Turns are compacted: a live turn is kept as its text so far (replayed as
//! one shared `turn_snapshot`, rebuilt only when the turn advances), a
//! finished one as one `turn` message at the offset of its end.

use std::collections::{HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use metrics::gauge;
use parking_lot::Mutex;
use switchboard_proto::{ChannelName, Epoch, PreparedFrame, TurnEvent, TurnId, TurnStatus};

use crate::backplane::{
    Backplane, BackplaneError, BoxFuture, Event, History, HistoryRead, Position, Published,
};
use crate::clock::{self, Instant};
use crate::hub::{ChannelKey, Hub, Offsetted};
use crate::telemetry;

/// Enough to cover a page reload or a network switch mid-conversation.
pub const DEFAULT_HISTORY_MESSAGES: usize = 500;
pub const DEFAULT_HISTORY_AGE: Duration = Duration::from_secs(600);
/// A few agents answering in one conversation at once.
pub const DEFAULT_MAX_TURNS_PER_CHANNEL: usize = 8;
/// Sweep watermark buckets: 128 KiB for the process, whatever the number of
/// channels.
const WATERMARKS: usize = 16_384;

/// How much history each channel keeps, and how many turns it streams at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Messages kept per channel (0 keeps none: resume then never recovers).
    pub max_messages: usize,
    /// Messages older than this are dropped.
    pub max_age: Duration,
    /// Live turns one channel may carry at once.
    pub max_live_turns: usize,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        Self {
            max_messages: DEFAULT_HISTORY_MESSAGES,
            max_age: DEFAULT_HISTORY_AGE,
            max_live_turns: DEFAULT_MAX_TURNS_PER_CHANNEL,
        }
    }
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
    /// The snapshot every joiner gets until the turn advances.
    snapshot: Option<PreparedFrame>,
}

impl LiveTurn {
    fn snapshot(&mut self, turn: &TurnId, channel: &ChannelName) -> PreparedFrame {
        let (start_offset, last_offset, text) = (self.start_offset, self.last_offset, &self.text);
        self.snapshot
            .get_or_insert_with(|| {
                let event = TurnEvent::Snapshot {
                    turn,
                    start_offset,
                    text,
                };
                PreparedFrame::turn(channel, last_offset, event)
            })
            .clone()
    }
}

struct Log {
    epoch: Epoch,
    top: u64,
    entries: VecDeque<Entry>,
    /// The newest offset dropped by the count or age limit (or that an
    /// earlier log of this channel may have used): a resume from before it
    /// cannot be exact.
    trimmed_through: u64,
    turns: HashMap<TurnId, LiveTurn>,
    /// Set when the log was removed from the map; holders must look again.
    dead: bool,
}

impl Log {
    fn new(epoch: Epoch, base: u64) -> Self {
        Self {
            epoch,
            top: base,
            entries: VecDeque::new(),
            trimmed_through: base,
            turns: HashMap::new(),
            dead: false,
        }
    }

    fn trim(&mut self, now: Instant, limits: HistoryLimits) {
        while self.entries.len() > limits.max_messages
            || self
                .entries
                .front()
                .is_some_and(|e| now.saturating_duration_since(e.at) > limits.max_age)
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

    /// Nothing retained, nothing live: the log can go.
    fn is_idle(&self) -> bool {
        self.entries.is_empty() && self.turns.is_empty()
    }

    fn read(&mut self, channel: &ChannelName, from: Position, limit: usize) -> HistoryRead {
        let live_first = self.turns.values().map(|t| t.last_offset).min();
        let first = match (self.entries.front().map(|e| e.offset), live_first) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let mut read = HistoryRead {
            epoch: self.epoch.clone(),
            top: self.top,
            first,
            complete: true,
            messages: Vec::new(),
            more: false,
        };
        let (since, retained) = match from {
            Position::Live => (0, self.entries.range(self.entries.len()..)),
            Position::Tail => (0, self.entries.range(..)),
            Position::After(since) if since > self.top || since < self.trimmed_through => {
                read.complete = false;
                return read;
            }
            Position::After(since) => (
                since,
                self.entries
                    .range(self.entries.partition_point(|e| e.offset <= since)..),
            ),
        };
        let mut all: Vec<Offsetted> = retained.map(|e| (e.offset, e.frame.clone())).collect();
        for (id, turn) in &mut self.turns {
            if turn.last_offset > since {
                all.push((turn.last_offset, turn.snapshot(id, channel)));
            }
        }
        read.fill(all, from, limit);
        read
    }

    /// Appends `event` at the next offset; returns the offset and the frame
    /// subscribers get.
    fn append(
        &mut self,
        channel: &ChannelName,
        event: Event<'_>,
        now: Instant,
        limits: HistoryLimits,
    ) -> Result<(u64, PreparedFrame), BackplaneError> {
        let offset = self.top + 1;
        let frame = match event {
            Event::Message(data) => {
                let frame = PreparedFrame::message(channel, offset, data);
                self.keep(offset, now, frame.clone(), limits);
                frame
            }
            Event::TurnStart(turn) => {
                if self.turns.contains_key(turn) {
                    return Err(BackplaneError::TurnExists(turn.clone()));
                }
                if self.turns.len() >= limits.max_live_turns {
                    return Err(BackplaneError::TooManyTurns(limits.max_live_turns));
                }
                let live = LiveTurn {
                    start_offset: offset,
                    last_offset: offset,
                    text: String::new(),
                    snapshot: None,
                };
                self.turns.insert(turn.clone(), live);
                PreparedFrame::turn(channel, offset, TurnEvent::Start { turn })
            }
            Event::Token(turn, text) => {
                let live = self
                    .turns
                    .get_mut(turn)
                    .ok_or_else(|| BackplaneError::NoSuchTurn(turn.clone()))?;
                live.text.push_str(text);
                live.last_offset = offset;
                live.snapshot = None;
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
                PreparedFrame::turn(channel, offset, live_event)
            }
        };
        self.top = offset;
        Ok((offset, frame))
    }
}

/// Eight bytes from the OS RNG, or from the time if it fails: this process's
/// incarnation, which every epoch derives from.
fn incarnation() -> u64 {
    let mut bytes = [0u8; 8];
    // A fixed fallback would make epochs collide across restarts; the time
    // differs from one start to the next.
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        bytes = nanos.to_le_bytes();
    }
    u64::from_le_bytes(bytes)
}

pub struct InProcess {
    hub: Arc<Hub>,
    logs: DashMap<ChannelKey, Arc<Mutex<Log>>>,
    limits: HistoryLimits,
    incarnation: u64,
    /// Per hash bucket, the newest offset of any log swept from it.
    swept: Box<[AtomicU64]>,
}

impl InProcess {
    pub fn new(hub: Arc<Hub>, limits: HistoryLimits) -> Self {
        Self {
            hub,
            logs: DashMap::new(),
            limits,
            incarnation: incarnation(),
            swept: (0..WATERMARKS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn hash(&self, key: &ChannelKey, salt: u64) -> u64 {
        let mut h = DefaultHasher::new();
        salt.hash(&mut h);
        key.hash(&mut h);
        h.finish()
    }

    /// The channel's epoch: the same for every read and log of it in this process.
    fn epoch(&self, key: &ChannelKey) -> Epoch {
        Epoch::new(format!("{:016x}", self.hash(key, self.incarnation)))
    }

    fn watermark(&self, key: &ChannelKey) -> &AtomicU64 {
        &self.swept[(self.hash(key, 0) % WATERMARKS as u64) as usize]
    }

    /// Runs `f` on `key`'s log, creating it (above the sweep watermark) if needed.
    fn with_log<T>(&self, key: &ChannelKey, f: impl FnOnce(&mut Log, Instant) -> T) -> T {
        loop {
            let now = clock::now();
            let log = Arc::clone(
                self.logs
                    .entry(key.clone())
                    .or_insert_with(|| {
                        gauge!(telemetry::HISTORY_CHANNELS).increment(1.0);
                        let base = self.watermark(key).load(Ordering::Acquire);
                        Arc::new(Mutex::new(Log::new(self.epoch(key), base)))
                    })
                    .value(),
            );
            let mut log = log.lock();
            if log.dead {
                continue;
            }
            log.trim(now, self.limits);
            return f(&mut log, now);
        }
    }

    fn read_now(&self, key: &ChannelKey, from: Position, limit: usize) -> HistoryRead {
        loop {
            let Some(log) = self.logs.get(key).map(|e| Arc::clone(e.value())) else {
                // Never published, or swept: nothing after the watermark exists.
                let top = self.watermark(key).load(Ordering::Acquire);
                return HistoryRead {
                    epoch: self.epoch(key),
                    top,
                    first: None,
                    complete: !matches!(from, Position::After(since) if since != top),
                    messages: Vec::new(),
                    more: false,
                };
            };
            let mut log = log.lock();
            if log.dead {
                continue;
            }
            log.trim(clock::now(), self.limits);
            return log.read(&key.channel, from, limit);
        }
    }

    /// Forgets channels that retain nothing, stream no turn and have no
    /// local subscriber. Returns how many.
    pub fn sweep(&self) -> usize {
        let now = clock::now();
        let before = self.logs.len();
        self.logs.retain(|key, log| {
            let mut log = log.lock();
            log.trim(now, self.limits);
            let idle = log.is_idle() && !self.hub.has_subscribers(key);
            if idle {
                self.watermark(key).fetch_max(log.top, Ordering::AcqRel);
                log.dead = true;
            }
            !idle
        });
        let swept = before - self.logs.len();
        gauge!(telemetry::HISTORY_CHANNELS).decrement(swept as f64);
        swept
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
        let published = self.with_log(key, |log, now| {
            let (offset, frame) = log.append(&key.channel, event, now, self.limits)?;
            // Delivering under the log's lock is what orders a channel's
            // messages for every subscriber, and what lets a resuming
            // subscriber read history without missing a message.
            self.hub.deliver(key, offset, &frame);
            Ok(Published {
                offset,
                epoch: log.epoch.clone(),
            })
        });
        Box::pin(std::future::ready(published))
    }

    fn attach<'a>(&'a self, _key: &'a ChannelKey) -> BoxFuture<'a, Result<(), BackplaneError>> {
        // Every publish on this pod already reaches this pod's hub.
        Box::pin(std::future::ready(Ok(())))
    }

    fn detach(&self, _key: &ChannelKey) {}

    fn maintain(&self) {
        self.sweep();
    }

    fn drop_org(&self, org: &switchboard_proto::OrgId) {
        let before = self.logs.len();
        self.logs.retain(|key, log| {
            let keep = &key.org != org;
            if !keep {
                // Its offsets stay above anything a client of the old org saw.
                let mut log = log.lock();
                self.watermark(key).fetch_max(log.top, Ordering::AcqRel);
                log.dead = true;
            }
            keep
        });
        gauge!(telemetry::HISTORY_CHANNELS).decrement((before - self.logs.len()) as f64);
    }
}

impl History for InProcess {
    fn read<'a>(
        &'a self,
        key: &'a ChannelKey,
        from: Position,
        limit: usize,
    ) -> BoxFuture<'a, Result<HistoryRead, BackplaneError>> {
        Box::pin(std::future::ready(Ok(self.read_now(key, from, limit))))
    }
}

#[cfg(test)]
mod tests;
