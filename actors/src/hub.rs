//! The fan-out hub: which local connections subscribe to which channel, and
//! the loop that hands each of them the same prepared frame.
//!
//! Channels live in a sharded map (no global lock); each channel's subscriber
//! list has its own lock, held while a message fans out, so every subscriber
//! sees a channel's messages in the order they were delivered to the hub. A
//! subscriber joins *pending*: live frames are buffered for it (bounded by
//! its sink's queue bound, in bytes) until it has been sent its replay from
//! history, which is what makes resume exact.

use std::sync::Arc;

use dashmap::DashMap;
use indexmap::IndexMap;
use parking_lot::Mutex;
use switchboard_proto::{ChannelName, ConnId, OrgId, PreparedFrame};

use crate::sink::{CloseReason, Refused, Sink, charge};
use crate::telemetry;

/// A channel inside an org: the unit of ordering and fan-out.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ChannelKey {
    pub org: OrgId,
    pub channel: ChannelName,
}

impl ChannelKey {
    pub fn new(org: OrgId, channel: ChannelName) -> Self {
        Self { org, channel }
    }

    /// `channel` of `org`, from borrowed parts.
    pub fn of(org: &OrgId, channel: &ChannelName) -> Self {
        Self::new(org.clone(), channel.clone())
    }
}

/// A message with its offset, as history returns it and as pending
/// subscribers buffer it.
pub type Offsetted = (u64, PreparedFrame);

/// Live frames a pending subscriber has not been given yet.
#[derive(Default)]
struct Backlog {
    frames: Vec<Offsetted>,
    bytes: usize,
}

struct Subscriber {
    sink: Arc<dyn Sink>,
    /// `Some` while the subscriber waits for its replay: live frames park here.
    pending: Option<Box<Backlog>>,
}

#[derive(Default)]
struct Subscribers {
    by_conn: IndexMap<ConnId, Subscriber>,
    /// Set when the (empty) list was removed from the map; a joiner that
    /// still holds it must look the channel up again.
    dead: bool,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    #[error("already subscribed")]
    AlreadySubscribed,
    /// The subscriber was dropped while catching up (its queue overflowed, or
    /// its connection closed).
    #[error("subscriber is gone")]
    Gone,
}

/// What a fan-out pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fanout {
    /// Frames written or queued for live subscribers.
    pub delivered: usize,
    /// Subscribers dropped because their sink refused the frame.
    pub dropped: usize,
}

/// What [`Hub::go_live`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Live {
    /// The subscriber is live: what it had buffered was offered, newer
    /// frames go straight to it.
    Now,
    /// It had buffered too much to offer at once: here are those frames
    /// (after the offset asked for). It stays pending; offer them paced and
    /// ask again from the last one's offset.
    Backlog(Vec<Offsetted>),
}

#[derive(Default)]
pub struct Hub {
    channels: DashMap<ChannelKey, Arc<Mutex<Subscribers>>>,
}

impl Hub {
    pub fn new() -> Self {
        Self::default()
    }

    fn list(&self, key: &ChannelKey) -> Option<Arc<Mutex<Subscribers>>> {
        self.channels.get(key).map(|e| Arc::clone(e.value()))
    }

    /// Hands `frame` (the message at `offset`) to every local subscriber of
    /// `key`. Callers deliver a channel's messages in offset order, one at a
    /// time; the hub keeps that order per subscriber.
    pub fn deliver(&self, key: &ChannelKey, offset: u64, frame: &PreparedFrame) -> Fanout {
        let Some(list) = self.list(key) else {
            return Fanout::default();
        };
        let mut list = list.lock();
        let mut out = Fanout::default();
        list.by_conn.retain(|_, sub| {
            let kept = match &mut sub.pending {
                Some(backlog) => {
                    let cost = charge(frame);
                    if backlog.bytes + cost <= sub.sink.capacity() {
                        backlog.bytes += cost;
                        backlog.frames.push((offset, frame.clone()));
                        true
                    } else {
                        telemetry::slow_consumer();
                        sub.sink.close(CloseReason::SlowConsumer);
                        false
                    }
                }
                None => match sub.sink.offer(frame) {
                    Ok(()) => {
                        out.delivered += 1;
                        true
                    }
                    Err(Refused::Full | Refused::Closed) => false,
                },
            };
            out.dropped += usize::from(!kept);
            kept
        });
        telemetry::delivered(out.delivered, frame.len());
        out
    }

    /// Adds a pending subscriber. Returns whether it is the channel's first
    /// local subscriber (the org then attaches the channel to the backplane).
    pub fn join(&self, key: &ChannelKey, conn: ConnId, sink: Arc<dyn Sink>) -> Result<bool, HubError> {
        loop {
            let list = Arc::clone(self.channels.entry(key.clone()).or_default().value());
            let mut list = list.lock();
            if list.dead {
                continue;
            }
            if list.by_conn.contains_key(&conn) {
                return Err(HubError::AlreadySubscribed);
            }
            let first = list.by_conn.is_empty();
            list.by_conn.insert(
                conn,
                Subscriber {
                    sink,
                    pending: Some(Box::default()),
                },
            );
            return Ok(first);
        }
    }

    /// Makes a pending subscriber live once its replay reached `top`: the
    /// frames it buffered after `top` are offered first, under the channel's
    /// lock, so nothing newer can overtake them. A backlog that would fill
    /// more than half of the sink's queue is handed back instead
    /// ([`Live::Backlog`]), for the caller to write as the socket drains.
    pub fn go_live(&self, key: &ChannelKey, conn: ConnId, top: u64) -> Result<Live, HubError> {
        let list = self.list(key).ok_or(HubError::Gone)?;
        let mut list = list.lock();
        let sub = list.by_conn.get_mut(&conn).ok_or(HubError::Gone)?;
        let backlog = sub.pending.replace(Box::default()).unwrap_or_default();
        let newer: Vec<Offsetted> = backlog.frames.into_iter().filter(|(o, _)| *o > top).collect();
        let bytes: usize = newer.iter().map(|(_, f)| charge(f)).sum();
        if !newer.is_empty() && sub.sink.queued() + bytes > sub.sink.capacity() / 2 {
            return Ok(Live::Backlog(newer));
        }
        match newer.iter().try_for_each(|(_, f)| sub.sink.offer(f)) {
            Ok(()) => {
                sub.pending = None;
                Ok(Live::Now)
            }
            Err(_) => {
                list.by_conn.swap_remove(&conn);
                Err(HubError::Gone)
            }
        }
    }

    /// Removes a subscriber (pending or live). Returns whether the channel has
    /// no local subscriber left.
    pub fn leave(&self, key: &ChannelKey, conn: ConnId) -> bool {
        let Some(list) = self.list(key) else {
            return true;
        };
        let empty = {
            let mut list = list.lock();
            list.by_conn.swap_remove(&conn);
            list.by_conn.is_empty()
        };
        if empty {
            self.channels.remove_if(key, |_, list| {
                let mut list = list.lock();
                list.dead = list.by_conn.is_empty();
                list.dead
            });
        }
        empty
    }

    /// Whether any local connection subscribes to `key`.
    pub fn has_subscribers(&self, key: &ChannelKey) -> bool {
        self.channels
            .get(key)
            .is_some_and(|list| !list.lock().by_conn.is_empty())
    }

    /// Local subscribers of `key`.
    pub fn subscriber_count(&self, key: &ChannelKey) -> usize {
        self.channels.get(key).map_or(0, |list| list.lock().by_conn.len())
    }

    /// Channels of `org` with at least one local subscriber.
    pub fn channels_of(&self, org: &OrgId) -> Vec<ChannelName> {
        self.channels
            .iter()
            .filter(|e| &e.key().org == org && !e.value().lock().by_conn.is_empty())
            .map(|e| e.key().channel.clone())
            .collect()
    }

    /// Channels with at least one local subscriber, across all orgs.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::MemorySink;
    use serde_json::value::RawValue;

    fn key(ch: &str) -> ChannelKey {
        ChannelKey::new(OrgId::new("o").unwrap(), ChannelName::new(ch).unwrap())
    }

    fn msg(k: &ChannelKey, offset: u64) -> PreparedFrame {
        PreparedFrame::message(
            &k.channel,
            offset,
            &RawValue::from_string(offset.to_string()).unwrap(),
        )
    }

    /// Room for `n` of the test's messages.
    fn room(n: usize) -> usize {
        n * charge(&msg(&key("a"), 1000))
    }

    fn offsets(sink: &MemorySink) -> Vec<u64> {
        sink.drain()
            .iter()
            .map(
                |f| match switchboard_proto::ServerFrame::decode(&f.payload()).unwrap() {
                    switchboard_proto::ServerFrame::Message { offset, .. } => offset,
                    _ => 0,
                },
            )
            .collect()
    }

    fn live(hub: &Hub, k: &ChannelKey, conn: u64, frames: usize) -> Arc<MemorySink> {
        let sink = Arc::new(MemorySink::new(room(frames)));
        hub.join(k, ConnId(conn), sink.clone()).unwrap();
        assert_eq!(hub.go_live(k, ConnId(conn), 0), Ok(Live::Now));
        sink
    }

    #[test]
    fn fans_out_in_order_to_every_subscriber() {
        let hub = Hub::new();
        let k = key("a");
        let sinks: Vec<_> = (0..50).map(|c| live(&hub, &k, c, 100)).collect();
        for o in 1..=10 {
            assert_eq!(hub.deliver(&k, o, &msg(&k, o)).delivered, 50);
        }
        for s in &sinks {
            assert_eq!(offsets(s), (1..=10).collect::<Vec<_>>());
        }
        assert_eq!(hub.deliver(&key("other"), 1, &msg(&k, 1)), Fanout::default());
    }

    #[test]
    fn pending_subscriber_gets_what_came_after_its_replay() {
        let hub = Hub::new();
        let k = key("a");
        let sink = Arc::new(MemorySink::new(room(100)));
        assert!(hub.join(&k, ConnId(1), sink.clone()).unwrap());
        assert_eq!(
            hub.join(&k, ConnId(1), sink.clone()),
            Err(HubError::AlreadySubscribed)
        );
        // Live messages 4..=6 arrive while history is read; history reached 5.
        for o in 4..=6 {
            hub.deliver(&k, o, &msg(&k, o));
        }
        assert!(sink.is_empty(), "pending subscribers get nothing yet");
        assert_eq!(hub.go_live(&k, ConnId(1), 5), Ok(Live::Now));
        hub.deliver(&k, 7, &msg(&k, 7));
        assert_eq!(offsets(&sink), vec![6, 7]);
    }

    #[test]
    fn a_large_backlog_is_handed_back_and_the_subscriber_stays_pending() {
        let hub = Hub::new();
        let k = key("a");
        let sink = Arc::new(MemorySink::new(room(10)));
        hub.join(&k, ConnId(1), sink.clone()).unwrap();
        for o in 1..=8 {
            hub.deliver(&k, o, &msg(&k, o));
        }
        let Ok(Live::Backlog(backlog)) = hub.go_live(&k, ConnId(1), 2) else {
            panic!("eight frames do not fit half of a queue of ten");
        };
        assert_eq!(
            backlog.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
            (3..=8).collect::<Vec<_>>()
        );
        hub.deliver(&k, 9, &msg(&k, 9));
        assert!(sink.is_empty(), "still pending while the backlog is written");
        assert_eq!(hub.go_live(&k, ConnId(1), 8), Ok(Live::Now));
        assert_eq!(offsets(&sink), vec![9]);
    }

    #[test]
    fn full_sink_is_dropped_and_others_continue() {
        let hub = Hub::new();
        let k = key("a");
        let slow = live(&hub, &k, 1, 2);
        let fast = live(&hub, &k, 2, 100);
        let mut dropped = 0;
        for o in 1..=5 {
            dropped += hub.deliver(&k, o, &msg(&k, o)).dropped;
        }
        assert_eq!(dropped, 1);
        assert_eq!(slow.closed(), Some(CloseReason::SlowConsumer));
        assert_eq!(offsets(&fast), vec![1, 2, 3, 4, 5]);
        assert_eq!(hub.subscriber_count(&k), 1);
    }

    #[test]
    fn pending_overflow_cuts_the_subscriber_off() {
        let hub = Hub::new();
        let k = key("a");
        let sink = Arc::new(MemorySink::new(room(2)));
        hub.join(&k, ConnId(1), sink.clone()).unwrap();
        for o in 1..=3 {
            hub.deliver(&k, o, &msg(&k, o));
        }
        assert_eq!(sink.closed(), Some(CloseReason::SlowConsumer));
        assert_eq!(hub.go_live(&k, ConnId(1), 0), Err(HubError::Gone));
    }

    #[test]
    fn leave_reports_last_and_forgets_the_channel() {
        let hub = Hub::new();
        let k = key("a");
        live(&hub, &k, 1, 10);
        live(&hub, &k, 2, 10);
        assert_eq!(hub.channels_of(&k.org), vec![k.channel.clone()]);
        assert!(!hub.leave(&k, ConnId(1)));
        assert!(hub.has_subscribers(&k));
        assert!(hub.leave(&k, ConnId(2)));
        assert!(!hub.has_subscribers(&k));
        assert_eq!(hub.channel_count(), 0);
        // Joining again after the list was removed works.
        assert!(
            hub.join(&k, ConnId(3), Arc::new(MemorySink::new(room(1))))
                .unwrap()
        );
    }

    #[test]
    fn concurrent_join_and_leave_never_lose_a_subscriber() {
        let hub = Arc::new(Hub::new());
        let k = key("race");
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let hub = hub.clone();
                let k = k.clone();
                std::thread::spawn(move || {
                    for i in 0..2000u64 {
                        let conn = ConnId(t * 1_000_000 + i);
                        hub.join(&k, conn, Arc::new(MemorySink::new(room(4)))).unwrap();
                        hub.go_live(&k, conn, 0).unwrap();
                        hub.leave(&k, conn);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let keeper = live(&hub, &k, 99, 10);
        hub.deliver(&k, 1, &msg(&k, 1));
        assert_eq!(offsets(&keeper), vec![1]);
    }
}
