//! A client connection's task: reads frames and hands them to the protocol
//! logic one at a time, writes what the sink had to queue, pings an idle
//! peer, and closes the socket cleanly.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, Bytes};
use switchboard_actors::{CloseReason, FrameHandler, Sink};
use switchboard_proto::PreparedFrame;
use switchboard_proto::ws::{self, OpCode};
use tokio::time::timeout;

use super::reader::{Event, Filled, FrameReader, ReadError};
use super::socket::SocketSink;

/// How long a closing connection may take to get its close frame out and
/// hear the peer's.
const CLOSE_PATIENCE: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug)]
pub struct WsSettings {
    pub max_frame_bytes: usize,
    pub heartbeat: super::socket::Heartbeat,
}

/// Bytes taken from the sink's queue and not yet written.
struct Pending {
    bytes: Bytes,
    /// The socket's byte stream currently ends inside one of these frames.
    torn: bool,
}

enum Wake {
    Signaled,
    Writable,
    Readable,
    Failed,
}

/// Every connection's task is this future, idle or not, so it is kept small:
/// frame handling and closing run in boxed futures of their own, and the
/// bytes hyper read past the handshake are copied out (the `Bytes` would
/// pin hyper's whole read buffer).
pub async fn run<H: FrameHandler>(sink: Arc<SocketSink>, mut conn: H, initial: Bytes, settings: WsSettings) {
    let mut reader = FrameReader::new(settings.max_frame_bytes, &initial);
    drop(initial);
    let mut reading = handle_events(&mut conn, &mut reader, &sink, settings).await;
    let mut pending: Option<Pending> = None;
    loop {
        write_queued(&sink, &mut pending);
        if let Some(reason) = sink.closing()
            && (pending.is_none() || !reason.flush_first())
        {
            let clean = pending.as_ref().is_none_or(|p| !p.torn);
            return Box::pin(finish(&sink, reason, clean && !sink.torn())).await;
        }
        // One small hand-written future instead of `select!` over three:
        // this is what every idle connection's task is parked on.
        let wake = poll_fn(|cx| {
            if sink.poll_signal(cx) {
                return Poll::Ready(Wake::Signaled);
            }
            if pending.is_some()
                && let Poll::Ready(r) = sink.stream.poll_write_ready(cx)
            {
                return Poll::Ready(if r.is_ok() { Wake::Writable } else { Wake::Failed });
            }
            if reading && let Poll::Ready(r) = sink.stream.poll_read_ready(cx) {
                return Poll::Ready(if r.is_ok() { Wake::Readable } else { Wake::Failed });
            }
            Poll::Pending
        })
        .await;
        match wake {
            Wake::Signaled | Wake::Writable => {}
            Wake::Failed => sink.close(CloseReason::PeerGone),
            Wake::Readable => match reader.fill(&sink.stream) {
                Ok(Filled::Bytes) => {
                    sink.heard();
                    reading = handle_events(&mut conn, &mut reader, &sink, settings).await;
                    reader.release_idle();
                }
                Ok(Filled::WouldBlock) => {}
                Ok(Filled::Eof) | Err(_) => sink.close(CloseReason::PeerGone),
            },
        }
    }
}

/// Handles every complete event read so far. Returns whether to keep reading.
async fn handle_events<H: FrameHandler>(
    conn: &mut H,
    reader: &mut FrameReader,
    sink: &SocketSink,
    settings: WsSettings,
) -> bool {
    loop {
        match reader.next_event() {
            Ok(None) => return true,
            Ok(Some(Event::Text(payload))) => conn.on_text(&payload).await,
            Ok(Some(Event::Binary)) => conn.on_binary(),
            Ok(Some(Event::Oversized(len))) => conn.on_oversized(len, settings.max_frame_bytes),
            Ok(Some(Event::Ping(payload))) => {
                conn.write(&PreparedFrame::from_wire(ws::frame(OpCode::Pong, &payload)))
            }
            Ok(Some(Event::Pong)) => {}
            Ok(Some(Event::Close)) => {
                sink.close(CloseReason::Normal);
                return false;
            }
            Err(e) => {
                match e {
                    ReadError::Protocol(why) => tracing::debug!(reason = why, "protocol error"),
                    ReadError::Frame(e) => tracing::debug!(error = %e, "protocol error"),
                }
                sink.close(CloseReason::Protocol);
                return false;
            }
        }
    }
}

/// Writes as much of the queued bytes as the socket takes now.
fn write_queued(sink: &SocketSink, pending: &mut Option<Pending>) {
    loop {
        if pending.is_none() {
            *pending = sink.take_queued().map(|(bytes, torn)| Pending { bytes, torn });
        }
        let Some(p) = pending.as_mut() else { return };
        match sink.stream.try_write(&p.bytes) {
            Ok(n) if n == p.bytes.len() => *pending = None,
            Ok(n) => {
                p.bytes.advance(n);
                p.torn = true;
                return;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(_) => {
                *pending = None;
                sink.close(CloseReason::PeerGone);
                return;
            }
        }
    }
}

/// Sends the close frame (when the stream is at a frame boundary), shuts the
/// write side and waits briefly for the peer to close its side.
async fn finish(sink: &SocketSink, reason: CloseReason, at_frame_boundary: bool) {
    let stream = &sink.stream;
    if reason.sends_frame() && at_frame_boundary {
        let frame = reason.frame();
        let mut rest = frame.wire().clone();
        let _ = timeout(CLOSE_PATIENCE, async {
            while !rest.is_empty() {
                match stream.try_write(&rest) {
                    Ok(n) => rest.advance(n),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if stream.writable().await.is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        })
        .await;
    }
    let _ = socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write);
    if reason == CloseReason::PeerGone {
        return;
    }
    // Read (and drop) until the peer closes, so it sees our close frame
    // instead of a reset caused by unread data.
    let _ = timeout(CLOSE_PATIENCE, async {
        // On the heap: this future is part of every connection's task, idle or not.
        let mut scratch = vec![0u8; 512];
        loop {
            if stream.readable().await.is_err() {
                return;
            }
            match stream.try_read(&mut scratch) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    })
    .await;
}
