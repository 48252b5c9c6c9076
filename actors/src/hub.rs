//! The fan-out hub: which local connections subscribe to which channel, and
//! the loop that hands each of them the same prepared frame.
//!
//! Channels live in a sharded map (no global lock); each channel's subscriber
//! list has its own lock, held while a message fans out, so every subscriber
//! sees a channel's messages in the order they were delivered to the hub. A
//! subscriber joins *pending*: live frames are buffered for it until it has
//! been sent its replay from history, which is what makes resume exact.

use std::sync::Arc;

use dashmap::DashMap;
use indexmap::IndexMap;
use parking_lot::Mutex;
use switchboard_proto::{ChannelName, ConnId, OrgId, PreparedFrame};

use crate::sink::{CloseReason, Refused, Sink};
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
}

/// A message with its offset, as history returns it and as pending
/// subscribers buffer it.
pub type Offsetted = (u64, PreparedFrame);

struct Subscriber {
    sink: Arc<dyn Sink>,
    /// `Some` while the subscriber waits for its replay: live frames park here.
    pending: Option<Vec<Offsetted>>,
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

pub struct Hub {
    channels: DashMap<ChannelKey, Arc<Mutex<Subscribers>>>,
    /// How many live frames a pending subscriber may buffer before it is cut
    /// off as a slow consumer (the same bound as a connection's queue).
    pending_limit: usize,
}

impl Hub {
    pub fn new(pending_limit: usize) -> Self {
        Self {
            channels: DashMap::new(),
            pending_limit,
        }
    }

    /// Hands `frame` (the message at `offset`) to every local subscriber of
    /// `key`. Callers deliver a channel's messages in offset order, one at a
    /// time; the hub keeps that order per subscriber.
    pub fn deliver(&self, key: &ChannelKey, offset: u64, frame: &PreparedFrame) -> Fanout {
        let Some(list) = self.channels.get(key).map(|e| Arc::clone(e.value())) else {
            return Fanout::default();
        };
        let mut list = list.lock();
        let mut out = Fanout::default();
        let limit = self.pending_limit;
        list.by_conn.retain(|_, sub| {
            let kept = match &mut sub.pending {
                Some(buf) if buf.len() < limit => {
                    buf.push((offset, frame.clone()));
                    true
                }
                Some(_) => {
                    sub.sink.close(CloseReason::SlowConsumer);
                    false
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
                    pending: Some(Vec::new()),
                },
            );
            return Ok(first);
        }
    }

    /// Makes a pending subscriber live: writes `ack`, then `replay`, then the
    /// live frames it buffered that come after `top` (the offset the replay
    /// reached), all before any newer frame can be delivered to it.
    pub fn go_live(
        &self,
        key: &ChannelKey,
        conn: ConnId,
        ack: &PreparedFrame,
        replay: &[Offsetted],
        top: u64,
    ) -> Result<(), HubError> {
        let Some(list) = self.channels.get(key).map(|e| Arc::clone(e.value())) else {
            return Err(HubError::Gone);
        };
        let mut list = list.lock();
        let Some(sub) = list.by_conn.get_mut(&conn) else {
            return Err(HubError::Gone);
        };
        let buffered = sub.pending.take().unwrap_or_default();
        let written = std::iter::once(ack)
            .chain(replay.iter().map(|(_, f)| f))
            .chain(buffered.iter().filter(|(o, _)| *o > top).map(|(_, f)| f))
            .try_for_each(|f| sub.sink.offer(f));
        if written.is_err() {
            list.by_conn.swap_remove(&conn);
            return Err(HubError::Gone);
        }
        Ok(())
    }

    /// Removes a subscriber (pending or live). Returns whether the channel has
    /// no local subscriber left.
    pub fn leave(&self, key: &ChannelKey, conn: ConnId) -> bool {
        let Some(list) = self.channels.get(key).map(|e| Arc::clone(e.value())) else {
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

    fn live(hub: &Hub, k: &ChannelKey, conn: u64, cap: usize) -> Arc<MemorySink> {
        let sink = Arc::new(MemorySink::new(cap));
        hub.join(k, ConnId(conn), sink.clone()).unwrap();
        let ack = msg(k, 0);
        hub.go_live(k, ConnId(conn), &ack, &[], 0).unwrap();
        sink.drain();
        sink
    }

    #[test]
    fn fans_out_in_order_to_every_subscriber() {
        let hub = Hub::new(16);
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
    fn pending_subscriber_gets_ack_replay_then_newer_buffered() {
        let hub = Hub::new(16);
        let k = key("a");
        let sink = Arc::new(MemorySink::new(100));
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
        let replay: Vec<_> = (3..=5).map(|o| (o, msg(&k, o))).collect();
        hub.go_live(&k, ConnId(1), &msg(&k, 0), &replay, 5).unwrap();
        hub.deliver(&k, 7, &msg(&k, 7));
        assert_eq!(offsets(&sink), vec![0, 3, 4, 5, 6, 7]);
    }

    #[test]
    fn full_sink_is_dropped_and_others_continue() {
        let hub = Hub::new(16);
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
        let hub = Hub::new(2);
        let k = key("a");
        let sink = Arc::new(MemorySink::new(100));
        hub.join(&k, ConnId(1), sink.clone()).unwrap();
        for o in 1..=3 {
            hub.deliver(&k, o, &msg(&k, o));
        }
        assert_eq!(sink.closed(), Some(CloseReason::SlowConsumer));
        assert_eq!(
            hub.go_live(&k, ConnId(1), &msg(&k, 0), &[], 0),
            Err(HubError::Gone)
        );
    }

    #[test]
    fn leave_reports_last_and_forgets_the_channel() {
        let hub = Hub::new(16);
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
        assert!(hub.join(&k, ConnId(3), Arc::new(MemorySink::new(1))).unwrap());
    }

    #[test]
    fn concurrent_join_and_leave_never_lose_a_subscriber() {
        let hub = Arc::new(Hub::new(16));
        let k = key("race");
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let hub = hub.clone();
                let k = k.clone();
                std::thread::spawn(move || {
                    for i in 0..2000u64 {
                        let conn = ConnId(t * 1_000_000 + i);
                        hub.join(&k, conn, Arc::new(MemorySink::new(4))).unwrap();
                        hub.go_live(&k, conn, &msg(&k, 0), &[], 0).unwrap();
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
