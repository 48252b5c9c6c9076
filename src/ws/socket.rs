//! [`SocketSink`]: the hub's way into one client socket. A frame offered while
//! nothing is queued is written straight to the socket from the publisher's
//! task (`try_write`, no task wake-up); only what the kernel does not take at
//! once is queued, in order, for the connection's own task to finish. The
//! queue is bounded: overflowing it closes the connection as a slow consumer.

use std::collections::VecDeque;
use std::io;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use metrics::{counter, histogram};
use parking_lot::Mutex;
use switchboard_actors::telemetry;
use switchboard_actors::{CloseReason, Refused, Sink};
use switchboard_proto::PreparedFrame;
use switchboard_proto::ws::{self, OpCode};
use tokio::net::TcpStream;

use crate::auth::now_secs;

/// Milliseconds since the process started: a clock cheap to keep in an atomic.
fn now_ms() -> u64 {
    static START: LazyLock<Instant> = LazyLock::new(Instant::now);
    START.elapsed().as_millis() as u64
}

static PING: LazyLock<PreparedFrame> =
    LazyLock::new(|| PreparedFrame::from_wire(ws::frame(OpCode::Ping, b"")));

/// When to ping a quiet peer and when to give up on a silent one.
#[derive(Clone, Copy, Debug)]
pub struct Heartbeat {
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
}

pub struct SocketSink {
    pub(crate) stream: TcpStream,
    out: Mutex<Out>,
    /// The connection's task, woken when frames were queued or a close was asked for.
    waker: AtomicWaker,
    signaled: AtomicBool,
    limit: usize,
    heartbeat: Heartbeat,
    last_heard_ms: AtomicU64,
    /// When the heartbeat next looks at this connection. Each connection
    /// keeps its own phase, so connections opened together are not all
    /// pinged in the same sweep.
    next_ping_ms: AtomicU64,
    /// On this clock, when the connection's token expires (`u64::MAX`: never).
    expires_ms: AtomicU64,
}

struct Out {
    /// Allocates only once something has to wait.
    queue: VecDeque<Bytes>,
    /// The connection's task holds frames taken from the queue and has not
    /// finished writing them: new frames must queue behind them.
    busy: bool,
    closing: Option<CloseReason>,
    /// The queue starts with the rest of a frame the socket took only part of.
    torn: bool,
}

impl SocketSink {
    pub fn new(stream: TcpStream, limit: usize, heartbeat: Heartbeat) -> Self {
        // Spread first pings over half an interval, deterministically.
        static SPREAD: AtomicU64 = AtomicU64::new(0);
        let interval = heartbeat.ping_interval.as_millis() as u64;
        let n = SPREAD.fetch_add(1, Ordering::Relaxed);
        let jitter = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) % (interval / 2).max(1);
        let now = now_ms();
        Self {
            stream,
            out: Mutex::new(Out {
                queue: VecDeque::new(),
                busy: false,
                closing: None,
                torn: false,
            }),
            waker: AtomicWaker::new(),
            signaled: AtomicBool::new(false),
            limit,
            heartbeat,
            last_heard_ms: AtomicU64::new(now),
            next_ping_ms: AtomicU64::new(now + interval - jitter),
            expires_ms: AtomicU64::new(u64::MAX),
        }
    }

    fn signal(&self) {
        self.signaled.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Registers the connection's task to be woken; true if it was signaled
    /// since it last asked.
    pub(crate) fn poll_signal(&self, cx: &std::task::Context<'_>) -> bool {
        self.waker.register(cx.waker());
        self.signaled.swap(false, Ordering::AcqRel)
    }

    /// Closes the connection once `unix_secs` has passed (checked by the heartbeat).
    pub fn expire_at(&self, unix_secs: u64) {
        let left_ms = unix_secs.saturating_sub(now_secs()).saturating_mul(1000);
        self.expires_ms
            .store(now_ms().saturating_add(left_ms), Ordering::Relaxed);
    }

    /// The peer sent something: it is alive.
    pub(crate) fn heard(&self) {
        self.last_heard_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Takes everything queued as one buffer to write, marking the sink busy
    /// until [`SocketSink::take_queued`] finds nothing more. The flag says
    /// whether the buffer starts inside a frame.
    pub(crate) fn take_queued(&self) -> Option<(Bytes, bool)> {
        let mut out = self.out.lock();
        out.busy = !out.queue.is_empty();
        let torn = std::mem::take(&mut out.torn);
        let bytes = match out.queue.len() {
            0 => None,
            1 => out.queue.pop_front(),
            _ => {
                let total = out.queue.iter().map(Bytes::len).sum();
                let mut batch = BytesMut::with_capacity(total);
                for frame in &out.queue {
                    batch.extend_from_slice(frame);
                }
                // Give the queue's memory back; most connections rarely queue.
                out.queue = VecDeque::new();
                Some(batch.freeze())
            }
        };
        bytes.map(|b| (b, torn))
    }

    /// Whether a dropped queue left the socket's stream inside a frame.
    pub(crate) fn torn(&self) -> bool {
        self.out.lock().torn
    }

    pub(crate) fn closing(&self) -> Option<CloseReason> {
        self.out.lock().closing
    }

    fn start_close(&self, reason: CloseReason) -> bool {
        let mut out = self.out.lock();
        if out.closing.is_some() {
            return false;
        }
        out.closing = Some(reason);
        if !reason.flush_first() {
            out.queue = VecDeque::new();
        }
        true
    }
}

impl Sink for SocketSink {
    fn offer(&self, frame: &PreparedFrame) -> Result<(), Refused> {
        let wire = frame.wire();
        let mut out = self.out.lock();
        if out.closing.is_some() {
            return Err(Refused::Closed);
        }
        if !out.busy && out.queue.is_empty() {
            let rest = match self.stream.try_write(wire) {
                Ok(n) if n == wire.len() => return Ok(()),
                Ok(n) => {
                    out.torn = n > 0;
                    wire.slice(n..)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => wire.clone(),
                Err(_) => {
                    out.closing = Some(CloseReason::PeerGone);
                    drop(out);
                    self.signal();
                    return Err(Refused::Closed);
                }
            };
            out.queue.push_back(rest);
            drop(out);
            self.signal();
            return Ok(());
        }
        if out.queue.len() >= self.limit {
            out.closing = Some(CloseReason::SlowConsumer);
            out.queue = VecDeque::new();
            drop(out);
            counter!(telemetry::SLOW_CONSUMERS).increment(1);
            self.signal();
            return Err(Refused::Full);
        }
        out.queue.push_back(wire.clone());
        let depth = out.queue.len();
        drop(out);
        // The task already knows: it is busy, or was signaled by the first queued frame.
        histogram!(telemetry::QUEUE_DEPTH).record(depth as f64);
        Ok(())
    }

    fn close(&self, reason: CloseReason) {
        if self.start_close(reason) {
            self.signal();
        }
    }

    fn abort(&self, reason: CloseReason) {
        self.start_close(reason);
        if reason.sends_frame() {
            let _ = self.stream.try_write(reason.frame().wire());
        }
        let _ = socket2::SockRef::from(&self.stream).shutdown(std::net::Shutdown::Both);
    }

    fn heartbeat(&self) {
        let now = now_ms();
        if now >= self.expires_ms.load(Ordering::Relaxed) {
            self.close(CloseReason::TokenExpired);
            return;
        }
        let silent = now.saturating_sub(self.last_heard_ms.load(Ordering::Relaxed));
        if silent >= self.heartbeat.idle_timeout.as_millis() as u64 {
            self.close(CloseReason::IdleTimeout);
            return;
        }
        let interval = self.heartbeat.ping_interval.as_millis() as u64;
        if now < self.next_ping_ms.load(Ordering::Relaxed) {
            return;
        }
        self.next_ping_ms.store(now + interval, Ordering::Relaxed);
        // A peer heard from recently needs no ping this round.
        if silent >= interval / 2 {
            let _ = self.offer(&PING);
        }
    }
}
