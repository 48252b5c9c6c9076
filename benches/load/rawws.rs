//! A minimal WebSocket client for the subscribers: handshake, masked sends,
//! and frames parsed in place from one read buffer, with no allocation per
//! message. The load generator must cost far less per delivery than the
//! server it measures, or its own queueing shows up as the server's latency.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bytes read per call; a connection's buffer grows only for larger frames.
const READ_CHUNK: usize = 4096;
/// Every client frame must be masked; the key may be any value.
const MASK: [u8; 4] = [0x5b, 0x1e, 0x7a, 0x33];

pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

pub struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
}

/// A frame found in the buffer: its opcode and where its payload lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    pub opcode: u8,
    pub payload: (usize, usize),
}

impl RawWs {
    /// Performs the opening handshake for `path` (with its query) on `stream`.
    pub async fn handshake(
        mut stream: TcpStream,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> io::Result<RawWs> {
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: c3dpdGNoYm9hcmQtbG9hZA==\r\nSec-WebSocket-Version: 13\r\n"
        );
        for (name, value) in headers {
            req.push_str(&format!("{name}: {value}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await?;
        let mut buf = Vec::with_capacity(READ_CHUNK);
        let end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            if buf.len() > 16 * 1024 {
                return Err(io::Error::other("response header too large"));
            }
            if stream.read_buf(&mut buf).await? == 0 {
                return Err(io::Error::other("closed during the handshake"));
            }
        };
        let status_line = buf.split(|b| *b == b'\r').next().unwrap_or_default();
        if !status_line.starts_with(b"HTTP/1.1 101") {
            let head = String::from_utf8_lossy(&buf[..end]);
            return Err(io::Error::other(format!(
                "upgrade refused: {}",
                head.lines().next().unwrap_or("")
            )));
        }
        Ok(RawWs {
            stream,
            buf,
            start: end,
        })
    }

    /// Writes bytes as they are: for clients that break the protocol on purpose.
    pub async fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Sends one masked frame.
    pub async fn send(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        let mut out = Vec::with_capacity(payload.len() + 14);
        out.push(0x80 | opcode);
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= usize::from(u16::MAX) => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
        self.stream.write_all(&out).await
    }

    /// The next complete frame already read, if any. Its payload stays valid
    /// until the next call to [`RawWs::next_frame`] or [`RawWs::fill`].
    pub fn next_frame(&mut self) -> io::Result<Option<Frame>> {
        let pending = &self.buf[self.start..];
        let [b0, b1, ..] = *pending else { return Ok(None) };
        if b1 & 0x80 != 0 {
            return Err(io::Error::other("the server sent a masked frame"));
        }
        let (len, header) = match b1 & 0x7F {
            126 => match pending.get(2..4) {
                Some(l) => (usize::from(u16::from_be_bytes([l[0], l[1]])), 4),
                None => return Ok(None),
            },
            127 => match pending.get(2..10) {
                Some(l) => {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(l);
                    (
                        usize::try_from(u64::from_be_bytes(a)).map_err(io::Error::other)?,
                        10,
                    )
                }
                None => return Ok(None),
            },
            n => (usize::from(n), 2),
        };
        if pending.len() < header + len {
            return Ok(None);
        }
        let at = self.start + header;
        self.start = at + len;
        Ok(Some(Frame {
            opcode: b0 & 0x0F,
            payload: (at, at + len),
        }))
    }

    pub fn payload(&self, frame: &Frame) -> &[u8] {
        &self.buf[frame.payload.0..frame.payload.1]
    }

    /// Reads more from the socket; `Ok(false)` at end of stream.
    pub async fn fill(&mut self) -> io::Result<bool> {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        if self.buf.capacity() - self.buf.len() < READ_CHUNK {
            self.buf.reserve(READ_CHUNK);
        }
        Ok(self.stream.read_buf(&mut self.buf).await? > 0)
    }

    /// Reads until a whole frame is there; `None` at end of stream.
    pub async fn read_frame(&mut self) -> io::Result<Option<Frame>> {
        loop {
            if let Some(frame) = self.next_frame()? {
                return Ok(Some(frame));
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_split_across_reads_are_reassembled() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = vec![0u8; 1024];
            let n = s.read(&mut head).await.unwrap();
            assert!(String::from_utf8_lossy(&head[..n]).contains("Sec-WebSocket-Version: 13"));
            let mut out = b"HTTP/1.1 101 Switching Protocols\r\n\r\n".to_vec();
            out.extend_from_slice(&[0x81, 5]);
            out.extend_from_slice(b"hello");
            let big = vec![b'x'; 300];
            out.extend_from_slice(&[0x82, 126, 1, 44]);
            out.extend_from_slice(&big);
            for chunk in out.chunks(7) {
                s.write_all(chunk).await.unwrap();
                s.flush().await.unwrap();
            }
        });
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut ws = RawWs::handshake(stream, "x", "/", &[]).await.unwrap();
        let f = ws.read_frame().await.unwrap().unwrap();
        assert_eq!((f.opcode, ws.payload(&f)), (TEXT, &b"hello"[..]));
        let f = ws.read_frame().await.unwrap().unwrap();
        assert_eq!((f.opcode, ws.payload(&f).len()), (BINARY, 300));
        assert_eq!(ws.read_frame().await.unwrap(), None);
        server.await.unwrap();
    }
}
