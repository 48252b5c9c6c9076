//! [`Socket`]: one client or operator WebSocket, the only owner of its
//! stream. A frame offered while nothing is queued is written straight to
//! the socket from the publisher's task (`try_write`, no task wake-up),
//! unless that task is in the middle of a batch of publishes
//! ([`switchboard_actors::batch`]): then it is queued and the socket is
//! flushed once when the batch ends. What the kernel does not take at once
//! is queued, in order, and written by the connection's own task. Queued
//! frames go out in vectored writes of the shared frames (no copy). The
//! queue is bounded in bytes: passing the bound closes the connection as a
//! slow consumer. A close frame is only ever written on a frame boundary: a
//! frame already partly written is finished first.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures_util::task::AtomicWaker;
use metrics::histogram;
use parking_lot::Mutex;
use switchboard_actors::backplane::BoxFuture;
use switchboard_actors::batch::{self, Deferred};
use switchboard_actors::clock::{self, Instant};
use switchboard_actors::sink::{QUEUE_SLOT_BYTES, charge};
use switchboard_actors::{CloseReason, Refused, Sink, telemetry};
use switchboard_proto::PreparedFrame;
use switchboard_proto::ws::{self, OpCode};
use tokio::net::TcpStream;

use super::liveness::{Heartbeat, Liveness, Verdict};
use super::reader::FrameReader;

/// Bytes read from the socket per `read` call, at most.
const READ_CHUNK: usize = 16 * 1024;
/// Frames handed to one vectored write, at most: a batch of small frames
/// (one read of a publisher's socket holds about a hundred) in one call.
const MAX_SLICES: usize = 256;
/// How long a closing connection may take to write what it owes, send its
/// close frame and hear the peer's.
const CLOSE_PATIENCE: Duration = Duration::from_secs(2);
/// A queue that grew past this many slots gives its memory back once empty.
const QUEUE_KEEP: usize = 16;

thread_local! {
    /// Every connection on a worker thread reads into this one buffer and
    /// keeps (copies) only what it read, so an idle connection holds none.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_CHUNK].into_boxed_slice());
}

static PING: LazyLock<PreparedFrame> =
    LazyLock::new(|| PreparedFrame::from_wire(ws::frame(OpCode::Ping, b"")));

/// What one read from the socket gave.
pub enum Filled {
    Bytes,
    Eof,
    WouldBlock,
}

/// What [`Socket::flush`] left behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flush {
    /// Nothing more to write now (the queue is empty, or a closing socket
    /// reached a frame boundary).
    Done,
    /// The socket takes no more for now; wait until it is writable.
    Blocked,
    /// The peer is gone.
    Failed,
}

pub struct Socket {
    stream: TcpStream,
    /// This socket, for the batch that deferred a frame to it.
    me: Weak<Socket>,
    out: Mutex<Out>,
    /// The connection's task, woken when frames were queued or a close was asked for.
    waker: AtomicWaker,
    signaled: AtomicBool,
    capacity: usize,
    /// Keep frames never written after a close, for [`Sink::take_unsent`].
    keep_unsent: bool,
    liveness: Liveness,
}

struct Out {
    /// Whole frames waiting, shared with every other subscriber's queue;
    /// allocates only once something has to wait.
    queue: VecDeque<Bytes>,
    /// Bytes of the front frame already written: the stream ends inside it.
    written: usize,
    /// What the queue holds, as [`charge`] counts it.
    queued: usize,
    closing: Option<CloseReason>,
    /// The connection's task has ended: nothing more will be written.
    finished: bool,
}

/// What a queued frame counts against the bound (as [`charge`] counts a prepared one).
fn charged(wire: &Bytes) -> usize {
    wire.len() + QUEUE_SLOT_BYTES
}

impl Out {
    /// Marks `n` more bytes written, popping the frames that are complete.
    fn consume(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.queue.front() else { return };
            let rest = front.len() - self.written;
            if n < rest {
                self.written += n;
                return;
            }
            n -= rest;
            self.queued -= charged(front);
            self.written = 0;
            self.queue.pop_front();
        }
    }

    /// Keeps only a partly written front frame (it must be finished before a
    /// close frame can follow), or nothing.
    fn drop_queue(&mut self, keep_torn: bool) {
        let keep = usize::from(keep_torn && self.written > 0);
        self.queue.truncate(keep);
        self.queued = self.queue.iter().map(charged).sum();
        if keep == 0 {
            self.written = 0;
            self.queue = VecDeque::new();
        }
    }
}

impl Socket {
    /// A socket whose queue holds up to `capacity` bytes; `keep_unsent` for
    /// operator sockets, whose session takes back what they never wrote.
    pub fn new(stream: TcpStream, capacity: usize, heartbeat: Heartbeat, keep_unsent: bool) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            stream,
            me: me.clone(),
            out: Mutex::new(Out {
                queue: VecDeque::new(),
                written: 0,
                queued: 0,
                closing: None,
                finished: false,
            }),
            waker: AtomicWaker::new(),
            signaled: AtomicBool::new(false),
            capacity,
            keep_unsent,
            liveness: Liveness::new(heartbeat),
        })
    }

    fn signal(&self) {
        self.signaled.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Registers the connection's task to be woken; true if it was signaled
    /// since it last asked.
    pub(crate) fn poll_signal(&self, cx: &Context<'_>) -> bool {
        self.waker.register(cx.waker());
        self.signaled.swap(false, Ordering::AcqRel)
    }

    pub(crate) fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream.poll_read_ready(cx)
    }

    pub(crate) fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream.poll_write_ready(cx)
    }

    /// Closes the connection once `unix_secs` has passed (checked by the heartbeat).
    pub fn expire_at(&self, unix_secs: u64) {
        self.liveness.expire_at(unix_secs);
    }

    /// Reads what the socket has, without waiting, into `reader`. The peer
    /// sent something: it is alive.
    pub(crate) fn read(&self, reader: &mut FrameReader) -> io::Result<Filled> {
        SCRATCH.with_borrow_mut(|scratch| match self.stream.try_read(scratch) {
            Ok(0) => Ok(Filled::Eof),
            Ok(n) => {
                reader.feed(&scratch[..n]);
                self.liveness.heard();
                Ok(Filled::Bytes)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Filled::WouldBlock),
            Err(e) => Err(e),
        })
    }

    /// Starts (or stops) the clock on the message being read, from the
    /// reader's progress before and after handling what arrived.
    pub(crate) fn track_message(&self, before: Option<u64>, after: Option<u64>) {
        self.liveness.track_message(before, after);
    }

    pub(crate) fn closing(&self) -> Option<CloseReason> {
        self.out.lock().closing
    }

    /// Records why the socket closes; true the first time. A vanished peer
    /// is a fact, not a choice: it overrides a close already under way.
    fn start_close(&self, out: &mut Out, reason: CloseReason) -> bool {
        let first = out.closing.is_none();
        let overrides = reason == CloseReason::PeerGone && out.closing != Some(CloseReason::PeerGone);
        if !first && !overrides {
            return false;
        }
        out.closing = Some(reason);
        if !self.keep_unsent && !reason.flush_first() {
            // A slow consumer's queue is the problem; a vanished peer's is moot.
            out.drop_queue(reason.sends_frame());
        }
        if first {
            telemetry::closed(reason.label());
        }
        first
    }

    /// Writes what is queued as far as the socket takes it now. A closing
    /// socket whose reason does not flush writes only to the next frame boundary.
    pub fn flush(&self) -> Flush {
        let mut out = self.out.lock();
        loop {
            if out.closing == Some(CloseReason::PeerGone) {
                return Flush::Failed;
            }
            let to_boundary = out.closing.is_some_and(|r| !r.flush_first());
            if out.queue.is_empty() || (to_boundary && out.written == 0) {
                if out.queue.is_empty() && out.queue.capacity() > QUEUE_KEEP {
                    out.queue = VecDeque::new();
                }
                return Flush::Done;
            }
            let written = out.written;
            let result = if to_boundary || out.queue.len() == 1 {
                // One frame: `send` costs the kernel less than `writev`.
                self.stream.try_write(&out.queue[0][written..])
            } else {
                let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                let mut n = 0;
                for (slice, frame) in slices.iter_mut().zip(&out.queue) {
                    *slice = IoSlice::new(if n == 0 { &frame[written..] } else { frame });
                    n += 1;
                }
                self.stream.try_write_vectored(&slices[..n])
            };
            match result {
                Ok(n) if n > 0 => out.consume(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Flush::Blocked,
                _ => {
                    self.start_close(&mut out, CloseReason::PeerGone);
                    drop(out);
                    // A handler waiting for room must hear that there will be none.
                    self.signal();
                    return Flush::Failed;
                }
            }
        }
    }

    /// Runs `fut` (a frame handler) to completion while keeping the queue
    /// moving, so a handler that waits (for history, for an actor, for room
    /// in this very queue) never makes its connection a slow consumer.
    pub(crate) async fn serve<F: Future>(&self, fut: F) -> F::Output {
        let mut fut = std::pin::pin!(fut);
        poll_fn(|cx| {
            loop {
                // Each poll is one batch: what the handler publishes while
                // it defers goes out in one write per subscriber.
                if let Poll::Ready(output) = batch::scope(|| fut.as_mut().poll(cx)) {
                    return Poll::Ready(output);
                }
                self.waker.register(cx.waker());
                let before = self.queued();
                let flushed = self.flush();
                if self.queued() < before {
                    // Room was made: the handler may have been waiting for it.
                    continue;
                }
                if flushed == Flush::Blocked && self.poll_write_ready(cx).is_ready() {
                    continue;
                }
                return Poll::Pending;
            }
        })
        .await
    }

    /// Ends the connection: writes what the reason says it owes (all that is
    /// queued, or the rest of a partly written frame), sends the close frame
    /// if the stream is on a frame boundary, shuts the write side and waits
    /// briefly for the peer to close its side.
    pub(crate) async fn finish(&self, reason: CloseReason) {
        let deadline = clock::now() + CLOSE_PATIENCE;
        let owed = async {
            loop {
                match self.flush() {
                    Flush::Done => return true,
                    Flush::Failed => return false,
                    Flush::Blocked => {
                        if self.stream.writable().await.is_err() {
                            return false;
                        }
                    }
                }
            }
        };
        // Out of patience is not gone: the close frame may still fit.
        let alive = tokio::time::timeout_at(deadline, owed).await.unwrap_or(true);
        let at_boundary = self.out.lock().written == 0;
        if alive && reason.sends_frame() && at_boundary {
            let mut rest = reason.frame().wire().clone();
            let _ = tokio::time::timeout_at(deadline, async {
                while !rest.is_empty() {
                    match self.stream.try_write(&rest) {
                        Ok(n) => rest.advance(n),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            if self.stream.writable().await.is_err() {
                                return;
                            }
                        }
                        Err(_) => return,
                    }
                }
            })
            .await;
        }
        self.out.lock().finished = true;
        let _ = socket2::SockRef::from(&self.stream).shutdown(std::net::Shutdown::Write);
        if reason == CloseReason::PeerGone {
            return;
        }
        // Read (and drop) until the peer closes, so it sees our close frame
        // instead of a reset caused by unread data.
        let _ = tokio::time::timeout(CLOSE_PATIENCE, async {
            let mut scratch = vec![0u8; 512];
            loop {
                if self.stream.readable().await.is_err() {
                    return;
                }
                match self.stream.try_read(&mut scratch) {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
        })
        .await;
    }
}

impl Sink for Socket {
    fn offer(&self, frame: &PreparedFrame) -> Result<(), Refused> {
        let wire = frame.wire();
        let mut out = self.out.lock();
        if out.closing.is_some() {
            return Err(Refused::Closed);
        }
        if out.queue.is_empty() {
            if batch::deferring()
                && let Some(me) = self.me.upgrade()
            {
                // Written with the rest of the batch, when it ends.
                out.queued = charge(frame);
                out.queue.push_back(wire.clone());
                drop(out);
                batch::touch(me);
                return Ok(());
            }
            match self.stream.try_write(wire) {
                Ok(n) if n == wire.len() => return Ok(()),
                Ok(n) => out.written = n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    self.start_close(&mut out, CloseReason::PeerGone);
                    drop(out);
                    self.signal();
                    return Err(Refused::Closed);
                }
            }
            out.queued = charge(frame);
            out.queue.push_back(wire.clone());
            drop(out);
            self.signal();
            return Ok(());
        }
        let queued = out.queued + charge(frame);
        if queued > self.capacity {
            self.start_close(&mut out, CloseReason::SlowConsumer);
            drop(out);
            telemetry::slow_consumer();
            self.signal();
            return Err(Refused::Full);
        }
        out.queued = queued;
        out.queue.push_back(wire.clone());
        drop(out);
        // The task already knows: it was signaled by the first queued frame.
        histogram!(telemetry::QUEUE_BYTES).record(queued as f64);
        Ok(())
    }

    fn close(&self, reason: CloseReason) {
        if self.start_close(&mut self.out.lock(), reason) {
            self.signal();
        }
    }

    fn abort(&self, reason: CloseReason) {
        let at_boundary = {
            let mut out = self.out.lock();
            self.start_close(&mut out, reason);
            out.finished = true;
            out.written == 0
        };
        if reason.sends_frame() && at_boundary {
            let _ = self.stream.try_write(reason.frame().wire());
        }
        let _ = socket2::SockRef::from(&self.stream).shutdown(std::net::Shutdown::Both);
    }

    fn heartbeat(&self, now: Instant) {
        match self.liveness.check(now) {
            Verdict::Close(reason) => self.close(reason),
            Verdict::Ping => {
                let _ = self.offer(&PING);
            }
            Verdict::Fine => {}
        }
    }

    fn queued(&self) -> usize {
        self.out.lock().queued
    }

    fn capacity(&self) -> usize {
        self.capacity
    }

    /// Resolves as the connection's own task writes: poll it from that task
    /// (a frame handler runs there, inside [`Socket::serve`]).
    fn drained(&self, level: usize) -> BoxFuture<'_, Result<(), Refused>> {
        Box::pin(poll_fn(move |cx| {
            let out = self.out.lock();
            if out.closing.is_some() {
                return Poll::Ready(Err(Refused::Closed));
            }
            if out.queued <= level {
                return Poll::Ready(Ok(()));
            }
            drop(out);
            self.waker.register(cx.waker());
            Poll::Pending
        }))
    }

    fn take_unsent(&self) -> Vec<PreparedFrame> {
        let mut out = self.out.lock();
        if !self.keep_unsent || out.closing.is_none() {
            return Vec::new();
        }
        // A frame partly written is the task's to finish, unless it is done.
        let skip = usize::from(out.written > 0 && !out.finished);
        let unsent: Vec<Bytes> = out.queue.drain(skip..).collect();
        out.queued -= unsent.iter().map(charged).sum::<usize>();
        if skip == 0 {
            out.written = 0;
        }
        unsent.into_iter().map(PreparedFrame::from_wire).collect()
    }
}

impl Deferred for Socket {
    fn flush_deferred(&self) {
        // What the kernel did not take is the connection's task's to write
        // once the socket is writable again.
        if self.flush() == Flush::Blocked {
            self.signal();
        }
    }
}

#[cfg(test)]
mod tests;
