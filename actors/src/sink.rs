//! How the hub reaches a connection: a [`Sink`] writes a prepared frame now if
//! nothing is queued for the connection, or queues it (bounded in bytes), and
//! refuses it when the queue would pass its bound. `src` implements it over
//! the raw socket; tests and benches use [`MemorySink`]. [`offer_paced`]
//! writes a replay larger than the queue as the connection drains it.

use std::collections::VecDeque;

use parking_lot::Mutex;
use switchboard_proto::PreparedFrame;
use switchboard_proto::ws::close;

use crate::backplane::BoxFuture;
use crate::clock::Instant;

/// What a queued frame costs beyond its bytes: its slot in the queue. A flood
/// of tiny frames is bounded too.
pub const QUEUE_SLOT_BYTES: usize = 32;

/// What `frame` counts against a connection's queue bound.
pub fn charge(frame: &PreparedFrame) -> usize {
    frame.len() + QUEUE_SLOT_BYTES
}

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
    /// A frame was started and not finished in time (a client trickling bytes).
    FrameTimeout,
    /// A text frame or close reason was not valid UTF-8.
    InvalidData,
    /// The token the connection was opened with has expired.
    TokenExpired,
    /// The org was deleted, or the connection's credential revoked.
    Revoked,
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
            CloseReason::IdleTimeout | CloseReason::FrameTimeout => close::POLICY_VIOLATION,
            CloseReason::InvalidData => close::INVALID_DATA,
            CloseReason::TokenExpired => close::UNAUTHORIZED,
            CloseReason::Revoked => close::FORBIDDEN,
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
            CloseReason::FrameTimeout => "frame not completed in time",
            CloseReason::InvalidData => "invalid UTF-8",
            CloseReason::TokenExpired => "token expired; reconnect with a fresh one and resume",
            CloseReason::Revoked => "org deleted or credentials revoked",
            CloseReason::PeerGone => "",
        }
    }

    /// A name for metric labels.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::GoingAway => "going_away",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::Internal => "internal",
            CloseReason::Protocol => "protocol",
            CloseReason::Normal => "normal",
            CloseReason::Replaced => "replaced",
            CloseReason::SessionEnded => "session_ended",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::FrameTimeout => "frame_timeout",
            CloseReason::InvalidData => "invalid_data",
            CloseReason::TokenExpired => "token_expired",
            CloseReason::Revoked => "revoked",
            CloseReason::PeerGone => "peer_gone",
        }
    }

    /// Whether frames already queued are written before the close frame. A
    /// slow consumer's queue is the problem, so it is dropped instead (only
    /// a frame already partly written is finished, so the close frame lands
    /// on a frame boundary); a replaced operator socket's queue goes to its
    /// successor.
    pub fn flush_first(self) -> bool {
        !matches!(
            self,
            CloseReason::SlowConsumer | CloseReason::Internal | CloseReason::PeerGone | CloseReason::Replaced
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
    /// before it, or queues it. Never blocks. Past the queue's bound the
    /// connection is closed as a slow consumer and the frame refused.
    fn offer(&self, frame: &PreparedFrame) -> Result<(), Refused>;

    /// Starts a graceful close: queued frames are flushed if the reason says
    /// so, then the close frame is sent. Idempotent; the first reason wins.
    fn close(&self, reason: CloseReason);

    /// Closes at once, for when the connection's own task is gone (it
    /// panicked): best effort close frame, then the socket is shut.
    fn abort(&self, reason: CloseReason);

    /// Called about once a second by the supervisor with the time: a socket
    /// pings a quiet peer and closes one silent for too long, past its
    /// token's expiry, or trickling a frame. One sweep for all connections
    /// costs less than a timer in every connection's task.
    fn heartbeat(&self, _now: Instant) {}

    /// Bytes queued and not yet written, as [`charge`] counts them.
    fn queued(&self) -> usize;

    /// The most [`Sink::queued`] may reach before the connection is cut off.
    fn capacity(&self) -> usize;

    /// Resolves once at most `level` bytes are queued; `Err` if the sink
    /// closes first.
    fn drained(&self, level: usize) -> BoxFuture<'_, Result<(), Refused>>;

    /// Frames this sink took and will never write, in order, handed over
    /// once. Only sinks built to keep them (operator sockets, whose session
    /// re-buffers them) return any.
    fn take_unsent(&self) -> Vec<PreparedFrame> {
        Vec::new()
    }
}

/// Offers `frames` in order without letting them fill more than half of the
/// sink's queue: before each frame that would pass that mark it waits for
/// the connection to drain (a frame larger than the mark waits for an empty
/// queue). A replay larger than the queue completes for a client that
/// reads; one that does not is cut off by its other traffic, not by this.
pub async fn offer_paced<'a>(
    sink: &dyn Sink,
    frames: impl IntoIterator<Item = &'a PreparedFrame>,
) -> Result<(), Refused> {
    let high = sink.capacity() / 2;
    for frame in frames {
        let cost = charge(frame);
        if sink.queued() + cost > high {
            sink.drained(high.saturating_sub(cost)).await?;
        }
        sink.offer(frame)?;
    }
    Ok(())
}

/// An in-memory sink with a bounded queue, for tests and benchmarks.
pub struct MemorySink {
    inner: Mutex<MemoryInner>,
    capacity: usize,
    changed: tokio::sync::Notify,
}

struct MemoryInner {
    frames: VecDeque<PreparedFrame>,
    queued: usize,
    closed: Option<CloseReason>,
}

impl MemorySink {
    /// A sink that holds up to `capacity` bytes (as [`charge`] counts them).
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(MemoryInner {
                frames: VecDeque::new(),
                queued: 0,
                closed: None,
            }),
            capacity,
            changed: tokio::sync::Notify::new(),
        }
    }

    fn pop(inner: &mut MemoryInner) -> Option<PreparedFrame> {
        let frame = inner.frames.pop_front()?;
        inner.queued -= charge(&frame);
        Some(frame)
    }

    /// Waits for the next frame, or `None` once the sink is closed and empty.
    pub async fn next(&self) -> Option<PreparedFrame> {
        loop {
            let changed = self.changed.notified();
            {
                let mut inner = self.inner.lock();
                if let Some(f) = Self::pop(&mut inner) {
                    self.changed.notify_waiters();
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
        let mut inner = self.inner.lock();
        inner.queued = 0;
        let frames = inner.frames.drain(..).collect();
        drop(inner);
        self.changed.notify_waiters();
        frames
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
        let cost = charge(frame);
        if inner.queued + cost > self.capacity {
            inner.closed = Some(CloseReason::SlowConsumer);
            self.changed.notify_waiters();
            return Err(Refused::Full);
        }
        inner.queued += cost;
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

    fn queued(&self) -> usize {
        self.inner.lock().queued
    }

    fn capacity(&self) -> usize {
        self.capacity
    }

    fn drained(&self, level: usize) -> BoxFuture<'_, Result<(), Refused>> {
        Box::pin(async move {
            loop {
                let changed = self.changed.notified();
                {
                    let inner = self.inner.lock();
                    if inner.closed.is_some() {
                        return Err(Refused::Closed);
                    }
                    if inner.queued <= level {
                        return Ok(());
                    }
                }
                changed.await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_proto::ws::{self, OpCode};

    fn frame(len: usize) -> PreparedFrame {
        PreparedFrame::from_wire(ws::frame(OpCode::Text, &vec![b'x'; len]))
    }

    #[test]
    fn the_bound_is_in_bytes() {
        let big = frame(1000);
        let sink = MemorySink::new(3 * charge(&big));
        for _ in 0..3 {
            sink.offer(&big).unwrap();
        }
        assert_eq!(sink.queued(), 3 * charge(&big));
        assert_eq!(sink.offer(&frame(1)), Err(Refused::Full));
        assert_eq!(sink.closed(), Some(CloseReason::SlowConsumer));
    }

    #[tokio::test]
    async fn paced_offers_wait_for_the_reader() {
        let f = frame(100);
        let sink = std::sync::Arc::new(MemorySink::new(4 * charge(&f)));
        let frames = vec![f.clone(); 20];
        let reader = {
            let sink = sink.clone();
            tokio::spawn(async move {
                let mut n = 0;
                while n < 20 {
                    sink.next().await.unwrap();
                    n += 1;
                }
                n
            })
        };
        // Twenty frames through a queue of four: only a reader makes room.
        offer_paced(sink.as_ref(), &frames).await.unwrap();
        assert_eq!(reader.await.unwrap(), 20);
        assert_eq!(sink.closed(), None, "never past the bound");
    }

    #[tokio::test]
    async fn paced_offers_stop_when_the_sink_closes() {
        let f = frame(100);
        let sink = MemorySink::new(4 * charge(&f));
        let frames = vec![f; 20];
        let (done, ()) = tokio::join!(offer_paced(&sink, &frames), async {
            tokio::task::yield_now().await;
            sink.close(CloseReason::GoingAway);
        });
        assert_eq!(done, Err(Refused::Closed));
    }
}
