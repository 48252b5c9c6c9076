//! What a socket's task needs from the protocol on the other side of it,
//! whether a client [`crate::Connection`] or an operator
//! [`crate::operator::OperatorLink`]: frames in, one at a time, and a handle
//! its supervisor keeps to close it and clean up after it.

use std::sync::Arc;

use switchboard_proto::{
    ChannelName, ConnId, ErrorCode, OrgId, PreparedFrame, RequestId, ServerFrame, Subject,
};

use crate::backplane::BoxFuture;
use crate::sink::Sink;
use crate::telemetry;

/// The protocol logic behind one socket.
pub trait FrameHandler: Send + 'static {
    /// One complete text frame. The socket reads nothing else until it is
    /// done (it keeps writing meanwhile).
    fn on_text<'a>(&'a mut self, payload: &'a [u8]) -> BoxFuture<'a, ()>;

    /// Whether replies wait on work in flight ([`FrameHandler::settle`]).
    fn unsettled(&self) -> bool {
        false
    }

    /// Writes the replies still waiting on work in flight; the socket calls
    /// it once it has handled every frame it read.
    fn settle(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    /// The socket's sink: replies go here, in order.
    fn sink(&self) -> &Arc<dyn Sink>;

    /// The handle the `Connections` supervisor keeps.
    fn supervised(&self) -> Arc<dyn Supervised>;

    /// Writes a frame built elsewhere (pong, ping) in order.
    fn write(&self, frame: &PreparedFrame) {
        // A refused frame means the socket is closing; nothing more to do.
        let _ = self.sink().offer(frame);
    }

    /// Answers a refused request with an `error` frame.
    fn refuse(&self, id: Option<RequestId>, code: ErrorCode, message: String) {
        telemetry::client_error(code);
        self.refused();
        self.write(&ServerFrame::error(id, code, message).prepare());
    }

    /// Told of every refusal, to slow a client that collects them.
    fn refused(&self) {}

    /// Binary frames are not part of either protocol.
    fn on_binary(&self) {
        self.refuse(
            None,
            ErrorCode::ValidationError,
            "binary frames are not supported; send JSON text frames".into(),
        );
    }

    /// A frame over the size limit was skipped unread.
    fn on_oversized(&self, len: u64, max: usize) {
        self.refuse(
            None,
            ErrorCode::FrameTooLarge,
            format!("frame of {len} bytes exceeds the limit of {max} bytes; it was discarded"),
        );
    }
}

/// What the `Connections` supervisor holds for each socket.
pub trait Supervised: Send + Sync + 'static {
    fn id(&self) -> ConnId;
    fn sink(&self) -> &Arc<dyn Sink>;
    /// Releases what the socket held; runs once, when its task has ended.
    fn release(&self);
    /// The org a client connection belongs to (operator sockets end with their session).
    fn org(&self) -> Option<&OrgId> {
        None
    }

    /// A client connection's subject and credential id.
    fn principal(&self) -> Option<(&Subject, Option<&str>)> {
        None
    }

    /// Whether a client connection is subscribed to `channel` (presence).
    fn subscribed(&self, _channel: &ChannelName) -> bool {
        false
    }
}

/// Which client connections to close: those of `org`, narrowed to a
/// subject and/or a credential id when given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Match {
    pub org: OrgId,
    pub subject: Option<Subject>,
    pub credential: Option<String>,
}

impl Match {
    pub fn org(org: OrgId) -> Self {
        Match {
            org,
            subject: None,
            credential: None,
        }
    }

    pub fn matches(&self, conn: &dyn Supervised) -> bool {
        let Some((subject, credential)) = conn.principal() else {
            return false;
        };
        conn.org() == Some(&self.org)
            && self.subject.as_ref().is_none_or(|s| s == subject)
            && self.credential.as_deref().is_none_or(|c| credential == Some(c))
    }
}
