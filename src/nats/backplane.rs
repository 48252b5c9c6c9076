//! The cluster backplane over NATS. A publish (a message or a turn event,
//! [`super::turns`]) is a JetStream publish into the org's stream, whose
//! acknowledgement carries the offset; a channel with local subscribers is
//! fed by its [`Feed`], on the pod that published as on every other;
//! history and live turns' snapshots are read from the stream. The same
//! message therefore has the same offset on every pod, and a client may
//! resume on any of them.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::value::RawValue;
use switchboard_actors::backplane::BoxFuture;
use switchboard_actors::{
    Backplane, BackplaneError, ChannelKey, Event, History, HistoryLimits, HistoryRead, Hub, Position,
    Published, Sent,
};
use switchboard_proto::subjects::{self, Part};
use switchboard_proto::{OrgId, TurnId, TurnStatus};
use tokio::sync::OnceCell;

use super::live::Feed;
use super::stream::OrgStream;
use super::turns::{self, CHECKPOINT_EVERY, Finished, Folded};

/// The most a live turn's subject holds: a checkpoint, the tokens after it,
/// and slack for a checkpoint that failed.
const TURN_READ: usize = 4 * CHECKPOINT_EVERY;

/// This pod's connection into an org's account, as the backplane uses it.
#[derive(Clone)]
pub struct OrgLink {
    pub client: async_nats::Client,
    /// Changes when the connection was replaced (what was made over the
    /// old one is gone).
    pub id: u64,
    /// Bumped on every (re)connect of this connection.
    pub reconnects: tokio::sync::watch::Receiver<u64>,
}

/// Opens this pod's connection into an org's account (the account pool's
/// [`super::accounts::Accounts::open_conn`] in a server).
pub type OpenOrg = Arc<dyn Fn(OrgId) -> BoxFuture<'static, Result<OrgLink, BackplaneError>> + Send + Sync>;

/// The longest a channel's feed waits before it follows again after its
/// connection broke.
const FEED_RETRY_MAX: Duration = Duration::from_secs(2);

/// An org's stream over one connection into its account.
struct Opened {
    conn: u64,
    stream: Arc<OnceCell<Arc<OrgStream>>>,
}

pub struct NatsBackplane {
    /// Itself, for the tasks that follow its channels.
    me: Weak<NatsBackplane>,
    open_org: OpenOrg,
    hub: Arc<Hub>,
    limits: HistoryLimits,
    /// Each org's stream, opened once on first use (concurrent first uses
    /// wait for the one opening it).
    streams: Mutex<HashMap<OrgId, Opened>>,
    /// The live feed of each attached channel.
    feeds: Mutex<HashMap<ChannelKey, tokio::task::AbortHandle>>,
    /// The turns this pod streams, as far as it published them (a turn
    /// missing here is read back from its subject: it may have started on
    /// another pod, or a publish of it failed).
    streaming: Mutex<HashMap<(ChannelKey, TurnId), Folded>>,
}

/// A live turn as its subject holds it.
async fn read_turn(stream: &OrgStream, key: &ChannelKey, turn: &TurnId) -> Result<Folded, BackplaneError> {
    let stored = stream
        .read(&subjects::turn(&key.channel, turn), 0, u64::MAX, TURN_READ)
        .await?;
    turns::fold(&stored).ok_or_else(|| BackplaneError::NoSuchTurn(turn.clone()))
}

/// A publish the stream kept refusing on its expectation (the subject
/// moved on again between the re-read and the retry).
fn unavailable(what: &str) -> BackplaneError {
    BackplaneError::Unavailable(format!("{what}: refused twice, the subject moved on meanwhile"))
}

impl NatsBackplane {
    pub fn new(open_org: OpenOrg, hub: Arc<Hub>, limits: HistoryLimits) -> Arc<Self> {
        Arc::new_cyclic(|me| NatsBackplane {
            me: me.clone(),
            open_org,
            hub,
            limits,
            streams: Mutex::new(HashMap::new()),
            feeds: Mutex::new(HashMap::new()),
            streaming: Mutex::new(HashMap::new()),
        })
    }

    /// Per channel subject, what the stream may hold (see `OrgStream::open`).
    fn retained(&self) -> usize {
        self.limits.max_messages.max(2 * CHECKPOINT_EVERY)
    }

    /// Takes `turn`'s state out of the streaming table (or reads it back
    /// from its subject); the caller puts it back once its publish worked.
    async fn take_turn(
        &self,
        stream: &OrgStream,
        key: &ChannelKey,
        turn: &TurnId,
    ) -> Result<Folded, BackplaneError> {
        let taken = self.streaming.lock().remove(&(key.clone(), turn.clone()));
        match taken {
            Some(live) => Ok(live),
            None => read_turn(stream, key, turn).await,
        }
    }

    /// Publishes `out` on `turn`'s subject after `live`'s last event; if
    /// the turn moved on elsewhere, reads it back and tries once more.
    async fn publish_turn(
        &self,
        stream: &OrgStream,
        key: &ChannelKey,
        turn: &TurnId,
        live: &mut Folded,
        out: impl Fn() -> turns::Outgoing,
    ) -> Result<u64, BackplaneError> {
        let subject = subjects::turn(&key.channel, turn);
        if let Some(offset) = stream
            .publish(subject.clone(), out().after(live.last_offset).into_message())
            .await?
        {
            return Ok(offset);
        }
        *live = read_turn(stream, key, turn).await?;
        stream
            .publish(subject, out().after(live.last_offset).into_message())
            .await?
            .ok_or_else(|| unavailable("turn event"))
    }

    /// Publishes a plain message that other pods may publish too under the
    /// same `id` (a publisher's event): the stream keeps the first.
    pub async fn publish_once(
        &self,
        key: &ChannelKey,
        data: &RawValue,
        id: &str,
    ) -> Result<Published, BackplaneError> {
        let (_, stream) = self.stream(&key.org).await?;
        let message = PublishMessage::build().payload(Bytes::copy_from_slice(data.get().as_bytes()));
        let offset = stream
            .publish_with_id(subjects::channel(&key.channel), message, id)
            .await?
            .ok_or_else(|| unavailable("publisher event"))?;
        Ok(Published {
            offset,
            epoch: stream.epoch().clone(),
        })
    }

    async fn publish_now(&self, key: &ChannelKey, event: Event<'_>) -> Result<Published, BackplaneError> {
        let (_, stream) = self.stream(&key.org).await?;
        let channel = &key.channel;
        let offset = match event {
            Event::Message(data) => {
                stream
                    .publish_message(channel, Bytes::copy_from_slice(data.get().as_bytes()))
                    .await?
            }
            Event::TurnStart(turn) => {
                let live = stream.state(channel).await?.turns.len();
                if live >= self.limits.max_live_turns {
                    return Err(BackplaneError::TooManyTurns(self.limits.max_live_turns));
                }
                let offset = stream
                    .publish(subjects::turn(channel, turn), turns::start().into_message())
                    .await?
                    .ok_or_else(|| BackplaneError::TurnExists(turn.clone()))?;
                let live = Folded {
                    start_offset: offset,
                    last_offset: offset,
                    ..Folded::default()
                };
                self.streaming.lock().insert((key.clone(), turn.clone()), live);
                offset
            }
            Event::Token(turn, text) => {
                let mut live = self.take_turn(&stream, key, turn).await?;
                let offset = self
                    .publish_turn(&stream, key, turn, &mut live, || turns::token(text))
                    .await?;
                live.text.push_str(text);
                live.tokens += 1;
                live.last_offset = offset;
                if live.tokens >= CHECKPOINT_EVERY {
                    let checkpoint = turns::checkpoint(live.start_offset, &live.text);
                    live.last_offset = stream
                        .publish(
                            subjects::turn(channel, turn),
                            checkpoint.after(offset).into_message(),
                        )
                        .await?
                        .ok_or_else(|| unavailable("checkpoint"))?;
                    live.tokens = 0;
                }
                self.streaming.lock().insert((key.clone(), turn.clone()), live);
                offset
            }
            Event::TurnEnd(turn) | Event::TurnError { turn, .. } => {
                let mut live = self.take_turn(&stream, key, turn).await?;
                // The whole text goes into history: if another pod streamed
                // on, this pod's copy is behind.
                if stream.last(&subjects::turn(channel, turn)).await? != Some(live.last_offset) {
                    live = read_turn(&stream, key, turn).await?;
                }
                let (status, reason, message) = match event {
                    Event::TurnError { reason, message, .. } => (TurnStatus::Error, Some(reason), message),
                    _ => (TurnStatus::Done, None, None),
                };
                let finished = Finished {
                    turn: turn.clone(),
                    start_offset: live.start_offset,
                    text: live.text,
                    status,
                    reason,
                    message: message.map(str::to_owned),
                };
                let out = turns::finished(&finished).map_err(|e| {
                    BackplaneError::Unavailable(format!("cannot encode a finished turn: {e}"))
                })?;
                let offset = stream
                    .publish(subjects::channel(channel), out.into_message())
                    .await?
                    .ok_or_else(|| unavailable("turn end"))?;
                // Readers that still find the turn's events also find its end.
                if let Err(e) = stream.purge(&subjects::turn(channel, turn)).await {
                    tracing::warn!(org = %key.org, channel = %channel, turn = %turn, error = %e, "a finished turn's events stay until they age out");
                }
                offset
            }
        };
        Ok(Published {
            offset,
            epoch: stream.epoch().clone(),
        })
    }

    async fn stream(&self, org: &OrgId) -> Result<(OrgLink, Arc<OrgStream>), BackplaneError> {
        let link = (self.open_org)(org.clone()).await?;
        let (client, conn) = (link.client.clone(), link.id);
        let cell = {
            let mut streams = self.streams.lock();
            let opened = streams.entry(org.clone()).or_insert_with(|| Opened {
                conn,
                stream: Arc::default(),
            });
            // A new connection (the old one broke, or idled out): the stream
            // handle over the old one is of no use.
            if opened.conn != conn {
                *opened = Opened {
                    conn,
                    stream: Arc::default(),
                };
            }
            opened.stream.clone()
        };
        let stream = cell
            .get_or_try_init(|| async { OrgStream::open(client.clone(), self.limits).await.map(Arc::new) })
            .await?
            .clone();
        Ok((link, stream))
    }

    /// Lets go of `org`'s stream handle (its connection was closed as idle);
    /// the next use opens it again.
    pub fn forget(&self, org: &OrgId) {
        self.streams.lock().remove(org);
    }

    /// Brings `key`'s stored messages to the hub with `feed`, and when the
    /// feed ends (its connection broke), follows again from where it was,
    /// until detached.
    async fn follow(self: Arc<Self>, key: ChannelKey, mut feed: Feed) {
        let mut pause = Duration::from_millis(50);
        loop {
            let hub = &self.hub;
            let result = feed
                .run(|part, m| {
                    let (frame, ended) = turns::live_frame(&key.channel, part, &m);
                    if let Some(frame) = frame {
                        hub.deliver(&key, m.offset, &frame);
                    }
                    ended
                })
                .await;
            if let Err(e) = result {
                tracing::warn!(org = %key.org, channel = %key.channel, error = %e, "a channel's live feed broke; following again");
            }
            let after = feed.delivered();
            feed = loop {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(FEED_RETRY_MAX);
                let started = async {
                    let (link, stream) = self.stream(&key.org).await?;
                    Feed::start(&link, stream, &key.channel, Some(after)).await
                };
                match started.await {
                    Ok(feed) => break feed,
                    Err(e) => {
                        tracing::debug!(org = %key.org, channel = %key.channel, error = %e, "cannot follow the channel yet")
                    }
                }
            };
            pause = Duration::from_millis(50);
        }
    }

    async fn read_now(
        &self,
        key: &ChannelKey,
        from: Position,
        limit: usize,
    ) -> Result<HistoryRead, BackplaneError> {
        let (_, stream) = self.stream(&key.org).await?;
        let channel = &key.channel;
        let messages = subjects::channel(channel);
        // Everything through the stream's newest offset, and nothing past
        // it: the live feed brings what comes after.
        let state = stream.state(channel).await?;
        let top = state.last;
        let mut live = Vec::new();
        for subject in &state.turns {
            let Some(Part::Turn(turn)) = subjects::part(subject, channel) else {
                continue;
            };
            if let Some(folded) = turns::fold(&stream.read(subject, 0, top, TURN_READ).await?) {
                live.push((turn, folded));
            }
        }
        // A turn whose end is stored already (its events not yet purged) is over.
        if let Some(oldest) = live.iter().map(|(_, f)| f.last_offset).min() {
            let after = stream.read(&messages, oldest, top, self.retained()).await?;
            let ended: HashSet<TurnId> = turns::finished_turns(&after).collect();
            live.retain(|(turn, _)| !ended.contains(turn));
        }
        let first_message = stream.next_after(&messages, 0).await?.map(|m| m.offset);
        let first_live = live.iter().map(|(_, f)| f.last_offset).min();
        let mut read = HistoryRead {
            epoch: stream.epoch().clone(),
            top,
            first: first_message.into_iter().chain(first_live).min(),
            complete: true,
            messages: Vec::new(),
            more: false,
        };
        let (since, stored) = match from {
            Position::Live => (0, Vec::new()),
            // The channel keeps `max_messages`: read what the stream holds, keep those.
            Position::Tail => {
                let mut all = stream.read(&messages, 0, top, self.retained()).await?;
                let older = all.len().saturating_sub(self.limits.max_messages);
                all.drain(..older);
                (0, all)
            }
            // Offsets are not contiguous per channel, so whether something
            // between `since` and the oldest retained message was trimmed is
            // unknown: only a `since` at or past it is known to be complete
            // (a false `recovered:false` at worst, never a false `true`).
            Position::After(since) if since > top || first_message.is_some_and(|f| since + 1 < f) => {
                read.complete = false;
                return Ok(read);
            }
            Position::After(since) => (since, stream.read(&messages, since, top, limit + 1).await?),
        };
        let mut all: Vec<_> = stored
            .iter()
            .filter_map(|m| Some((m.offset, turns::history_frame(channel, m)?)))
            .collect();
        for (turn, folded) in &live {
            if folded.last_offset > since {
                all.push((folded.last_offset, turns::snapshot(channel, turn, folded)));
            }
        }
        read.fill(all, from, limit);
        Ok(read)
    }
}

impl Backplane for NatsBackplane {
    fn publish<'a>(
        &'a self,
        key: &'a ChannelKey,
        event: Event<'a>,
    ) -> BoxFuture<'a, Result<Published, BackplaneError>> {
        Box::pin(self.publish_now(key, event))
    }

    fn pipelines(&self) -> bool {
        true
    }

    fn send<'a>(
        &'a self,
        key: &'a ChannelKey,
        data: &'a RawValue,
    ) -> BoxFuture<'a, Result<Sent, BackplaneError>> {
        Box::pin(async move {
            let (_, stream) = self.stream(&key.org).await?;
            let epoch = stream.epoch().clone();
            let stored = stream
                .send_message(&key.channel, Bytes::copy_from_slice(data.get().as_bytes()))
                .await?;
            Ok(Sent::Pending(Box::pin(async move {
                Ok(Published {
                    offset: stored.await?,
                    epoch,
                })
            })))
        })
    }

    fn attach<'a>(&'a self, key: &'a ChannelKey) -> BoxFuture<'a, Result<(), BackplaneError>> {
        Box::pin(async move {
            let me = self
                .me
                .upgrade()
                .ok_or_else(|| BackplaneError::Unavailable("the backplane is shutting down".into()))?;
            let (link, stream) = self.stream(&key.org).await?;
            let feed = Feed::start(&link, stream, &key.channel, None).await?;
            let task = tokio::spawn(me.follow(key.clone(), feed));
            if let Some(old) = self.feeds.lock().insert(key.clone(), task.abort_handle()) {
                old.abort();
            }
            Ok(())
        })
    }

    fn detach(&self, key: &ChannelKey) {
        if let Some(feed) = self.feeds.lock().remove(key) {
            feed.abort();
        }
    }

    fn drop_org(&self, org: &OrgId) {
        self.feeds.lock().retain(|key, feed| {
            let keep = key.org != *org;
            if !keep {
                feed.abort();
            }
            keep
        });
        self.streams.lock().remove(org);
        self.streaming.lock().retain(|(key, _), _| key.org != *org);
    }
}

impl History for NatsBackplane {
    fn read<'a>(
        &'a self,
        key: &'a ChannelKey,
        from: Position,
        limit: usize,
    ) -> BoxFuture<'a, Result<HistoryRead, BackplaneError>> {
        Box::pin(self.read_now(key, from, limit))
    }
}
