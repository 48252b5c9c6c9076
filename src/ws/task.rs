//! A connection's task: reads frames and hands them to the protocol logic
//! one at a time (writing meanwhile), writes what the socket had to queue,
//! and closes the socket cleanly. The writing itself is the [`Socket`]'s.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use switchboard_actors::{CloseReason, FrameHandler, Sink, batch};
use switchboard_proto::PreparedFrame;
use switchboard_proto::ws::{self, OpCode};

use super::liveness::Heartbeat;
use super::reader::{Event, FrameReader, ReadError};
use super::socket::{Filled, Flush, Socket};

#[derive(Clone, Copy, Debug)]
pub struct WsSettings {
    pub max_frame_bytes: usize,
    pub heartbeat: Heartbeat,
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
pub async fn run<H: FrameHandler>(socket: Arc<Socket>, mut conn: H, initial: Bytes, settings: WsSettings) {
    let mut reader = FrameReader::new(settings.max_frame_bytes);
    reader.feed(&initial);
    drop(initial);
    let mut reading = read_events(&mut conn, &mut reader, &socket, settings, None).await;
    loop {
        let flushed = socket.flush();
        if let Some(reason) = socket.closing() {
            return Box::pin(socket.finish(reason)).await;
        }
        // One small hand-written future instead of `select!` over three:
        // this is what every idle connection's task is parked on.
        let wake = poll_fn(|cx| {
            if socket.poll_signal(cx) {
                return Poll::Ready(Wake::Signaled);
            }
            if flushed == Flush::Blocked
                && let Poll::Ready(r) = socket.poll_write_ready(cx)
            {
                return Poll::Ready(if r.is_ok() { Wake::Writable } else { Wake::Failed });
            }
            if reading && let Poll::Ready(r) = socket.poll_read_ready(cx) {
                return Poll::Ready(if r.is_ok() { Wake::Readable } else { Wake::Failed });
            }
            Poll::Pending
        })
        .await;
        match wake {
            Wake::Signaled | Wake::Writable => {}
            Wake::Failed => socket.close(CloseReason::PeerGone),
            Wake::Readable => {
                let before = reader.progress();
                match socket.read(&mut reader) {
                    Ok(Filled::Bytes) => {
                        reading = read_events(&mut conn, &mut reader, &socket, settings, before).await;
                        reader.release_idle();
                    }
                    Ok(Filled::WouldBlock) => {}
                    Ok(Filled::Eof) | Err(_) => socket.close(CloseReason::PeerGone),
                }
            }
        }
    }
}

/// Handles every complete event read so far, the socket writing meanwhile,
/// and times the message still in progress. Returns whether to keep reading.
async fn read_events<H: FrameHandler>(
    conn: &mut H,
    reader: &mut FrameReader,
    socket: &Socket,
    settings: WsSettings,
    before: Option<u64>,
) -> bool {
    let reading = Box::pin(socket.serve(handle_events(conn, reader, socket, settings))).await;
    socket.track_message(before, reader.progress());
    reading
}

async fn handle_events<H: FrameHandler>(
    conn: &mut H,
    reader: &mut FrameReader,
    socket: &Socket,
    settings: WsSettings,
) -> bool {
    loop {
        match reader.next_event() {
            Ok(None) => {
                // A burst of publishes went out together: their replies now.
                if conn.unsettled() {
                    conn.settle().await;
                }
                return true;
            }
            Ok(Some(Event::Text(payload))) => {
                if reader.has_more() {
                    // Not the last frame of this read: coalesce what it publishes.
                    batch::defer();
                }
                conn.on_text(&payload).await
            }
            Ok(Some(Event::Binary)) => conn.on_binary(),
            Ok(Some(Event::Oversized(len))) => conn.on_oversized(len, settings.max_frame_bytes),
            Ok(Some(Event::Ping(payload))) => {
                conn.write(&PreparedFrame::from_wire(ws::frame(OpCode::Pong, &payload)))
            }
            Ok(Some(Event::Pong)) => {}
            Ok(Some(Event::Close)) => {
                socket.close(CloseReason::Normal);
                return false;
            }
            Err(e) => {
                let reason = match e {
                    ReadError::InvalidUtf8 => CloseReason::InvalidData,
                    ReadError::Protocol(why) => {
                        tracing::debug!(reason = why, "protocol error");
                        CloseReason::Protocol
                    }
                    ReadError::Frame(e) => {
                        tracing::debug!(error = %e, "protocol error");
                        CloseReason::Protocol
                    }
                };
                socket.close(reason);
                return false;
            }
        }
    }
}
