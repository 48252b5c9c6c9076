//! One client connection's protocol logic: it decodes each inbound frame and
//! acts on it (subscribe with exact resume, unsubscribe, publish, send,
//! ping), answering through the connection's [`Sink`]. `src` owns the socket
//! and calls in here one frame at a time, so a client is back-pressured by its
//! own requests.

use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use parking_lot::Mutex;
use serde_json::value::RawValue;
use switchboard_proto::client::Target;
use switchboard_proto::{
    Ack, ChannelName, ClientFrame, ConnId, ErrorCode, From, Grants, OrgId, PreparedFrame, Recover, RequestId,
    ServerFrame, Subject,
};

use crate::backplane::{BoxFuture, Event};
use crate::hub::{ChannelKey, HubError};
use crate::link::{FrameHandler, Supervised};
use crate::org::OrgHandle;
use crate::session::{Offline, SessionMsg};
use crate::sink::Sink;
use crate::telemetry;
use crate::tree::Services;

/// Who a connection is, from its verified token.
#[derive(Clone, Debug)]
pub struct Identity {
    pub org: OrgId,
    pub subject: Subject,
    pub grants: Grants,
}

/// The part of a connection its supervisor needs, to close it and to
/// release what it holds even if its task panicked.
pub struct ConnShared {
    pub id: ConnId,
    pub sink: Arc<dyn Sink>,
    org: OrgHandle,
    /// A short list: most connections hold one to three subscriptions, and
    /// a `Vec` costs far less per idle connection than a hash set.
    subscriptions: Mutex<Vec<ChannelName>>,
    services: Arc<Services>,
}

impl ConnShared {
    fn key(&self, channel: &ChannelName) -> ChannelKey {
        ChannelKey::new(self.org.org().clone(), channel.clone())
    }

    /// Drops `channel` from the subscription list; false if it was not there.
    fn forget(&self, channel: &ChannelName) -> bool {
        let mut subs = self.subscriptions.lock();
        let Some(at) = subs.iter().position(|c| c == channel) else {
            return false;
        };
        subs.swap_remove(at);
        true
    }

    /// Leaves `channel` in the hub; tells the org when it was the last local subscriber.
    fn leave(&self, channel: &ChannelName) {
        if self.services.hub.leave(&self.key(channel), self.id) {
            self.org.reconcile(channel);
        }
        telemetry::subscriptions(-1.0);
    }
}

impl Supervised for ConnShared {
    fn id(&self) -> ConnId {
        self.id
    }

    fn sink(&self) -> &Arc<dyn Sink> {
        &self.sink
    }

    /// Releases every subscription and the hold on the org.
    fn release(&self) {
        let channels = std::mem::take(&mut *self.subscriptions.lock());
        for channel in &channels {
            self.leave(channel);
        }
        self.services.release_org(self.org.org());
    }
}

pub struct Connection {
    shared: Arc<ConnShared>,
    subject: Subject,
    grants: Grants,
    limiter: Option<DefaultDirectRateLimiter>,
}

impl Connection {
    pub(crate) fn new(
        id: ConnId,
        identity: Identity,
        sink: Arc<dyn Sink>,
        org: OrgHandle,
        services: Arc<Services>,
    ) -> Self {
        let limits = &services.limits;
        let limiter = NonZeroU32::new(limits.publish_rate).map(|rate| {
            let burst = NonZeroU32::new(limits.publish_burst).unwrap_or(rate);
            RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
        });
        Self {
            shared: Arc::new(ConnShared {
                id,
                sink,
                org,
                subscriptions: Mutex::new(Vec::new()),
                services,
            }),
            subject: identity.subject,
            grants: identity.grants,
            limiter,
        }
    }

    pub fn id(&self) -> ConnId {
        self.shared.id
    }

    pub fn subject(&self) -> &Subject {
        &self.subject
    }

    pub fn shared(&self) -> &Arc<ConnShared> {
        &self.shared
    }

    fn services(&self) -> &Services {
        &self.shared.services
    }

    fn reply(&self, frame: ServerFrame) {
        // A refused reply means the connection is closing; nothing to do.
        let _ = self.shared.sink.offer(&frame.prepare());
    }

    fn error(&self, id: Option<RequestId>, code: ErrorCode, message: impl Into<String>) {
        telemetry::client_error(code);
        self.reply(ServerFrame::error(id, code, message));
    }

    /// Handles one complete text frame.
    pub async fn on_text(&mut self, payload: &[u8]) {
        match ClientFrame::decode(payload) {
            Ok(frame) => self.on_frame(frame).await,
            Err(e) => self.error(e.id, e.code, e.message),
        }
    }

    /// Binary frames are not part of the protocol.
    pub fn on_binary(&self) {
        self.error(
            None,
            ErrorCode::ValidationError,
            "binary frames are not supported; send JSON text frames",
        );
    }

    /// A frame larger than the limit was skipped without being read.
    pub fn on_oversized(&self, len: u64, max: usize) {
        self.error(
            None,
            ErrorCode::FrameTooLarge,
            format!("frame of {len} bytes exceeds the limit of {max} bytes; it was discarded"),
        );
    }

    async fn on_frame(&mut self, frame: ClientFrame) {
        match frame {
            ClientFrame::Subscribe { id, channel, recover } => self.subscribe(id, channel, recover).await,
            ClientFrame::Unsubscribe { id, channel } => self.unsubscribe(id, channel),
            ClientFrame::Publish { id, channel, data } => self.publish(id, channel, &data).await,
            ClientFrame::Send {
                id,
                to,
                reply_to,
                data,
            } => self.send(id, to, reply_to, data).await,
            ClientFrame::Ping { id } => self.reply(ServerFrame::Pong { id }),
        }
    }

    async fn subscribe(&mut self, id: RequestId, channel: ChannelName, recover: Option<Recover>) {
        if !self.grants.may_subscribe(&channel) {
            return self.error(
                Some(id),
                ErrorCode::Forbidden,
                format!("not allowed to subscribe to {channel}"),
            );
        }
        let max = self.services().limits.max_subscriptions;
        {
            let mut subs = self.shared.subscriptions.lock();
            if subs.contains(&channel) {
                drop(subs);
                return self.error(
                    Some(id),
                    ErrorCode::AlreadySubscribed,
                    format!("already subscribed to {channel}"),
                );
            }
            if subs.len() >= max {
                drop(subs);
                return self.error(
                    Some(id),
                    ErrorCode::LimitExceeded,
                    format!("at most {max} subscriptions per connection"),
                );
            }
            // Recorded first, so a panic from here on still releases it.
            subs.push(channel.clone());
        }
        telemetry::subscriptions(1.0);
        match self.join(&id, &channel, recover).await {
            Ok(()) => {}
            Err(HubError::Gone) => {} // cut off while catching up; the socket is closing
            // The connection's own set said no; only this connection joins under its id.
            Err(HubError::AlreadySubscribed) => self.error(
                Some(id),
                ErrorCode::AlreadySubscribed,
                format!("already subscribed to {channel}"),
            ),
        }
    }

    /// Joins the hub pending, attaches the channel, reads history, then goes
    /// live with the ack and the replay. On failure the subscription is undone
    /// and the client told why.
    async fn join(
        &mut self,
        id: &RequestId,
        channel: &ChannelName,
        recover: Option<Recover>,
    ) -> Result<(), HubError> {
        let key = self.shared.key(channel);
        let services = Arc::clone(&self.shared.services);
        let first = services
            .hub
            .join(&key, self.shared.id, Arc::clone(&self.shared.sink))?;
        let undo = |this: &Self, code: ErrorCode, message: String| {
            this.shared.forget(channel);
            this.shared.leave(channel);
            this.error(Some(id.clone()), code, message);
        };
        if first && let Err(e) = self.shared.org.attach(channel).await {
            tracing::warn!(error = %e, "attach failed");
            undo(
                self,
                ErrorCode::Unavailable,
                format!("cannot subscribe to {channel} right now; retry"),
            );
            return Ok(());
        }
        let since = recover.as_ref().map(|r| r.since);
        let read = match services
            .history
            .read(&key, since, services.limits.replay_limit)
            .await
        {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!(error = %e, "history read failed");
                undo(
                    self,
                    ErrorCode::Unavailable,
                    format!("cannot read the history of {channel} right now; retry"),
                );
                return Ok(());
            }
        };
        let recovered = recover.map(|r| {
            let same_epoch = r.epoch.is_none_or(|e| e == read.epoch);
            same_epoch && read.complete && !read.more
        });
        // A recovery replays what was missed; a plain subscribe only the
        // snapshots of turns in progress; a failed recovery nothing.
        let replay = if recovered != Some(false) {
            read.messages.as_slice()
        } else {
            &[]
        };
        // The replay (when there is one) reaches the channel's top as of the
        // read; the live stream continues after it.
        let ack = ServerFrame::Ack(Ack {
            channel: Some(channel.clone()),
            offset: Some(read.top),
            epoch: Some(read.epoch.clone()),
            recovered,
            ..Ack::new(id.clone())
        })
        .prepare();
        services.hub.go_live(&key, self.shared.id, &ack, replay, read.top)
    }

    fn unsubscribe(&mut self, id: RequestId, channel: ChannelName) {
        if !self.shared.forget(&channel) {
            return self.error(
                Some(id),
                ErrorCode::NotFound,
                format!("not subscribed to {channel}"),
            );
        }
        self.shared.leave(&channel);
        self.reply(ServerFrame::Ack(Ack {
            channel: Some(channel),
            ..Ack::new(id)
        }));
    }

    fn rate_limited(&self) -> bool {
        self.limiter.as_ref().is_some_and(|l| l.check().is_err())
    }

    async fn publish(&mut self, id: RequestId, channel: ChannelName, data: &RawValue) {
        if !self.grants.may_publish(&channel) {
            return self.error(
                Some(id),
                ErrorCode::Forbidden,
                format!("not allowed to publish on {channel}"),
            );
        }
        if self.rate_limited() {
            return self.error(
                Some(id),
                ErrorCode::RateLimited,
                "publish rate exceeded; slow down",
            );
        }
        let key = self.shared.key(&channel);
        match self
            .services()
            .backplane
            .publish(&key, Event::Message(data))
            .await
        {
            Ok(published) => self.reply(ServerFrame::Ack(Ack {
                channel: Some(channel),
                offset: Some(published.offset),
                epoch: Some(published.epoch),
                ..Ack::new(id)
            })),
            Err(e) => {
                tracing::warn!(error = %e, "publish failed");
                self.error(Some(id), ErrorCode::Unavailable, "publish failed; retry")
            }
        }
    }

    async fn send(&mut self, id: RequestId, to: Target, reply_to: Option<ChannelName>, data: Box<RawValue>) {
        if !self.grants.may_send(&to) {
            return self.error(
                Some(id),
                ErrorCode::Forbidden,
                format!("not allowed to send to {to}"),
            );
        }
        if let Some(channel) = &reply_to
            && !self.grants.may_subscribe(channel)
        {
            return self.error(
                Some(id),
                ErrorCode::Forbidden,
                format!("reply_to {channel} must be a channel you may subscribe to"),
            );
        }
        if self.rate_limited() {
            return self.error(Some(id), ErrorCode::RateLimited, "send rate exceeded; slow down");
        }
        let not_found = |this: &Self, id| {
            this.error(
                Some(id),
                ErrorCode::NotFound,
                format!("no live operator session for {to}"),
            )
        };
        let Some(session) = self.shared.org.resolve(&to).await else {
            return not_found(self, id);
        };
        let frame = ServerFrame::Frame {
            from: From {
                conn: self.shared.id,
                sub: self.subject.clone(),
            },
            reply_to,
            data,
        }
        .prepare();
        match ractor::call!(session, SessionMsg::FromClient, frame) {
            Ok(Ok(())) => self.reply(ServerFrame::Ack(Ack::new(id))),
            Ok(Err(Offline)) => self.error(
                Some(id),
                ErrorCode::Unavailable,
                format!("{to} is offline and its buffer is full; retry later"),
            ),
            // It ended between the lookup and the call.
            Err(_) => not_found(self, id),
        }
    }

    /// Writes a frame built elsewhere (e.g. a close frame) in order.
    pub fn write(&self, frame: &PreparedFrame) {
        let _ = self.shared.sink.offer(frame);
    }
}

impl FrameHandler for Connection {
    fn on_text<'a>(&'a mut self, payload: &'a [u8]) -> BoxFuture<'a, ()> {
        Box::pin(Connection::on_text(self, payload))
    }

    fn on_binary(&self) {
        Connection::on_binary(self)
    }

    fn on_oversized(&self, len: u64, max: usize) {
        Connection::on_oversized(self, len, max)
    }

    fn write(&self, frame: &PreparedFrame) {
        Connection::write(self, frame)
    }

    fn supervised(&self) -> Arc<dyn Supervised> {
        self.shared.clone()
    }
}
