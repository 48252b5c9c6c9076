//! Server frames as bytes on the wire, built once: a complete WebSocket frame
//! (header and JSON payload) that every subscriber's socket, history and
//! HTTP history responses (sliced) share by reference count.

use std::io::Write;

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::channel::ChannelName;
use crate::ids::TurnId;
use crate::server::{TurnFailure, TurnStatus};
use crate::ws::{self, FrameBuf, OpCode};

/// A complete server→client WebSocket frame, shared by reference count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedFrame {
    wire: Bytes,
    header_len: u8,
}

impl PreparedFrame {
    pub(crate) fn new(wire: Bytes) -> Self {
        let header_len = match wire.get(1).map(|b| b & 0x7F) {
            Some(126) => 4,
            Some(127) => 10,
            _ => 2,
        };
        Self { wire, header_len }
    }

    /// A control or data frame built elsewhere (close, pong); `wire` must be a
    /// complete server frame.
    pub fn from_wire(wire: Bytes) -> Self {
        Self::new(wire)
    }

    /// `{"type":"message","channel":..,"offset":..,"data":..}`, written by hand:
    /// channel names never need escaping and `data` is already valid JSON, so
    /// this is a few `memcpy`s.
    pub fn message(channel: &ChannelName, offset: u64, data: &RawValue) -> Self {
        let data = data.get();
        let mut f = FrameBuf::with_capacity(56 + channel.as_str().len() + data.len());
        let out = f.payload_mut();
        out.extend_from_slice(br#"{"type":"message","channel":""#);
        out.extend_from_slice(channel.as_str().as_bytes());
        out.extend_from_slice(br#"","offset":"#);
        // Writing into a Vec cannot fail.
        let _ = write!(out, "{offset}");
        out.extend_from_slice(br#","data":"#);
        out.extend_from_slice(data.as_bytes());
        out.push(b'}');
        Self::new(f.finish(OpCode::Text))
    }

    /// A turn event, built from borrowed parts (no copy of the text first).
    pub fn turn(channel: &ChannelName, offset: u64, event: TurnEvent<'_>) -> Self {
        #[derive(Serialize)]
        #[serde(tag = "type", rename_all = "snake_case")]
        enum Out<'a> {
            TurnStart {
                channel: &'a ChannelName,
                offset: u64,
                turn: &'a TurnId,
            },
            Token {
                channel: &'a ChannelName,
                offset: u64,
                turn: &'a TurnId,
                text: &'a str,
            },
            TurnEnd {
                channel: &'a ChannelName,
                offset: u64,
                turn: &'a TurnId,
            },
            TurnError {
                channel: &'a ChannelName,
                offset: u64,
                turn: &'a TurnId,
                reason: TurnFailure,
                #[serde(skip_serializing_if = "Option::is_none")]
                message: Option<&'a str>,
            },
            TurnSnapshot {
                channel: &'a ChannelName,
                offset: u64,
                turn: &'a TurnId,
                start_offset: u64,
                text_so_far: &'a str,
            },
            Turn {
                channel: &'a ChannelName,
                offset: u64,
                turn: &'a TurnId,
                start_offset: u64,
                text: &'a str,
                status: TurnStatus,
                #[serde(skip_serializing_if = "Option::is_none")]
                reason: Option<TurnFailure>,
                #[serde(skip_serializing_if = "Option::is_none")]
                message: Option<&'a str>,
            },
        }
        let out = match event {
            TurnEvent::Start { turn } => Out::TurnStart {
                channel,
                offset,
                turn,
            },
            TurnEvent::Token { turn, text } => Out::Token {
                channel,
                offset,
                turn,
                text,
            },
            TurnEvent::End { turn } => Out::TurnEnd {
                channel,
                offset,
                turn,
            },
            TurnEvent::Error {
                turn,
                reason,
                message,
            } => Out::TurnError {
                channel,
                offset,
                turn,
                reason,
                message,
            },
            TurnEvent::Snapshot {
                turn,
                start_offset,
                text,
            } => Out::TurnSnapshot {
                channel,
                offset,
                turn,
                start_offset,
                text_so_far: text,
            },
            TurnEvent::Finished {
                turn,
                start_offset,
                text,
                status,
                reason,
                message,
            } => Out::Turn {
                channel,
                offset,
                turn,
                start_offset,
                text,
                status,
                reason,
                message,
            },
        };
        let mut f = FrameBuf::with_capacity(96);
        // Writing borrowed strings and integers into a Vec cannot fail.
        let _ = serde_json::to_writer(f.payload_mut(), &out);
        Self::new(f.finish(OpCode::Text))
    }

    /// The bytes to write to a socket.
    pub fn wire(&self) -> &Bytes {
        &self.wire
    }

    /// The frame's payload (the JSON text for text frames), without copying.
    pub fn payload(&self) -> Bytes {
        self.wire.slice(self.header_len as usize..)
    }

    pub fn len(&self) -> usize {
        self.wire.len()
    }

    pub fn is_empty(&self) -> bool {
        self.wire.is_empty()
    }
}

/// A turn event as [`PreparedFrame::turn`] writes it.
#[derive(Clone, Copy, Debug)]
pub enum TurnEvent<'a> {
    Start {
        turn: &'a TurnId,
    },
    Token {
        turn: &'a TurnId,
        text: &'a str,
    },
    End {
        turn: &'a TurnId,
    },
    Error {
        turn: &'a TurnId,
        reason: TurnFailure,
        message: Option<&'a str>,
    },
    Snapshot {
        turn: &'a TurnId,
        start_offset: u64,
        text: &'a str,
    },
    Finished {
        turn: &'a TurnId,
        start_offset: u64,
        text: &'a str,
        status: TurnStatus,
        reason: Option<TurnFailure>,
        message: Option<&'a str>,
    },
}

/// How many bytes `text` takes as a JSON string body (escapes included, the
/// quotes not): what a turn's text costs in the frames that carry it.
pub fn json_escaped_len(text: &str) -> usize {
    text.bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum()
}

/// A close frame as a prepared frame.
pub fn close(code: u16, reason: &str) -> PreparedFrame {
    PreparedFrame::new(ws::close_frame(code, reason))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::ServerFrame;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn message_frame_matches_serde() {
        let ch = ChannelName::new("chat.42").unwrap();
        let p = PreparedFrame::message(&ch, 7, &raw(r#"{"text":"hi \"there\""}"#));
        let via_serde = ServerFrame::Message {
            channel: ch,
            offset: 7,
            data: raw(r#"{"text":"hi \"there\""}"#),
        }
        .to_json();
        assert_eq!(p.payload(), via_serde.as_bytes());
        assert_eq!(&p.wire()[..2], &[0x81, via_serde.len() as u8]);
    }

    #[test]
    fn escaped_length_matches_serde() {
        for text in [
            "plain",
            "a \"q\" \\ b",
            "tab\tnew\nline\r",
            "\u{1}\u{1f}\u{7f}",
            "é😀",
            "",
        ] {
            let json = serde_json::to_string(text).unwrap();
            assert_eq!(json_escaped_len(text), json.len() - 2, "{json}");
        }
    }

    #[test]
    fn long_frames_report_their_payload() {
        let ch = ChannelName::new("c").unwrap();
        let big = format!("\"{}\"", "x".repeat(70_000));
        let p = PreparedFrame::message(&ch, 1, &raw(&big));
        assert!(p.payload().starts_with(br#"{"type":"message""#));
        assert_eq!(p.len(), p.payload().len() + 10);
    }

    #[test]
    fn turn_frames_match_serde() {
        let ch = ChannelName::new("turns.c1").unwrap();
        let turn = TurnId::new("t1").unwrap();
        let cases = [
            (
                TurnEvent::Start { turn: &turn },
                ServerFrame::TurnStart {
                    channel: ch.clone(),
                    offset: 4,
                    turn: turn.clone(),
                },
            ),
            (
                TurnEvent::Token {
                    turn: &turn,
                    text: "a \"q\"\n",
                },
                ServerFrame::Token {
                    channel: ch.clone(),
                    offset: 4,
                    turn: turn.clone(),
                    text: "a \"q\"\n".into(),
                },
            ),
            (
                TurnEvent::End { turn: &turn },
                ServerFrame::TurnEnd {
                    channel: ch.clone(),
                    offset: 4,
                    turn: turn.clone(),
                },
            ),
            (
                TurnEvent::Error {
                    turn: &turn,
                    reason: TurnFailure::OperatorGone,
                    message: None,
                },
                ServerFrame::TurnError {
                    channel: ch.clone(),
                    offset: 4,
                    turn: turn.clone(),
                    reason: TurnFailure::OperatorGone,
                    message: None,
                },
            ),
            (
                TurnEvent::Snapshot {
                    turn: &turn,
                    start_offset: 2,
                    text: "so far",
                },
                ServerFrame::TurnSnapshot {
                    channel: ch.clone(),
                    offset: 4,
                    turn: turn.clone(),
                    start_offset: 2,
                    text_so_far: "so far".into(),
                },
            ),
            (
                TurnEvent::Finished {
                    turn: &turn,
                    start_offset: 2,
                    text: "all",
                    status: TurnStatus::Done,
                    reason: None,
                    message: None,
                },
                ServerFrame::Turn {
                    channel: ch.clone(),
                    offset: 4,
                    turn: turn.clone(),
                    start_offset: 2,
                    text: "all".into(),
                    status: TurnStatus::Done,
                    reason: None,
                    message: None,
                },
            ),
        ];
        for (event, frame) in cases {
            let prepared = PreparedFrame::turn(&ch, 4, event);
            assert_eq!(prepared.payload(), frame.to_json().as_bytes());
            let back = ServerFrame::decode(&prepared.payload()).unwrap();
            assert_eq!(back.to_json(), frame.to_json());
            assert_eq!(back.offset(), Some(4));
        }
    }
}
