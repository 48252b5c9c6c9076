//! One client connection's protocol logic: it decodes each inbound frame and
//! acts on it (subscribe with exact resume, unsubscribe, publish, send,
//! ping), answering through the connection's [`Sink`]. `src` owns the socket
//! and calls in here one frame at a time, so a client is back-pressured by its
//! own requests.

use std::cell::Cell;
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::value::RawValue;
use switchboard_proto::client::Target;
use switchboard_proto::{
    Ack, ChannelName, ClientFrame, ConnId, ErrorCode, From, Grants, OrgId, Recover, RequestId, ServerFrame,
    Subject,
};

use crate::backplane::Sent;
use crate::backplane::{BackplaneError, BoxFuture, Position};
use crate::channels::Channels;
use crate::clock::{Instant, RateLimiter, rate_limiter, spent};
use crate::hub::{HubError, Live, Offsetted};
use crate::in_flight::InFlight;
use crate::leases::Forwarded;
use crate::limits::{REFUSAL_BURST, REFUSAL_RATE};
use crate::link::{FrameHandler, Supervised};
use crate::org::OrgHandle;
use crate::session::{Offline, SessionMsg};
use crate::sink::{Sink, offer_paced};
use crate::telemetry;
use crate::tree::Services;

/// Who a connection is, from its verified token.
#[derive(Clone, Debug)]
pub struct Identity {
    pub org: OrgId,
    pub subject: Subject,
    pub grants: Grants,
    /// The org's own publish rate per connection, if it set one.
    pub publish_rate: Option<u32>,
    /// The id of the credential it connected with (a JWT's `jti`, a
    /// ticket's id), so revoking that credential closes the connection.
    pub credential: Option<Arc<str>>,
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
    channels: Arc<Channels>,
    subject: Subject,
    credential: Option<Arc<str>>,
}

impl ConnShared {
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
        if self.channels.hub().leave(&self.org.key(channel), self.id) {
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

    fn org(&self) -> Option<&OrgId> {
        Some(self.org.org())
    }

    fn principal(&self) -> Option<(&Subject, Option<&str>)> {
        Some((&self.subject, self.credential.as_deref()))
    }

    fn subscribed(&self, channel: &ChannelName) -> bool {
        self.subscriptions.lock().contains(channel)
    }

    /// Releases every subscription and the hold on the org.
    fn release(&self) {
        let channels = std::mem::take(&mut *self.subscriptions.lock());
        for channel in &channels {
            self.leave(channel);
        }
        self.org.release();
    }
}

pub struct Connection {
    shared: Arc<ConnShared>,
    subject: Subject,
    grants: Grants,
    publishes: Option<RateLimiter>,
    subscribes: Option<RateLimiter>,
    refusals: Option<RateLimiter>,
    /// When a spent budget refills: the next frame is read no earlier.
    pause: Cell<Option<Instant>>,
    /// A refusal was sent past its budget: it is charged once the budget refills.
    refusal_owed: Cell<bool>,
    /// Publishes sent and not yet stored; their replies come first.
    in_flight: InFlight,
    services: Arc<Services>,
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
        Self {
            publishes: rate_limiter(
                identity.publish_rate.unwrap_or(limits.publish_rate),
                limits.publish_burst,
            ),
            subscribes: rate_limiter(limits.subscribe_rate, limits.subscribe_burst),
            refusals: rate_limiter(REFUSAL_RATE, REFUSAL_BURST),
            pause: Cell::new(None),
            in_flight: InFlight::default(),
            refusal_owed: Cell::new(false),
            shared: Arc::new(ConnShared {
                id,
                sink,
                org,
                subscriptions: Mutex::new(Vec::new()),
                channels: Arc::clone(&services.channels),
                subject: identity.subject.clone(),
                credential: identity.credential.clone(),
            }),
            subject: identity.subject,
            grants: identity.grants,
            services,
        }
    }

    fn reply(&self, frame: ServerFrame) {
        self.write(&frame.prepare());
    }

    /// Reads nothing more from this client until `until`.
    fn pause_until(&self, until: Instant) {
        self.pause
            .set(Some(self.pause.get().map_or(until, |p| p.max(until))));
    }

    /// Whether a request is over its rate; if so, the connection pauses
    /// until the limiter refills (never, without a limiter).
    fn limited(&self, limiter: &Option<RateLimiter>) -> bool {
        let due = limiter.as_ref().and_then(spent);
        if let Some(due) = due {
            self.pause_until(due);
        }
        due.is_some()
    }

    /// Writes the replies of every publish in flight, in order.
    async fn settle_all(&mut self) {
        while let Some(reply) = self.in_flight.next().await {
            self.write_settled(reply);
        }
    }

    fn write_settled(&self, reply: Result<ServerFrame, (RequestId, BackplaneError)>) {
        match reply {
            Ok(ack) => self.reply(ack),
            Err((id, e)) => self.refuse(Some(id), e.code(), e.public_message()),
        }
    }

    async fn on_frame(&mut self, frame: ClientFrame) {
        // Replies go out in request order: a publish in flight answers first.
        if !self.in_flight.is_empty() && !matches!(frame, ClientFrame::Publish { .. }) {
            self.settle_all().await;
        }
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
            return self.refuse(
                Some(id),
                ErrorCode::Forbidden,
                format!("not allowed to subscribe to {channel}"),
            );
        }
        if self.limited(&self.subscribes) {
            return self.refuse(
                Some(id),
                ErrorCode::RateLimited,
                "subscribe rate exceeded; slow down".into(),
            );
        }
        let max = self.services.limits.max_subscriptions;
        {
            let mut subs = self.shared.subscriptions.lock();
            if subs.contains(&channel) {
                drop(subs);
                return self.refuse(
                    Some(id),
                    ErrorCode::AlreadySubscribed,
                    format!("already subscribed to {channel}"),
                );
            }
            if subs.len() >= max {
                drop(subs);
                return self.refuse(
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
            Err(HubError::AlreadySubscribed) => self.refuse(
                Some(id),
                ErrorCode::AlreadySubscribed,
                format!("already subscribed to {channel}"),
            ),
        }
    }

    /// Undoes a subscription that could not be completed and says why.
    fn undo(&self, id: &RequestId, channel: &ChannelName, code: ErrorCode, message: String) {
        self.shared.forget(channel);
        self.shared.leave(channel);
        self.refuse(Some(id.clone()), code, message);
    }

    /// Joins the hub pending, attaches the channel, reads history, then
    /// writes the ack, the replay (paced by how fast the client reads) and
    /// what arrived meanwhile, and goes live.
    async fn join(
        &mut self,
        id: &RequestId,
        channel: &ChannelName,
        recover: Option<Recover>,
    ) -> Result<(), HubError> {
        let key = self.shared.org.key(channel);
        let channels = Arc::clone(&self.shared.channels);
        let conn = self.shared.id;
        let first = channels.hub().join(&key, conn, Arc::clone(&self.shared.sink))?;
        if first && let Err(e) = self.shared.org.attach(channel).await {
            self.undo(id, channel, e.code(), e.public_message());
            return Ok(());
        }
        let from = recover
            .as_ref()
            .map_or(Position::Live, |r| Position::After(r.since));
        let read = match channels.read(&key, from, self.services.limits.replay_limit).await {
            Ok(read) => read,
            Err(e) => {
                self.undo(id, channel, e.code(), e.public_message());
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
        });
        let sink = self.shared.sink.as_ref();
        let gone = |_| HubError::Gone;
        sink.offer(&ack.prepare()).map_err(gone)?;
        offer_paced(sink, replay.iter().map(frame_of))
            .await
            .map_err(gone)?;
        let mut top = read.top;
        loop {
            match channels.hub().go_live(&key, conn, top)? {
                Live::Now => return Ok(()),
                Live::Backlog(frames) => {
                    offer_paced(sink, frames.iter().map(frame_of))
                        .await
                        .map_err(gone)?;
                    top = frames.last().map_or(top, |(offset, _)| *offset);
                }
            }
        }
    }

    fn unsubscribe(&mut self, id: RequestId, channel: ChannelName) {
        if self.limited(&self.subscribes) {
            return self.refuse(
                Some(id),
                ErrorCode::RateLimited,
                "unsubscribe rate exceeded; slow down".into(),
            );
        }
        if !self.shared.forget(&channel) {
            return self.refuse(
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

    async fn publish(&mut self, id: RequestId, channel: ChannelName, data: &RawValue) {
        if !self.grants.may_publish(&channel) {
            self.settle_all().await;
            return self.refuse(
                Some(id),
                ErrorCode::Forbidden,
                format!("not allowed to publish on {channel}"),
            );
        }
        if self.limited(&self.publishes) {
            self.settle_all().await;
            return self.refuse(
                Some(id),
                ErrorCode::RateLimited,
                "publish rate exceeded; slow down".into(),
            );
        }
        let key = self.shared.org.key(&channel);
        match self.shared.channels.send(&key, data).await {
            Ok(Sent::Stored(published)) if self.in_flight.is_empty() => self.reply(ServerFrame::Ack(Ack {
                channel: Some(channel),
                offset: Some(published.offset),
                epoch: Some(published.epoch),
                ..Ack::new(id)
            })),
            Ok(Sent::Stored(published)) => {
                self.in_flight
                    .push(id, channel, Box::pin(std::future::ready(Ok(published))));
            }
            Ok(Sent::Pending(stored)) => {
                if self.in_flight.is_full()
                    && let Some(reply) = self.in_flight.next().await
                {
                    self.write_settled(reply);
                }
                self.in_flight.push(id, channel, stored);
            }
            Err(e) => {
                self.settle_all().await;
                self.refuse(Some(id), e.code(), e.public_message());
            }
        }
    }

    async fn send(&mut self, id: RequestId, to: Target, reply_to: Option<ChannelName>, data: Box<RawValue>) {
        if !self.grants.may_send(&to) {
            return self.refuse(
                Some(id),
                ErrorCode::Forbidden,
                format!("not allowed to send to {to}"),
            );
        }
        if let Some(channel) = &reply_to
            && !self.grants.may_subscribe(channel)
        {
            return self.refuse(
                Some(id),
                ErrorCode::Forbidden,
                format!("reply_to {channel} must be a channel you may subscribe to"),
            );
        }
        if self.limited(&self.publishes) {
            return self.refuse(
                Some(id),
                ErrorCode::RateLimited,
                "send rate exceeded; slow down".into(),
            );
        }
        let not_found = |this: &Self, id| {
            this.refuse(
                Some(id),
                ErrorCode::NotFound,
                format!("no live operator session for {to}"),
            )
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
        let outcome = match self.shared.org.resolve(&to).await {
            Some(session) => match ractor::call!(session, SessionMsg::FromClient, frame) {
                Ok(Ok(())) => Forwarded::Delivered,
                Ok(Err(Offline)) => Forwarded::Offline,
                // It ended between the lookup and the call.
                Err(_) => Forwarded::NotFound,
            },
            // Not on this pod: perhaps on another.
            None => {
                self.services
                    .leases
                    .forward(self.shared.org.org(), &to, frame)
                    .await
            }
        };
        match outcome {
            Forwarded::Delivered => self.reply(ServerFrame::Ack(Ack::new(id))),
            Forwarded::Offline => self.refuse(
                Some(id),
                ErrorCode::Unavailable,
                format!("{to} is offline and its buffer is full; retry later"),
            ),
            Forwarded::Unavailable => self.refuse(
                Some(id),
                ErrorCode::Unavailable,
                format!("{to} cannot be reached right now; retry"),
            ),
            Forwarded::NotFound => not_found(self, id),
        }
    }
}

/// A named function rather than a closure: an async caller's future must be
/// `Send` for every lifetime, which closures over references do not prove.
fn frame_of((_, frame): &Offsetted) -> &switchboard_proto::PreparedFrame {
    frame
}

impl FrameHandler for Connection {
    fn unsettled(&self) -> bool {
        !self.in_flight.is_empty()
    }

    fn settle(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(self.settle_all())
    }

    fn on_text<'a>(&'a mut self, payload: &'a [u8]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            match ClientFrame::decode(payload) {
                Ok(frame) => self.on_frame(frame).await,
                Err(e) => {
                    self.settle_all().await;
                    self.refuse(e.id, e.code, e.message)
                }
            }
            // Back-pressure: the socket reads the next frame only after this.
            if let Some(until) = self.pause.take() {
                tokio::time::sleep_until(until).await;
                if self.refusal_owed.take()
                    && let Some(refusals) = &self.refusals
                {
                    let _ = refusals.check();
                }
            }
        })
    }

    fn refused(&self) {
        if let Some(due) = self.refusals.as_ref().and_then(spent) {
            self.pause_until(due);
            self.refusal_owed.set(true);
        }
    }

    fn sink(&self) -> &Arc<dyn Sink> {
        &self.shared.sink
    }

    fn supervised(&self) -> Arc<dyn Supervised> {
        self.shared.clone()
    }
}
