//! The operator's side of `/v1/operators/:sid/ws`: each frame the operator
//! sends is decoded here and handed to its session actor, which replies on
//! the socket. A frame that cannot be decoded is answered with an error and
//! the socket carries on. When the socket ends, the frames it took and never
//! wrote go back to the session.

use std::sync::Arc;

use ractor::ActorRef;
use switchboard_proto::{ConnId, OperatorFrame};

use crate::backplane::BoxFuture;
use crate::link::{FrameHandler, Supervised};
use crate::session::SessionMsg;
use crate::sink::{CloseReason, Sink};

pub struct OperatorShared {
    pub(crate) id: ConnId,
    pub(crate) sink: Arc<dyn Sink>,
    pub(crate) session: ActorRef<SessionMsg>,
    /// Which attachment of the session this socket is.
    pub(crate) generation: u64,
}

impl Supervised for OperatorShared {
    fn id(&self) -> ConnId {
        self.id
    }

    fn sink(&self) -> &Arc<dyn Sink> {
        &self.sink
    }

    fn release(&self) {
        let unsent = self.sink.take_unsent();
        // A session that already ended needs no word.
        let _ = self.session.cast(SessionMsg::Detached(self.generation, unsent));
    }
}

pub struct OperatorLink {
    pub(crate) shared: Arc<OperatorShared>,
}

impl FrameHandler for OperatorLink {
    fn on_text<'a>(&'a mut self, payload: &'a [u8]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let frame = match OperatorFrame::decode(payload) {
                Ok(frame) => frame,
                Err(e) => return self.refuse(e.id, e.code, e.message),
            };
            // The call waits until the session handled the frame: an
            // operator streaming tokens is slowed to what the session keeps up with.
            if ractor::call!(self.shared.session, SessionMsg::FromOperator, frame).is_err() {
                self.shared.sink.close(CloseReason::SessionEnded);
            }
        })
    }

    fn sink(&self) -> &Arc<dyn Sink> {
        &self.shared.sink
    }

    fn supervised(&self) -> Arc<dyn Supervised> {
        self.shared.clone()
    }
}
