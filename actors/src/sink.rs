//! How the hub reaches a connection: a [`Sink`] writes a prepared frame now if
//! nothing is queued for the connection, or queues it (bounded), and refuses it
//! when the queue is full. `src` implements it over the raw socket; tests and
//! benches use [`MemorySink`].

use std::collections::VecDeque;

use parking_lot::Mutex;
use switchboard_proto::PreparedFrame;
use switchboard_proto::ws::close;

/// Why a sink did not take a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The bounded queue was full: the sink has started closing the
    /// connection as a slow consumer.
    Full,
    /// The connection is closing or closed.
    Closed,
}

/// Why the server closes a connection, with its WebSocket close code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The server is draining: reconnect, to another pod if there is one.
    GoingAway,
    /// The outbound queue overflowed.
    SlowConsumer,
    /// A bug on our side; the connection's state cannot be trusted.
    Internal,
    /// The client broke the WebSocket protocol.
    Protocol,
    /// The client asked to close.
    Normal,
    /// Another socket took over this operator session.
    Replaced,
    /// The operator session was deleted or expired.
    SessionEnded,
    /// Nothing was received for too long (not even a pong).
    IdleTimeout,
    /// The token the connection was opened with has expired.
    TokenExpired,
    /// The peer vanished (reset, broken pipe): no close frame can be sent.
    PeerGone,
}

impl CloseReason {
    pub fn code(self) -> u16 {
        match self {
            CloseReason::GoingAway => close::GOING_AWAY,
            CloseReason::SlowConsumer => close::SLOW_CONSUMER,
            CloseReason::Internal => close::INTERNAL_ERROR,
            CloseReason::Protocol => close::PROTOCOL_ERROR,
            CloseReason::Normal => close::NORMAL,
            CloseReason::IdleTimeout => close::POLICY_VIOLATION,
            CloseReason::TokenExpired => close::UNAUTHORIZED,
            CloseReason::Replaced => close::REPLACED,
            CloseReason::SessionEnded => close::SESSION_ENDED,
            CloseReason::PeerGone => close::ABNORMAL,
        }
    }

    pub fn text(self) -> &'static str {
        match self {
            CloseReason::GoingAway => "going away",
            CloseReason::SlowConsumer => "SLOW_CONSUMER",
            CloseReason::Internal => "INTERNAL_ERROR",
            CloseReason::Protocol => "protocol error",
            CloseReason::Normal => "",
            CloseReason::Replaced => "replaced by another socket for this session",
            CloseReason::SessionEnded => "session ended",
            CloseReason::IdleTimeout => "idle timeout",
            CloseReason::TokenExpired => "token expired; reconnect with a fresh one and resume",
            CloseReason::PeerGone => "",
        }
    }

    /// Whether frames already queued are written before the close frame. A
    /// slow consumer's queue is the problem, so it is dropped instead.
    pub fn flush_first(self) -> bool {
        !matches!(
            self,
            CloseReason::SlowConsumer | CloseReason::Internal | CloseReason::PeerGone
        )
    }

    /// Whether a close frame can (and should) be sent at all.
    pub fn sends_frame(self) -> bool {
        self != CloseReason::PeerGone
    }

    /// The close frame for this reason.
    pub fn frame(self) -> PreparedFrame {
        switchboard_proto::prepared::close(self.code(), self.text())
    }
}

/// The outbound side of one connection.
pub trait Sink: Send + Sync + 'static {
    /// Writes `frame` to the connection, in order with every frame offered
    /// before it. Never blocks.
    fn offer(&self, frame: &PreparedFrame) -> Result<(), Refused>;

    /// Starts a graceful close: queued frames are flushed if the reason says
    /// so, then the close frame is sent. Idempotent; the first reason wins.
    fn close(&self, reason: CloseReason);

    /// Closes at once, for when the connection's own task is gone (it
    /// panicked): best effort close frame, then the socket is shut.
    fn abort(&self, reason: CloseReason);

    /// Called about once a second by the supervisor: a socket pings a quiet
    /// peer and closes one silent for too long or past its token's expiry.
    /// One sweep for all connections costs less than a timer in every
    /// connection's task.
    fn heartbeat(&self) {}
}

/// An in-memory sink with a bounded queue, for tests and benchmarks.
pub struct MemorySink {
    inner: Mutex<MemoryInner>,
    capacity: usize,
    changed: tokio::sync::Notify,
}

struct MemoryInner {
    frames: VecDeque<PreparedFrame>,
    closed: Option<CloseReason>,
}

impl MemorySink {
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(MemoryInner {
                frames: VecDeque::new(),
                closed: None,
            }),
            capacity,
            changed: tokio::sync::Notify::new(),
        }
    }

    /// Waits for the next frame, or `None` once the sink is closed and empty.
    pub async fn next(&self) -> Option<PreparedFrame> {
        loop {
            let changed = self.changed.notified();
            {
                let mut inner = self.inner.lock();
                if let Some(f) = inner.frames.pop_front() {
                    return Some(f);
                }
                if inner.closed.is_some() {
                    return None;
                }
            }
            changed.await;
        }
    }

    /// Takes every frame received so far.
    pub fn drain(&self) -> Vec<PreparedFrame> {
        self.inner.lock().frames.drain(..).collect()
    }

    /// How many frames are waiting.
    pub fn len(&self) -> usize {
        self.inner.lock().frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn closed(&self) -> Option<CloseReason> {
        self.inner.lock().closed
    }
}

impl Sink for MemorySink {
    fn offer(&self, frame: &PreparedFrame) -> Result<(), Refused> {
        let mut inner = self.inner.lock();
        if inner.closed.is_some() {
            return Err(Refused::Closed);
        }
        if inner.frames.len() >= self.capacity {
            inner.closed = Some(CloseReason::SlowConsumer);
            self.changed.notify_waiters();
            return Err(Refused::Full);
        }
        inner.frames.push_back(frame.clone());
        self.changed.notify_waiters();
        Ok(())
    }

    fn close(&self, reason: CloseReason) {
        self.inner.lock().closed.get_or_insert(reason);
        self.changed.notify_waiters();
    }

    fn abort(&self, reason: CloseReason) {
        self.close(reason);
    }
}
