//! A connection's publishes sent on their way and not yet stored (when the
//! backplane pipelines, [`crate::Backplane::pipelines`]): a burst goes out
//! without waiting for each acknowledgement, and the replies still go out
//! in request order.

use std::collections::VecDeque;

use switchboard_proto::{Ack, ChannelName, RequestId, ServerFrame};

use crate::backplane::{BackplaneError, BoxFuture, Published};

/// At most this many publishes of one connection wait at once; the next
/// waits for the oldest.
pub const MAX_IN_FLIGHT: usize = 128;

type Stored = BoxFuture<'static, Result<Published, BackplaneError>>;

#[derive(Default)]
pub struct InFlight {
    queue: VecDeque<(RequestId, ChannelName, Stored)>,
}

impl InFlight {
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.queue.len() >= MAX_IN_FLIGHT
    }

    pub fn push(&mut self, id: RequestId, channel: ChannelName, stored: Stored) {
        self.queue.push_back((id, channel, stored));
    }

    /// The reply to the oldest publish, once it is stored (or refused).
    pub async fn next(&mut self) -> Option<Result<ServerFrame, (RequestId, BackplaneError)>> {
        let (id, channel, stored) = self.queue.pop_front()?;
        Some(match stored.await {
            Ok(published) => Ok(ServerFrame::Ack(Ack {
                channel: Some(channel),
                offset: Some(published.offset),
                epoch: Some(published.epoch),
                ..Ack::new(id)
            })),
            Err(e) => Err((id, e)),
        })
    }
}
