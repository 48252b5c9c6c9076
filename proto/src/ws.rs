//! WebSocket framing (RFC 6455) for the server end of a socket, without I/O.
//!
//! Server→client frames are never masked, so one complete frame (header and
//! payload) can be built once and written to every subscriber's socket as is.
//! Client→server frames are always masked; [`parse_head`] reads their header and
//! [`unmask`] decodes their payload in place.

use bytes::{BufMut, Bytes, BytesMut};

/// The largest header a server frame can have: 2 bytes plus an 8-byte length.
pub const MAX_SERVER_HEADER: usize = 10;
/// Control frames carry at most 125 payload bytes.
pub const MAX_CONTROL_PAYLOAD: usize = 125;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl OpCode {
    fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// Close codes the server uses (RFC 6455 §7.4 and the 4000-4999 private range).
pub mod close {
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down: reconnect, to another pod if there is one.
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// Never sent: what a peer reports when the connection dropped without a close frame.
    pub const ABNORMAL: u16 = 1006;
    /// A text frame (or a close reason) was not valid UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    pub const POLICY_VIOLATION: u16 = 1008;
    pub const INTERNAL_ERROR: u16 = 1011;
    /// The connection's outbound queue overflowed: reconnect and resume.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// The connection's credentials expired or were revoked.
    pub const UNAUTHORIZED: u16 = 4001;
    /// The org (or the credential) was deleted: reconnecting with the same
    /// credentials cannot succeed.
    pub const FORBIDDEN: u16 = 4003;
    /// Another socket attached to the same operator session.
    pub const REPLACED: u16 = 4009;
    /// The operator session was deleted or expired.
    pub const SESSION_ENDED: u16 = 4010;
}

/// Writes a server frame header for `len` payload bytes into the *end* of
/// `out`, returning how many bytes it used. Writing at the end lets a caller
/// reserve [`MAX_SERVER_HEADER`] bytes, write the payload after them, and
/// slice the frame out without moving the payload.
fn put_header_at_end(opcode: OpCode, len: usize, out: &mut [u8; MAX_SERVER_HEADER]) -> usize {
    let first = 0x80 | opcode.bits();
    if len < 126 {
        out[8] = first;
        out[9] = len as u8;
        2
    } else if len <= u16::MAX as usize {
        out[6] = first;
        out[7] = 126;
        out[8..10].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[0] = first;
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// Builds one unmasked, final frame: the payload is written after a reserved
/// header, and the header is filled in when the length is known.
pub struct FrameBuf {
    buf: Vec<u8>,
}

impl FrameBuf {
    pub fn with_capacity(payload: usize) -> Self {
        let mut buf = Vec::with_capacity(MAX_SERVER_HEADER + payload);
        buf.extend_from_slice(&[0; MAX_SERVER_HEADER]);
        Self { buf }
    }

    /// The payload written so far, for `std::io::Write`-style encoders.
    pub fn payload_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    pub fn finish(mut self, opcode: OpCode) -> Bytes {
        let len = self.buf.len() - MAX_SERVER_HEADER;
        let mut header = [0u8; MAX_SERVER_HEADER];
        let used = put_header_at_end(opcode, len, &mut header);
        let start = MAX_SERVER_HEADER - used;
        self.buf[start..MAX_SERVER_HEADER].copy_from_slice(&header[start..]);
        Bytes::from(self.buf).slice(start..)
    }
}

/// A complete text frame carrying `payload`.
pub fn text_frame(payload: &[u8]) -> Bytes {
    frame(OpCode::Text, payload)
}

/// A complete frame of any opcode.
pub fn frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    let mut f = FrameBuf::with_capacity(payload.len());
    f.payload_mut().extend_from_slice(payload);
    f.finish(opcode)
}

/// A close frame with a status code and a reason (cut to fit a control frame).
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut reason = &reason.as_bytes()[..reason.len().min(MAX_CONTROL_PAYLOAD - 2)];
    // Never cut inside a UTF-8 sequence: the reason must stay valid text.
    while std::str::from_utf8(reason).is_err() {
        reason = &reason[..reason.len() - 1];
    }
    let mut b = BytesMut::with_capacity(4 + reason.len());
    b.put_u8(0x80 | OpCode::Close.bits());
    b.put_u8((2 + reason.len()) as u8);
    b.put_u16(code);
    b.put_slice(reason);
    b.freeze()
}

/// The header of a frame received from a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHead {
    pub fin: bool,
    pub opcode: OpCode,
    pub mask: [u8; 4],
    pub payload_len: u64,
    /// Bytes taken by the header itself (2 to 14).
    pub header_len: usize,
}

/// Why a client's frame breaks the protocol; the connection closes with 1002.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("reserved bits set without a negotiated extension")]
    ReservedBits,
    #[error("unknown opcode {0:#x}")]
    UnknownOpcode(u8),
    #[error("client frames must be masked")]
    Unmasked,
    #[error("control frames must be final and at most 125 bytes")]
    BadControlFrame,
    #[error("payload length is not minimally encoded or exceeds 2^63")]
    BadLength,
}

/// Reads a client frame header from the start of `buf`; `Ok(None)` when more
/// bytes are needed.
pub fn parse_head(buf: &[u8]) -> Result<Option<FrameHead>, FrameError> {
    let [b0, b1, ..] = *buf else { return Ok(None) };
    if b0 & 0x70 != 0 {
        return Err(FrameError::ReservedBits);
    }
    let opcode = OpCode::from_bits(b0 & 0x0F).ok_or(FrameError::UnknownOpcode(b0 & 0x0F))?;
    if b1 & 0x80 == 0 {
        return Err(FrameError::Unmasked);
    }
    let fin = b0 & 0x80 != 0;
    let (payload_len, len_bytes) = match b1 & 0x7F {
        126 => {
            let Some(l) = buf.get(2..4) else { return Ok(None) };
            let len = u16::from_be_bytes([l[0], l[1]]) as u64;
            if len < 126 {
                return Err(FrameError::BadLength);
            }
            (len, 2)
        }
        127 => {
            let Some(l) = buf.get(2..10) else { return Ok(None) };
            let mut a = [0u8; 8];
            a.copy_from_slice(l);
            let len = u64::from_be_bytes(a);
            if len <= u16::MAX as u64 || len >> 63 != 0 {
                return Err(FrameError::BadLength);
            }
            (len, 8)
        }
        n => (n as u64, 0),
    };
    if opcode.is_control() && (!fin || payload_len > MAX_CONTROL_PAYLOAD as u64) {
        return Err(FrameError::BadControlFrame);
    }
    let mask_at = 2 + len_bytes;
    let Some(m) = buf.get(mask_at..mask_at + 4) else {
        return Ok(None);
    };
    Ok(Some(FrameHead {
        fin,
        opcode,
        mask: [m[0], m[1], m[2], m[3]],
        payload_len,
        header_len: mask_at + 4,
    }))
}

/// Unmasks `data` in place; `offset` is how many payload bytes of this frame
/// came before `data` (the mask repeats every 4 bytes).
pub fn unmask(data: &mut [u8], mask: [u8; 4], offset: u64) {
    let shift = (offset % 4) as usize;
    let mask = [
        mask[shift],
        mask[(shift + 1) % 4],
        mask[(shift + 2) % 4],
        mask[(shift + 3) % 4],
    ];
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut a = [0u8; 8];
        a.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(a) ^ wide).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A masked client frame, as a browser would send it.
    fn client_frame(opcode: u8, fin: bool, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= 65535 {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn decode_server(frame: &[u8]) -> (u8, Vec<u8>) {
        let op = frame[0] & 0x0F;
        assert_eq!(frame[0] & 0x80, 0x80, "server frames are final");
        assert_eq!(frame[1] & 0x80, 0, "server frames are not masked");
        let (len, at) = match frame[1] {
            126 => (u16::from_be_bytes([frame[2], frame[3]]) as usize, 4),
            127 => (u64::from_be_bytes(frame[2..10].try_into().unwrap()) as usize, 10),
            n => (n as usize, 2),
        };
        assert_eq!(frame.len(), at + len);
        (op, frame[at..].to_vec())
    }

    #[test]
    fn server_frames_of_every_length_class() {
        for len in [0, 1, 125, 126, 65535, 65536, 70000] {
            let payload = vec![b'x'; len];
            let f = text_frame(&payload);
            assert_eq!(decode_server(&f), (1, payload));
        }
    }

    #[test]
    fn close_frame_truncates_on_char_boundary() {
        let f = close_frame(close::GOING_AWAY, &"é".repeat(100));
        let (op, payload) = decode_server(&f);
        assert_eq!(op, 8);
        assert!(payload.len() <= MAX_CONTROL_PAYLOAD);
        assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1001);
        assert!(std::str::from_utf8(&payload[2..]).is_ok());
    }

    #[test]
    fn parses_client_frames() {
        let f = client_frame(1, true, b"hello", [1, 2, 3, 4]);
        let head = parse_head(&f).unwrap().unwrap();
        assert_eq!(head.opcode, OpCode::Text);
        assert!(head.fin);
        assert_eq!(head.payload_len, 5);
        let mut p = f[head.header_len..].to_vec();
        unmask(&mut p, head.mask, 0);
        assert_eq!(p, b"hello");
        for cut in 0..head.header_len {
            assert_eq!(parse_head(&f[..cut]).unwrap(), None, "cut at {cut}");
        }
    }

    #[test]
    fn rejects_protocol_violations() {
        assert_eq!(parse_head(&[0x81, 0x05]), Err(FrameError::Unmasked));
        assert_eq!(parse_head(&[0xC1, 0x85]), Err(FrameError::ReservedBits));
        assert_eq!(parse_head(&[0x83, 0x85]), Err(FrameError::UnknownOpcode(3)));
        assert_eq!(parse_head(&[0x09, 0x80]), Err(FrameError::BadControlFrame));
        assert_eq!(
            parse_head(&[0x89, 0xFE, 0, 200]),
            Err(FrameError::BadControlFrame)
        );
        assert_eq!(parse_head(&[0x81, 0xFE, 0, 5]), Err(FrameError::BadLength));
    }

    proptest! {
        #[test]
        fn unmask_in_pieces_equals_whole(payload in proptest::collection::vec(any::<u8>(), 0..300),
                                         mask in any::<[u8; 4]>(), split in 0usize..300) {
            let f = client_frame(1, true, &payload, mask);
            let head = parse_head(&f).unwrap().unwrap();
            let mut body = f[head.header_len..].to_vec();
            let split = split.min(body.len());
            let (a, b) = body.split_at_mut(split);
            unmask(a, head.mask, 0);
            unmask(b, head.mask, split as u64);
            prop_assert_eq!(body, payload);
        }

        #[test]
        fn parse_head_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..20)) {
            let _ = parse_head(&bytes);
        }
    }
}
