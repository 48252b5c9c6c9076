//! Parses client frames from the bytes a socket read, without I/O (the
//! socket feeds it) and without a per-connection buffer while idle: bytes
//! are kept in a buffer allocated on demand, grown only as data arrives
//! (never by what a header announces), and freed once everything in it was
//! handled. Messages larger than the limit are skipped as they stream in,
//! never buffered. Text must be UTF-8 and close payloads well formed.

use switchboard_proto::ws::{self, FrameError, OpCode};

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
    /// The peer broke the framing rules (close with 1002).
    Protocol(&'static str),
    Frame(FrameError),
    /// A text message or close reason that is not UTF-8 (close with 1007).
    InvalidUtf8,
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
    /// Data messages (and close frames) completed so far.
    completed: u64,
}

impl FrameReader {
    pub fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            max,
            message: None,
            skipping: 0,
            discarding: false,
            completed: 0,
        }
    }

    /// Adds bytes read from the socket.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Frees the buffer when everything in it was handled.
    pub fn release_idle(&mut self) {
        if self.start == self.buf.len() {
            self.buf = Vec::new();
            self.start = 0;
        }
    }

    /// Bytes the reader holds on to (its buffer and any message being assembled).
    pub fn held(&self) -> usize {
        self.buf.capacity() + self.message.as_ref().map_or(0, |(_, m)| m.capacity())
    }

    /// `None` when the reader sits between messages; otherwise how many
    /// messages were completed before the one in progress, so a caller can
    /// time each message (a client trickling one frame forever is cut off).
    pub fn progress(&self) -> Option<u64> {
        let clean =
            self.start == self.buf.len() && self.message.is_none() && self.skipping == 0 && !self.discarding;
        (!clean).then_some(self.completed)
    }

    /// Whether bytes past the last event returned are waiting: more frames
    /// of the same read are coming.
    pub fn has_more(&self) -> bool {
        self.start < self.buf.len()
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
                if !self.discarding {
                    self.completed += 1;
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
                return match head.opcode {
                    OpCode::Ping => Ok(Some(Event::Ping(payload))),
                    OpCode::Pong => Ok(Some(Event::Pong)),
                    _ => {
                        check_close_payload(&payload)?;
                        self.completed += 1;
                        Ok(Some(Event::Close))
                    }
                };
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
                if self.skipping == 0 && !self.discarding {
                    self.completed += 1;
                }
                if announce {
                    return Ok(Some(Event::Oversized(so_far + head.payload_len)));
                }
                continue;
            }
            let len = head.payload_len as usize;
            if self.pending().len() < head.header_len + len {
                // Wait for the payload; room for it is made as it arrives.
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
            self.completed += 1;
            return match opcode {
                OpCode::Binary => Ok(Some(Event::Binary)),
                _ if std::str::from_utf8(&data).is_err() => Err(ReadError::InvalidUtf8),
                _ => Ok(Some(Event::Text(data))),
            };
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

/// A close payload is empty, or a status code a peer may send followed by a
/// UTF-8 reason (RFC 6455 §5.5.1, §7.4).
fn check_close_payload(payload: &[u8]) -> Result<(), ReadError> {
    match payload {
        [] => Ok(()),
        [_] => Err(ReadError::Protocol("a close payload of one byte")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            let sendable = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !sendable {
                return Err(ReadError::Protocol("a close code a peer may not send"));
            }
            std::str::from_utf8(reason).map_err(|_| ReadError::InvalidUtf8)?;
            Ok(())
        }
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
        let mut r = FrameReader::new(max);
        r.feed(bytes);
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
        bytes.extend(frame(8, true, &[3, 232, b'o', b'k']));
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

    #[test]
    fn a_header_reserves_nothing_it_has_not_received() {
        let whole = frame(1, true, &[b'x'; 60_000]);
        let mut r = FrameReader::new(65_536);
        r.feed(&whole[..14]);
        assert_eq!(r.next_event(), Ok(None));
        assert!(r.held() < 64, "holds {} bytes for a 14-byte header", r.held());
        assert_eq!(r.progress(), Some(0), "a frame is in progress");
        r.feed(&whole[14..30_000]);
        assert_eq!(r.next_event(), Ok(None));
        assert!(r.held() < 2 * 30_000);
        r.feed(&whole[30_000..]);
        assert!(matches!(r.next_event(), Ok(Some(Event::Text(t))) if t.len() == 60_000));
        assert_eq!(r.progress(), None);
    }

    #[test]
    fn progress_counts_completed_messages() {
        let mut r = FrameReader::new(100);
        let mut bytes = frame(1, true, b"one");
        bytes.extend(&frame(1, true, b"two")[..3]);
        r.feed(&bytes);
        assert!(matches!(r.next_event(), Ok(Some(Event::Text(_)))));
        assert_eq!(r.next_event(), Ok(None));
        assert_eq!(r.progress(), Some(1), "the second message is under way");
        // A ping in the middle of a fragmented message does not complete it.
        let mut r = FrameReader::new(100);
        let mut bytes = frame(1, false, b"a");
        bytes.extend(frame(9, true, b""));
        r.feed(&bytes);
        assert!(matches!(r.next_event(), Ok(Some(Event::Ping(_)))));
        assert_eq!(r.next_event(), Ok(None));
        assert_eq!(r.progress(), Some(0));
    }

    #[test]
    fn text_must_be_utf8() {
        assert_eq!(
            events(100, &frame(1, true, &[0xff, 0xfe])),
            vec![Err(ReadError::InvalidUtf8)]
        );
        // Split across fragments, a valid sequence is fine.
        let e_acute = "é".as_bytes();
        let mut bytes = frame(1, false, &e_acute[..1]);
        bytes.extend(frame(0, true, &e_acute[1..]));
        assert_eq!(events(100, &bytes), vec![Ok(Event::Text(e_acute.to_vec()))]);
    }

    #[test]
    fn close_payloads_are_checked() {
        let close = |payload: &[u8]| events(100, &frame(8, true, payload));
        assert_eq!(close(&[]), vec![Ok(Event::Close)]);
        assert_eq!(close(&[0x03, 0xe8, b'b', b'y', b'e']), vec![Ok(Event::Close)]);
        assert_eq!(close(&[0x0f, 0xa0]), vec![Ok(Event::Close)], "4000: private use");
        for bad in [
            &[0x03][..],
            &[0x03, 0xed],
            &[0x03, 0xee],
            &[0x00, 0x10],
            &[0x13, 0x88],
        ] {
            assert!(matches!(close(bad)[..], [Err(ReadError::Protocol(_))]), "{bad:?}");
        }
        assert_eq!(close(&[0x03, 0xe8, 0xff]), vec![Err(ReadError::InvalidUtf8)]);
    }
}
