//! A channel's live feed on one pod (cluster mode): what the stream
//! republishes for the channel (its messages and its turns' events, on one
//! subscription), delivered each once and in offset order. A message whose
//! previous offset on its subject (`Nats-Last-Sequence`) is not the last
//! one delivered there means something was missed or is late (a core
//! message lost in a reconnect, a trim, an age-out, or a copy nats-server
//! republished after a later one: it republishes after letting go of the
//! stream, so copies of messages two pods stored at once can arrive
//! swapped), and the missing range is read from the stream before it goes
//! on. That keeps each subject in order; while the channel has a live turn
//! (more than one subject in play), a message with a hole before it also
//! waits while the stream is asked for the channel's messages in the hole
//! (one direct get when there are none), so turn events and messages keep
//! their order too. After its connection reconnects, a feed also reads
//! what was stored meanwhile, so the last message of a burst lost on the
//! wire does not wait for a next one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use futures_util::StreamExt;
use switchboard_actors::BackplaneError;
use switchboard_proto::subjects::{self, Part};
use switchboard_proto::{ChannelName, TurnId};

use super::backplane::OrgLink;
use super::stream::{OrgStream, Stored};

/// The longest a feed's start waits for its subscription to be confirmed.
const ROUND_TRIP: Duration = Duration::from_secs(2);
/// How long after its last turn event a channel still counts as one with
/// turns (whose next turn may start at any moment): its feed keeps
/// checking holes that long.
const TURNS_RECENT: Duration = Duration::from_secs(60);

/// What to do with one republished message.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// The next one: deliver it.
    Deliver,
    /// Delivered already (or older): drop it.
    Stale,
    /// Something came between: read the stream after the last delivered
    /// offset up to this one first.
    Gap,
}

/// The ordering state of one subject of a feed.
#[derive(Debug)]
pub struct Sequencer {
    /// Where the feed started: everything through it came before.
    floor: u64,
    last: u64,
}

impl Sequencer {
    /// A feed that has delivered everything through `floor`.
    pub fn new(floor: u64) -> Self {
        Sequencer { floor, last: floor }
    }

    pub fn last(&self) -> u64 {
        self.last
    }

    /// Judges a message at `offset` whose subject's previous one was `previous`.
    pub fn offer(&self, offset: u64, previous: u64) -> Step {
        // Until the subject's first delivery, any previous offset from
        // before the start is one the feed was not meant to deliver.
        let untouched = self.last == self.floor;
        if offset <= self.last {
            Step::Stale
        } else if previous == self.last || (untouched && previous < self.floor) {
            Step::Deliver
        } else {
            Step::Gap
        }
    }

    /// Records that `offset` was delivered.
    pub fn delivered(&mut self, offset: u64) {
        self.last = self.last.max(offset);
    }
}

/// The offset and previous offset a republished message carries.
pub fn sequences(headers: Option<&HeaderMap>) -> Option<(u64, u64)> {
    let headers = headers?;
    let get = |name: &str| headers.get(name)?.as_str().parse::<u64>().ok();
    Some((get("Nats-Sequence")?, get("Nats-Last-Sequence")?))
}

/// One channel's live feed on this pod.
pub struct Feed {
    client: async_nats::Client,
    live: async_nats::Subscriber,
    /// Bumped when the connection (re)connects; `None` once it is gone.
    reconnects: Option<tokio::sync::watch::Receiver<u64>>,
    stream: Arc<OrgStream>,
    channel: ChannelName,
    floor: u64,
    /// Per stored subject (the channel's messages, each live turn).
    seqs: HashMap<String, Sequencer>,
    /// What was stored between the requested start and the floor, to be
    /// delivered first.
    catch_up: Vec<(String, Stored)>,
    /// The newest offset delivered (or the floor).
    delivered: u64,
    /// When this feed last saw a turn event.
    turn_seen: Option<tokio::time::Instant>,
}

impl Feed {
    /// Subscribes to `channel`'s republished messages and returns once the
    /// subscription is live on the server; the feed then delivers what comes
    /// after `after` (what was stored since is read from the stream first),
    /// or by default after the stream's newest offset, read after
    /// subscribing, so nothing falls between the two.
    pub async fn start(
        link: &OrgLink,
        stream: Arc<OrgStream>,
        channel: &ChannelName,
        after: Option<u64>,
    ) -> Result<Feed, BackplaneError> {
        let client = &link.client;
        let mut reconnects = link.reconnects.clone();
        reconnects.borrow_and_update();
        let live = client
            .subscribe(subjects::live(channel))
            .await
            .map_err(|e| BackplaneError::Unavailable(format!("live subscription: {e}")))?;
        // A round trip, so the subscription is live on the server (NATS.md, trap 7).
        let _ = tokio::time::timeout(ROUND_TRIP, client.request(subjects::PING, "".into())).await;
        let floor = stream.state(channel).await?.last;
        let catch_up = match after {
            Some(after) if after < floor => {
                stream
                    .read_subjects(&subjects::stored_all(channel), after, floor, usize::MAX)
                    .await?
            }
            _ => Vec::new(),
        };
        Ok(Feed {
            client: client.clone(),
            live,
            reconnects: Some(reconnects),
            stream,
            channel: channel.clone(),
            floor,
            seqs: HashMap::new(),
            catch_up,
            delivered: floor,
            turn_seen: None,
        })
    }

    /// The newest offset this feed delivered (or started after).
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Hands every message after the start to `deliver` with the part of
    /// the channel it belongs to, in order, each once, until the
    /// subscription ends or a gap cannot be read.
    pub async fn run(
        &mut self,
        mut deliver: impl FnMut(&Part, Stored) -> Option<TurnId>,
    ) -> Result<(), BackplaneError> {
        for (subject, m) in std::mem::take(&mut self.catch_up) {
            if let Some(part) = subjects::part(&subject, &self.channel) {
                deliver(&part, m);
            }
        }
        loop {
            let reconnected = async {
                match &mut self.reconnects {
                    Some(r) => r.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            let message = tokio::select! {
                message = self.live.next() => message,
                again = reconnected => {
                    if again {
                        self.catch_up(&mut deliver).await?;
                    } else {
                        self.reconnects = None;
                    }
                    continue;
                }
            };
            let Some(message) = message else {
                return Ok(());
            };
            let (Some((offset, previous)), Some(part), Some(subject)) = (
                sequences(message.headers.as_ref()),
                subjects::part(&message.subject, &self.channel),
                subjects::stored(&message.subject),
            ) else {
                continue;
            };
            if matches!(part, Part::Turn(_)) {
                self.turn_seen = Some(tokio::time::Instant::now());
            }
            if offset > self.delivered + 1 && self.turn_live() {
                self.fill(offset, &mut deliver).await?;
            }
            let floor = self.floor;
            let seq = self
                .seqs
                .entry(subject.clone())
                .or_insert_with(|| Sequencer::new(floor));
            if offset < self.delivered && seq.offer(offset, previous) != Step::Stale {
                // A copy that came after later ones of another subject,
                // with no turn live to make this feed look: delivered late
                // rather than not at all.
                tracing::debug!(channel = %self.channel, offset, delivered = self.delivered, "a late copy");
            }
            match seq.offer(offset, previous) {
                Step::Stale => continue,
                Step::Deliver => {}
                Step::Gap => {
                    let missed = self
                        .stream
                        .read(&subject, seq.last(), offset - 1, usize::MAX)
                        .await?;
                    for m in missed {
                        seq.delivered(m.offset);
                        deliver(&part, m);
                    }
                    self.delivered = self.delivered.max(seq.last());
                }
            }
            seq.delivered(offset);
            self.delivered = self.delivered.max(offset);
            let ended = deliver(
                &part,
                Stored {
                    offset,
                    headers: message.headers,
                    payload: message.payload,
                },
            );
            // A finished turn's subject is purged: its id may start afresh.
            if let Some(turn) = ended {
                self.seqs.remove(&subjects::turn(&self.channel, &turn));
            }
        }
    }

    /// Whether the channel has turns: one live as far as this feed knows
    /// (its subject is forgotten when it finishes), or one lately. Only
    /// then can copies of different subjects be swapped, as a channel
    /// without turns has one subject.
    fn turn_live(&self) -> bool {
        self.turn_seen.is_some_and(|t| t.elapsed() < TURNS_RECENT)
            || self
                .seqs
                .keys()
                .any(|s| matches!(subjects::part(s, &self.channel), Some(Part::Turn(_))))
    }

    /// Delivers the channel's messages stored after the last delivered
    /// offset and before `before`, oldest first, read from the stream.
    async fn fill(
        &mut self,
        before: u64,
        deliver: &mut impl FnMut(&Part, Stored) -> Option<TurnId>,
    ) -> Result<(), BackplaneError> {
        let all = subjects::stored_all(&self.channel);
        loop {
            let next = self
                .stream
                .read_subjects(&all, self.delivered, before - 1, 1)
                .await?;
            let Some((subject, m)) = next.into_iter().next() else {
                return Ok(());
            };
            self.delivered = m.offset;
            let floor = self.floor;
            let seq = self
                .seqs
                .entry(subject.clone())
                .or_insert_with(|| Sequencer::new(floor));
            if m.offset <= seq.last() {
                continue;
            }
            seq.delivered(m.offset);
            if let Some(part) = subjects::part(&subject, &self.channel)
                && let Some(turn) = deliver(&part, m)
            {
                self.seqs.remove(&subjects::turn(&self.channel, &turn));
            }
        }
    }

    /// Delivers what was stored after the last delivered offset (what a
    /// reconnect may have lost on the wire), once the subscription is live
    /// again.
    async fn catch_up(
        &mut self,
        deliver: &mut impl FnMut(&Part, Stored) -> Option<TurnId>,
    ) -> Result<(), BackplaneError> {
        // A round trip: the resubscription is live on the server after it.
        let _ = tokio::time::timeout(ROUND_TRIP, self.client.request(subjects::PING, "".into())).await;
        let through = self.stream.state(&self.channel).await?.last;
        let missed = self
            .stream
            .read_subjects(
                &subjects::stored_all(&self.channel),
                self.delivered,
                through,
                usize::MAX,
            )
            .await?;
        for (subject, m) in missed {
            let Some(part) = subjects::part(&subject, &self.channel) else {
                continue;
            };
            let floor = self.floor;
            let seq = self.seqs.entry(subject).or_insert_with(|| Sequencer::new(floor));
            if m.offset <= seq.last() {
                continue;
            }
            seq.delivered(m.offset);
            self.delivered = self.delivered.max(m.offset);
            deliver(&part, m);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_stale_and_gaps() {
        let mut s = Sequencer::new(0);
        assert_eq!(s.offer(1, 0), Step::Deliver);
        s.delivered(1);
        assert_eq!(s.offer(1, 0), Step::Stale, "a duplicate");
        assert_eq!(s.offer(4, 1), Step::Deliver, "offsets need not be contiguous");
        s.delivered(4);
        assert_eq!(s.offer(9, 7), Step::Gap, "7 was never delivered");
        assert_eq!(
            s.offer(9, 0),
            Step::Gap,
            "an age-out or purge says 0: read the stream"
        );
        s.delivered(9);
        assert_eq!(s.last(), 9);
        // A feed started at 20: a subject's first message may follow one
        // from before the start, and only its first.
        let mut s = Sequencer::new(20);
        assert_eq!(s.offer(15, 12), Step::Stale, "from before the start");
        assert_eq!(s.offer(23, 17), Step::Deliver);
        s.delivered(23);
        assert_eq!(s.offer(25, 17), Step::Gap);
        let fresh = Sequencer::new(20);
        assert_eq!(
            fresh.offer(26, 22),
            Step::Gap,
            "22 came after the start and was missed"
        );
        let mut h = HeaderMap::new();
        h.insert("Nats-Sequence", "12");
        h.insert("Nats-Last-Sequence", "9");
        assert_eq!(sequences(Some(&h)), Some((12, 9)));
        assert_eq!(sequences(None), None);
    }
}
