//! The capabilities the hub and the actors need from the outside: a
//! [`Backplane`] that orders and spreads publishes, and a [`History`] that
//! replays them. The in-process implementation is [`crate::memory`]; cluster
//! mode implements both over NATS in `src`.

use std::future::Future;
use std::pin::Pin;

use serde_json::value::RawValue;
use switchboard_proto::{Epoch, TurnId};

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
    #[error("backplane unavailable: {0}")]
    Unavailable(String),
    /// A turn with this id is already live on the channel.
    #[error("turn {0} is already live on this channel")]
    TurnExists(TurnId),
    /// No live turn with this id on the channel.
    #[error("no live turn {0} on this channel")]
    NoSuchTurn(TurnId),
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
    /// The turn failed; `reason` is `operator` or `operator_gone`.
    TurnError {
        turn: &'a TurnId,
        reason: &'a str,
        message: Option<&'a str>,
    },
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

    /// Starts bringing `key`'s messages to this pod's hub. Called when the
    /// channel gets its first local subscriber, before its history is read,
    /// so nothing published after the read can be missed.
    fn attach<'a>(&'a self, key: &'a ChannelKey) -> BoxFuture<'a, Result<(), BackplaneError>>;

    /// Stops bringing `key`'s messages here (no local subscriber is left).
    fn detach(&self, key: &ChannelKey);
}

/// One read of a channel's history.
#[derive(Clone, Debug)]
pub struct HistoryRead {
    pub epoch: Epoch,
    /// The offset of the newest message (0 when there has been none).
    pub top: u64,
    /// Whether every message after the requested `since` is still retained
    /// (always true when no `since` was asked for).
    pub complete: bool,
    /// What came after `since`, in offset order, at most the requested limit:
    /// messages, finished turns as one message each, and live turns as a
    /// snapshot of their text so far.
    pub messages: Vec<Offsetted>,
    /// Whether more messages came after the last one returned.
    pub more: bool,
}

/// Reads what a channel retained.
pub trait History: Send + Sync + 'static {
    /// The channel's position and, with `since`, up to `limit` messages
    /// after it, read atomically with respect to publishes.
    fn read<'a>(
        &'a self,
        key: &'a ChannelKey,
        since: Option<u64>,
        limit: usize,
    ) -> BoxFuture<'a, Result<HistoryRead, BackplaneError>>;
}
