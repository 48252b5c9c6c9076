//! What a socket's task needs from the protocol on the other side of it,
//! whether a client [`crate::Connection`] or an operator
//! [`crate::operator::OperatorLink`]: frames in, one at a time, and a handle
//! its supervisor keeps to close it and clean up after it.

use std::sync::Arc;

use switchboard_proto::{ConnId, PreparedFrame};

use crate::backplane::BoxFuture;
use crate::sink::Sink;

/// The protocol logic behind one socket.
pub trait FrameHandler: Send + 'static {
    /// One complete text frame. The socket reads nothing else until it is done.
    fn on_text<'a>(&'a mut self, payload: &'a [u8]) -> BoxFuture<'a, ()>;
    /// Binary frames are not part of either protocol.
    fn on_binary(&self);
    /// A frame over the size limit was skipped unread.
    fn on_oversized(&self, len: u64, max: usize);
    /// Writes a frame built elsewhere (pong, ping) in order.
    fn write(&self, frame: &PreparedFrame);
    /// The handle the `Connections` supervisor keeps.
    fn supervised(&self) -> Arc<dyn Supervised>;
}

/// What the `Connections` supervisor holds for each socket.
pub trait Supervised: Send + Sync + 'static {
    fn id(&self) -> ConnId;
    fn sink(&self) -> &Arc<dyn Sink>;
    /// Releases what the socket held; runs once, when its task has ended.
    fn release(&self);
}
