//! Reads client frames off a socket without a per-connection buffer while
//! idle: bytes are read into a buffer allocated on demand and freed once
//! everything in it was handled. Messages larger than the limit are skipped
//! as they stream in, never buffered.

use std::cell::RefCell;
use std::io;

use switchboard_proto::ws::{self, FrameError, OpCode};
use tokio::net::TcpStream;

/// Bytes read from the socket per `read` call, at most.
const READ_CHUNK: usize = 16 * 1024;

thread_local! {
    /// Every connection on a worker thread reads into this one buffer and
    /// keeps (copies) only what it read, so an idle connection holds none.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_CHUNK].into_boxed_slice());
}

#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    Text(Vec<u8>),
    Binary,
    Ping(Vec<u8>),
    Pong,
    Close,
    /// A message of this many bytes (at least) was over the limit and is being skipped.
    Oversized(u64),
}

#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    Protocol(&'static str),
    Frame(FrameError),
}

pub struct FrameReader {
    buf: Vec<u8>,
    /// Where unhandled bytes start in `buf`.
    start: usize,
    max: usize,
    /// A fragmented message being assembled.
    message: Option<(OpCode, Vec<u8>)>,
    /// Payload bytes of an oversized frame still to drop.
    skipping: u64,
    /// Dropping the rest of an oversized fragmented message, up to its final frame.
    discarding: bool,
}

/// What one read from the socket gave.
pub enum Filled {
    Bytes,
    Eof,
    WouldBlock,
}

impl FrameReader {
    pub fn new(max: usize, initial: &[u8]) -> Self {
        Self {
            buf: initial.to_vec(),
            start: 0,
            max,
            message: None,
            skipping: 0,
            discarding: false,
        }
    }

    /// Reads what the socket has, without waiting.
    pub fn fill(&mut self, stream: &TcpStream) -> io::Result<Filled> {
        SCRATCH.with_borrow_mut(|scratch| match stream.try_read(scratch) {
            Ok(0) => Ok(Filled::Eof),
            Ok(n) => {
                if self.start > 0 {
                    self.buf.drain(..self.start);
                    self.start = 0;
                }
                self.buf.extend_from_slice(&scratch[..n]);
                Ok(Filled::Bytes)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Filled::WouldBlock),
            Err(e) => Err(e),
        })
    }

    /// Frees the buffer when everything in it was handled.
    pub fn release_idle(&mut self) {
        if self.start == self.buf.len() {
            self.buf = Vec::new();
            self.start = 0;
        }
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// The next complete event in what was read, if any.
    pub fn next_event(&mut self) -> Result<Option<Event>, ReadError> {
        loop {
            if self.skipping > 0 {
                let n = self.skipping.min(self.pending().len() as u64);
                self.start += n as usize;
                self.skipping -= n;
                if self.skipping > 0 {
                    return Ok(None);
                }
            }
            let Some(head) = ws::parse_head(self.pending()).map_err(ReadError::Frame)? else {
                return Ok(None);
            };
            if head.opcode.is_control() {
                let total = head.header_len + head.payload_len as usize;
                if self.pending().len() < total {
                    return Ok(None);
                }
                let payload = self.take_payload(head.header_len, head.payload_len as usize, head.mask);
                return Ok(Some(match head.opcode {
                    OpCode::Ping => Event::Ping(payload),
                    OpCode::Pong => Event::Pong,
                    _ => Event::Close,
                }));
            }
            let continuing = self.message.is_some() || self.discarding;
            match head.opcode {
                OpCode::Continuation if !continuing => {
                    return Err(ReadError::Protocol(
                        "continuation frame without a message to continue",
                    ));
                }
                OpCode::Text | OpCode::Binary if continuing => {
                    return Err(ReadError::Protocol("new message before the fragmented one ended"));
                }
                _ => {}
            }
            let so_far = self.message.as_ref().map_or(0, |(_, d)| d.len() as u64);
            if self.discarding || so_far + head.payload_len > self.max as u64 {
                let announce = !self.discarding;
                self.message = None;
                self.discarding = !head.fin;
                self.start += head.header_len;
                self.skipping = head.payload_len;
                if announce {
                    return Ok(Some(Event::Oversized(so_far + head.payload_len)));
                }
                continue;
            }
            let len = head.payload_len as usize;
            if self.pending().len() < head.header_len + len {
                self.buf.reserve(head.header_len + len - self.pending().len());
                return Ok(None);
            }
            let payload = self.take_payload(head.header_len, len, head.mask);
            let (opcode, data) = match self.message.take() {
                None => (head.opcode, payload),
                Some((opcode, mut data)) => {
                    data.extend_from_slice(&payload);
                    (opcode, data)
                }
            };
            if !head.fin {
                self.message = Some((opcode, data));
                continue;
            }
            return Ok(Some(match opcode {
                OpCode::Binary => Event::Binary,
                _ => Event::Text(data),
            }));
        }
    }

    fn take_payload(&mut self, header_len: usize, len: usize, mask: [u8; 4]) -> Vec<u8> {
        let at = self.start + header_len;
        let payload = &mut self.buf[at..at + len];
        ws::unmask(payload, mask, 0);
        let out = payload.to_vec();
        self.start = at + len;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [9, 8, 7, 6];
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 65535 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn events(max: usize, bytes: &[u8]) -> Vec<Result<Event, ReadError>> {
        let mut r = FrameReader::new(max, bytes);
        let mut out = Vec::new();
        loop {
            match r.next_event() {
                Ok(Some(e)) => out.push(Ok(e)),
                Ok(None) => return out,
                Err(e) => {
                    out.push(Err(e));
                    return out;
                }
            }
        }
    }

    #[test]
    fn whole_and_fragmented_messages() {
        let mut bytes = frame(1, true, b"one");
        bytes.extend(frame(1, false, b"tw"));
        bytes.extend(frame(9, true, b"p")); // control frames may interleave
        bytes.extend(frame(0, true, b"o"));
        bytes.extend(frame(2, true, b"bin"));
        bytes.extend(frame(8, true, &[3, 232]));
        assert_eq!(
            events(100, &bytes),
            vec![
                Ok(Event::Text(b"one".to_vec())),
                Ok(Event::Ping(b"p".to_vec())),
                Ok(Event::Text(b"two".to_vec())),
                Ok(Event::Binary),
                Ok(Event::Close)
            ]
        );
    }

    #[test]
    fn oversized_messages_are_skipped_and_the_next_one_read() {
        let mut bytes = frame(1, true, &[b'x'; 300]);
        bytes.extend(frame(1, false, &[b'y'; 60]));
        bytes.extend(frame(0, false, &[b'y'; 60]));
        bytes.extend(frame(0, true, &[b'y'; 60]));
        bytes.extend(frame(1, true, b"ok"));
        assert_eq!(
            events(100, &bytes),
            vec![
                Ok(Event::Oversized(300)),
                Ok(Event::Oversized(120)),
                Ok(Event::Text(b"ok".to_vec()))
            ]
        );
    }

    #[test]
    fn partial_input_waits_for_more() {
        let bytes = frame(1, true, b"hello");
        for cut in 0..bytes.len() {
            assert_eq!(events(100, &bytes[..cut]), vec![], "cut {cut}");
        }
    }

    #[test]
    fn protocol_errors() {
        assert_eq!(
            events(100, &frame(0, true, b"x")),
            vec![Err(ReadError::Protocol(
                "continuation frame without a message to continue"
            ))]
        );
        let mut bytes = frame(1, false, b"x");
        bytes.extend(frame(1, true, b"y"));
        assert_eq!(
            events(100, &bytes),
            vec![Err(ReadError::Protocol(
                "new message before the fragmented one ended"
            ))]
        );
        assert_eq!(
            events(100, &[0x81, 0x01, b'x']),
            vec![Err(ReadError::Frame(FrameError::Unmasked))]
        );
    }
}
