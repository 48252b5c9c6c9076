//! The capabilities the hub and the actors need from the outside: a
//! [`Backplane`] that orders and spreads publishes, and a [`History`] that
//! replays them. The in-process implementation is [`crate::memory`]; cluster
//! mode implements both over NATS in `src`. Callers reach them through
//! [`crate::Channels`].

use std::future::Future;
use std::pin::Pin;

use serde_json::value::RawValue;
use switchboard_proto::{Epoch, ErrorCode, OrgId, TurnFailure, TurnId};

use crate::hub::{ChannelKey, Offsetted};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A publish the backplane accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    pub offset: u64,
    pub epoch: Epoch,
}

#[derive(Debug, thiserror::Error)]
pub enum BackplaneError {
    /// The backplane cannot be reached or refused the operation; retryable.
    /// The detail is for the server's log, never for a caller.
    #[error("backplane unavailable: {0}")]
    Unavailable(String),
    /// A turn with this id is already live on the channel.
    #[error("turn {0} is already live on this channel")]
    TurnExists(TurnId),
    /// No live turn with this id on the channel.
    #[error("no live turn {0} on this channel")]
    NoSuchTurn(TurnId),
    /// The channel already streams this many turns at once.
    #[error("this channel already has {0} live turns")]
    TooManyTurns(usize),
}

impl BackplaneError {
    /// The protocol error code a caller gets for this.
    pub fn code(&self) -> ErrorCode {
        match self {
            BackplaneError::Unavailable(_) => ErrorCode::Unavailable,
            BackplaneError::TurnExists(_) => ErrorCode::Conflict,
            BackplaneError::NoSuchTurn(_) => ErrorCode::NotFound,
            BackplaneError::TooManyTurns(_) => ErrorCode::LimitExceeded,
        }
    }

    /// What a caller may be told: everything but the internal detail of an
    /// unavailable backplane.
    pub fn public_message(&self) -> String {
        match self {
            BackplaneError::Unavailable(_) => "the channel is unavailable right now; retry".into(),
            other => other.to_string(),
        }
    }
}

/// What can be appended to a channel.
#[derive(Clone, Copy, Debug)]
pub enum Event<'a> {
    /// A plain message with its JSON payload.
    Message(&'a RawValue),
    TurnStart(&'a TurnId),
    /// Text appended to a live turn.
    Token(&'a TurnId, &'a str),
    TurnEnd(&'a TurnId),
    /// The turn failed.
    TurnError {
        turn: &'a TurnId,
        reason: TurnFailure,
        message: Option<&'a str>,
    },
}

/// A message sent on its way ([`Backplane::send`]).
pub enum Sent {
    /// Stored already.
    Stored(Published),
    /// Stored once this resolves (where, or why not).
    Pending(BoxFuture<'static, Result<Published, BackplaneError>>),
}

/// Orders each channel's messages and brings them to every pod's hub.
pub trait Backplane: Send + Sync + 'static {
    /// Assigns the event its offset, stores it in history and delivers it
    /// to the subscribers of every pod (this pod's through the hub). A
    /// channel's history keeps a live turn as its text so far and a finished
    /// one as a single message.
    fn publish<'a>(
        &'a self,
        key: &'a ChannelKey,
        event: Event<'a>,
    ) -> BoxFuture<'a, Result<Published, BackplaneError>>;

    /// Whether [`Backplane::send`] lets messages be in flight together
    /// (a connection then sends a burst without waiting for each one).
    fn pipelines(&self) -> bool {
        false
    }

    /// Sends a plain message on its way: messages sent one after another
    /// are stored in that order, each found where its [`Sent`] says. By
    /// default it is stored before this returns.
    fn send<'a>(
        &'a self,
        key: &'a ChannelKey,
        data: &'a RawValue,
    ) -> BoxFuture<'a, Result<Sent, BackplaneError>> {
        Box::pin(async move { self.publish(key, Event::Message(data)).await.map(Sent::Stored) })
    }

    /// Starts bringing `key`'s messages to this pod's hub. Called when the
    /// channel gets its first local subscriber, before its history is read,
    /// so nothing published after the read can be missed.
    fn attach<'a>(&'a self, key: &'a ChannelKey) -> BoxFuture<'a, Result<(), BackplaneError>>;

    /// Stops bringing `key`'s messages here (no local subscriber is left).
    fn detach(&self, key: &ChannelKey);

    /// Periodic upkeep (forgetting what nothing needs any more), run by the
    /// server about every half minute.
    fn maintain(&self) {}

    /// Forgets everything of `org` (it was deleted): its channels' history
    /// and live turns.
    fn drop_org(&self, _org: &OrgId) {}
}

/// Where a history read starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Position {
    /// Nothing retained, only the snapshots of live turns: what a plain
    /// subscribe replays, so a joiner sees a reply in progress.
    Live,
    /// Everything after this offset: a resume, or a page of history.
    After(u64),
    /// The newest retained messages (and live turns).
    Tail,
}

/// One read of a channel's history.
#[derive(Clone, Debug)]
pub struct HistoryRead {
    pub epoch: Epoch,
    /// The offset of the newest message: the position the live stream
    /// continues from.
    pub top: u64,
    /// The oldest offset still retained, if anything is.
    pub first: Option<u64>,
    /// Whether every message after the requested offset is still retained
    /// (always true for [`Position::Live`] and [`Position::Tail`]).
    pub complete: bool,
    /// What the read covers, in offset order, at most the requested limit:
    /// messages, finished turns as one message each, and live turns as a
    /// snapshot of their text so far.
    pub messages: Vec<Offsetted>,
    /// Whether more messages came after the last one returned.
    pub more: bool,
}

impl HistoryRead {
    /// Puts `all` (retained messages and live turns' snapshots, any order)
    /// in the read: in offset order, the newest `limit` for a tail, else
    /// the first `limit` with `more` set if some were left out.
    pub fn fill(&mut self, mut all: Vec<Offsetted>, from: Position, limit: usize) {
        all.sort_by_key(|(offset, _)| *offset);
        if from == Position::Tail {
            let older = all.len().saturating_sub(limit);
            all.drain(..older);
        } else {
            self.more = all.len() > limit;
            all.truncate(limit);
        }
        self.messages = all;
    }
}

/// Reads what a channel retained.
pub trait History: Send + Sync + 'static {
    /// The channel's position and up to `limit` messages from `from`, read
    /// atomically with respect to publishes. Reading never creates state for
    /// a channel nobody published on.
    fn read<'a>(
        &'a self,
        key: &'a ChannelKey,
        from: Position,
        limit: usize,
    ) -> BoxFuture<'a, Result<HistoryRead, BackplaneError>>;
}
