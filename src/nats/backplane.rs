//! The cluster backplane over NATS (issue 11, in progress: plain messages;
//! turns do not cross pods yet, so it is not wired into `serve`). A publish
//! is a JetStream publish into the org's stream, whose acknowledgement
//! carries the offset; a channel with local subscribers is fed by its
//! [`Feed`], on the pod that published as on every other; history is read
//! from the stream. The same message therefore has the same offset on every
//! pod, and a client may resume on any of them.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::value::RawValue;
use switchboard_actors::backplane::BoxFuture;
use switchboard_actors::{
    Backplane, BackplaneError, ChannelKey, Event, History, HistoryLimits, HistoryRead, Hub, Position,
    Published,
};
use switchboard_proto::{ChannelName, OrgId, PreparedFrame};
use tokio::sync::OnceCell;

use super::live::Feed;
use super::stream::{OrgStream, Stored};

/// Opens this pod's connection into an org's account (the account pool's
/// [`super::accounts::Accounts::open`] in a server).
pub type OpenOrg =
    Arc<dyn Fn(OrgId) -> BoxFuture<'static, Result<async_nats::Client, BackplaneError>> + Send + Sync>;

pub struct NatsBackplane {
    open_org: OpenOrg,
    hub: Arc<Hub>,
    limits: HistoryLimits,
    /// Each org's stream, opened once on first use (concurrent first uses
    /// wait for the one opening it).
    streams: Mutex<HashMap<OrgId, Arc<OnceCell<Arc<OrgStream>>>>>,
    /// The live feed of each attached channel.
    feeds: Mutex<HashMap<ChannelKey, tokio::task::AbortHandle>>,
}

/// A stored message as subscribers get it; `None` if it is not JSON (only
/// pods write the stream, so that would be a bug or tampering).
fn frame(channel: &ChannelName, m: &Stored) -> Option<PreparedFrame> {
    let text = std::str::from_utf8(&m.payload).ok()?;
    let data = RawValue::from_string(text.to_owned()).ok()?;
    Some(PreparedFrame::message(channel, m.offset, &data))
}

impl NatsBackplane {
    pub fn new(open_org: OpenOrg, hub: Arc<Hub>, limits: HistoryLimits) -> Self {
        NatsBackplane {
            open_org,
            hub,
            limits,
            streams: Mutex::new(HashMap::new()),
            feeds: Mutex::new(HashMap::new()),
        }
    }

    async fn stream(&self, org: &OrgId) -> Result<(async_nats::Client, Arc<OrgStream>), BackplaneError> {
        let client = (self.open_org)(org.clone()).await?;
        let cell = self.streams.lock().entry(org.clone()).or_default().clone();
        let stream = cell
            .get_or_try_init(|| async { OrgStream::open(client.clone(), self.limits).await.map(Arc::new) })
            .await?
            .clone();
        Ok((client, stream))
    }

    async fn read_now(
        &self,
        key: &ChannelKey,
        from: Position,
        limit: usize,
    ) -> Result<HistoryRead, BackplaneError> {
        let (_, stream) = self.stream(&key.org).await?;
        let channel = &key.channel;
        let top = stream.last(channel).await?.unwrap_or(0);
        let first = stream.next_after(channel, 0).await?.map(|m| m.offset);
        let mut read = HistoryRead {
            epoch: stream.epoch().clone(),
            top,
            first,
            complete: true,
            messages: Vec::new(),
            more: false,
        };
        let stored = match from {
            Position::Live => Vec::new(),
            // The channel keeps at most `max_messages`: read them, keep the newest.
            Position::Tail => {
                let mut all = stream
                    .read(channel, 0, top, self.limits.max_messages.max(1))
                    .await?;
                let older = all.len().saturating_sub(limit);
                all.drain(..older);
                all
            }
            // Offsets are not contiguous per channel, so whether something
            // between `since` and the oldest retained message was trimmed is
            // unknown: only a `since` at or past it is known to be complete
            // (a false `recovered:false` at worst, never a false `true`).
            Position::After(since) if since > top || first.is_some_and(|f| since + 1 < f) => {
                read.complete = false;
                return Ok(read);
            }
            Position::After(since) => {
                let mut after = stream.read(channel, since, top, limit + 1).await?;
                read.more = after.len() > limit;
                after.truncate(limit);
                after
            }
        };
        read.messages = stored
            .iter()
            .filter_map(|m| Some((m.offset, frame(channel, m)?)))
            .collect();
        Ok(read)
    }
}

impl Backplane for NatsBackplane {
    fn publish<'a>(
        &'a self,
        key: &'a ChannelKey,
        event: Event<'a>,
    ) -> BoxFuture<'a, Result<Published, BackplaneError>> {
        Box::pin(async move {
            let Event::Message(data) = event else {
                return Err(BackplaneError::Unavailable("turns do not cross pods yet".into()));
            };
            let (_, stream) = self.stream(&key.org).await?;
            let payload = Bytes::copy_from_slice(data.get().as_bytes());
            let offset = stream.publish(&key.channel, payload).await?;
            Ok(Published {
                offset,
                epoch: stream.epoch().clone(),
            })
        })
    }

    fn attach<'a>(&'a self, key: &'a ChannelKey) -> BoxFuture<'a, Result<(), BackplaneError>> {
        Box::pin(async move {
            let (client, stream) = self.stream(&key.org).await?;
            let feed = Feed::start(&client, stream, &key.channel, None).await?;
            let (hub, fed) = (self.hub.clone(), key.clone());
            let task = tokio::spawn(async move {
                let result = feed
                    .run(|m| {
                        if let Some(f) = frame(&fed.channel, &m) {
                            hub.deliver(&fed, m.offset, &f);
                        }
                    })
                    .await;
                if let Err(e) = result {
                    tracing::warn!(org = %fed.org, channel = %fed.channel, error = %e, "a channel's live feed stopped");
                }
            });
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
