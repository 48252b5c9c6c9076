//! Frames the server sends: to clients on `/v1/ws` (acks, errors, channel
//! messages and turn events) and to operators (client frames, gaps). How
//! they become bytes on a socket is in [`crate::prepared`].

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::channel::ChannelName;
use crate::code::ErrorCode;
use crate::ids::{ConnId, Epoch, RequestId, Subject, TurnId};
use crate::prepared::PreparedFrame;
use crate::ws::{FrameBuf, OpCode};

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Ack(Ack),
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        code: ErrorCode,
        message: String,
    },
    Message {
        channel: ChannelName,
        offset: u64,
        data: Box<RawValue>,
    },
    Pong {
        id: RequestId,
    },
    /// A turn opened on the channel.
    TurnStart {
        channel: ChannelName,
        offset: u64,
        turn: TurnId,
    },
    /// Text appended to a live turn (one token, or several rolled up).
    Token {
        channel: ChannelName,
        offset: u64,
        turn: TurnId,
        text: String,
    },
    TurnEnd {
        channel: ChannelName,
        offset: u64,
        turn: TurnId,
    },
    /// The turn failed: the operator said so (with `message`), or its
    /// session vanished.
    TurnError {
        channel: ChannelName,
        offset: u64,
        turn: TurnId,
        reason: TurnFailure,
        #[serde(skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    /// A live turn's text so far, replacing its tokens up to `offset` for a
    /// client that joined or resumed mid-turn. Set the text; then append.
    TurnSnapshot {
        channel: ChannelName,
        offset: u64,
        turn: TurnId,
        start_offset: u64,
        text_so_far: String,
    },
    /// A finished turn as history keeps it: one message with the whole text.
    Turn {
        channel: ChannelName,
        offset: u64,
        turn: TurnId,
        start_offset: u64,
        text: String,
        status: TurnStatus,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<TurnFailure>,
        #[serde(skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    /// To an operator: a client's `send`.
    Frame {
        from: From,
        #[serde(skip_serializing_if = "Option::is_none")]
        reply_to: Option<ChannelName>,
        data: Box<RawValue>,
    },
    /// To an operator: `dropped` frames for it were refused while it was away
    /// (its buffer was full); their senders were told.
    Gap {
        dropped: u64,
    },
}

/// Who sent a frame to an operator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct From {
    pub conn: ConnId,
    pub sub: Subject,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TurnStatus {
    Done,
    Error,
}

/// Why a turn failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TurnFailure {
    /// The operator ended it with `turn_error` (its `message` says why).
    Operator,
    /// The operator's session ended, or its socket stayed away past the grace period.
    OperatorGone,
}

impl TurnFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            TurnFailure::Operator => "operator",
            TurnFailure::OperatorGone => "operator_gone",
        }
    }
}

/// The reply to a request. Which fields are set depends on the request:
/// `subscribe` sets `channel`, `epoch`, `offset` (the channel's position the
/// live stream continues from) and, when it asked to recover, `recovered`;
/// `publish` sets `offset`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Ack {
    pub id: RequestId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<ChannelName>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<Epoch>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
}

impl Ack {
    pub fn new(id: RequestId) -> Self {
        Self {
            id,
            channel: None,
            offset: None,
            epoch: None,
            recovered: None,
        }
    }
}

impl ServerFrame {
    pub fn error(id: Option<RequestId>, code: ErrorCode, message: impl Into<String>) -> Self {
        ServerFrame::Error {
            id,
            code,
            message: message.into(),
        }
    }

    /// The JSON text of this frame.
    pub fn to_json(&self) -> String {
        // Every field is validated, owned data: serializing to a String cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// This frame as a complete WebSocket text frame.
    pub fn prepare(&self) -> PreparedFrame {
        let mut f = FrameBuf::with_capacity(64);
        // Writing into a Vec cannot fail; see `to_json`.
        let _ = serde_json::to_writer(f.payload_mut(), self);
        PreparedFrame::new(f.finish(OpCode::Text))
    }

    /// The channel offset this frame carries, if it is part of a channel's stream.
    pub fn offset(&self) -> Option<u64> {
        match self {
            ServerFrame::Message { offset, .. }
            | ServerFrame::TurnStart { offset, .. }
            | ServerFrame::Token { offset, .. }
            | ServerFrame::TurnEnd { offset, .. }
            | ServerFrame::TurnError { offset, .. }
            | ServerFrame::TurnSnapshot { offset, .. }
            | ServerFrame::Turn { offset, .. } => Some(*offset),
            _ => None,
        }
    }

    /// Decodes a frame as a client receives it (tests, load generator, SDKs).
    pub fn decode(payload: &[u8]) -> Result<ServerFrame, serde_json::Error> {
        #[derive(Deserialize)]
        struct Wire<'a> {
            #[serde(rename = "type")]
            kind: std::borrow::Cow<'a, str>,
            id: Option<RequestId>,
            channel: Option<ChannelName>,
            offset: Option<u64>,
            epoch: Option<Epoch>,
            recovered: Option<bool>,
            code: Option<ErrorCode>,
            message: Option<String>,
            #[serde(borrow)]
            data: Option<&'a RawValue>,
            turn: Option<TurnId>,
            text: Option<String>,
            text_so_far: Option<String>,
            start_offset: Option<u64>,
            reason: Option<TurnFailure>,
            status: Option<TurnStatus>,
            from: Option<From>,
            reply_to: Option<ChannelName>,
            dropped: Option<u64>,
        }
        use serde::de::Error;
        let w: Wire = serde_json::from_slice(payload)?;
        let missing = |f: &'static str| serde_json::Error::missing_field(f);
        Ok(match &*w.kind {
            "ack" => ServerFrame::Ack(Ack {
                id: w.id.ok_or_else(|| missing("id"))?,
                channel: w.channel,
                offset: w.offset,
                epoch: w.epoch,
                recovered: w.recovered,
            }),
            "error" => ServerFrame::Error {
                id: w.id,
                code: w.code.ok_or_else(|| missing("code"))?,
                message: w.message.ok_or_else(|| missing("message"))?,
            },
            "message" => ServerFrame::Message {
                channel: w.channel.ok_or_else(|| missing("channel"))?,
                offset: w.offset.ok_or_else(|| missing("offset"))?,
                data: w.data.ok_or_else(|| missing("data"))?.to_owned(),
            },
            "pong" => ServerFrame::Pong {
                id: w.id.ok_or_else(|| missing("id"))?,
            },
            "turn_start" => ServerFrame::TurnStart {
                channel: w.channel.ok_or_else(|| missing("channel"))?,
                offset: w.offset.ok_or_else(|| missing("offset"))?,
                turn: w.turn.ok_or_else(|| missing("turn"))?,
            },
            "token" => ServerFrame::Token {
                channel: w.channel.ok_or_else(|| missing("channel"))?,
                offset: w.offset.ok_or_else(|| missing("offset"))?,
                turn: w.turn.ok_or_else(|| missing("turn"))?,
                text: w.text.ok_or_else(|| missing("text"))?,
            },
            "turn_end" => ServerFrame::TurnEnd {
                channel: w.channel.ok_or_else(|| missing("channel"))?,
                offset: w.offset.ok_or_else(|| missing("offset"))?,
                turn: w.turn.ok_or_else(|| missing("turn"))?,
            },
            "turn_error" => ServerFrame::TurnError {
                channel: w.channel.ok_or_else(|| missing("channel"))?,
                offset: w.offset.ok_or_else(|| missing("offset"))?,
                turn: w.turn.ok_or_else(|| missing("turn"))?,
                reason: w.reason.ok_or_else(|| missing("reason"))?,
                message: w.message,
            },
            "turn_snapshot" => ServerFrame::TurnSnapshot {
                channel: w.channel.ok_or_else(|| missing("channel"))?,
                offset: w.offset.ok_or_else(|| missing("offset"))?,
                turn: w.turn.ok_or_else(|| missing("turn"))?,
                start_offset: w.start_offset.ok_or_else(|| missing("start_offset"))?,
                text_so_far: w.text_so_far.ok_or_else(|| missing("text_so_far"))?,
            },
            "turn" => ServerFrame::Turn {
                channel: w.channel.ok_or_else(|| missing("channel"))?,
                offset: w.offset.ok_or_else(|| missing("offset"))?,
                turn: w.turn.ok_or_else(|| missing("turn"))?,
                start_offset: w.start_offset.ok_or_else(|| missing("start_offset"))?,
                text: w.text.ok_or_else(|| missing("text"))?,
                status: w.status.ok_or_else(|| missing("status"))?,
                reason: w.reason,
                message: w.message,
            },
            "frame" => ServerFrame::Frame {
                from: w.from.ok_or_else(|| missing("from"))?,
                reply_to: w.reply_to,
                data: w.data.ok_or_else(|| missing("data"))?.to_owned(),
            },
            "gap" => ServerFrame::Gap {
                dropped: w.dropped.ok_or_else(|| missing("dropped"))?,
            },
            other => return Err(serde_json::Error::custom(format!("unknown frame type {other:?}"))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn golden_frames() {
        let ack = ServerFrame::Ack(Ack {
            channel: Some(ChannelName::new("chat.1").unwrap()),
            offset: Some(3),
            epoch: Some(Epoch::new("e1")),
            recovered: Some(true),
            ..Ack::new(RequestId::Num(1))
        });
        assert_eq!(
            ack.to_json(),
            r#"{"type":"ack","id":1,"channel":"chat.1","offset":3,"epoch":"e1","recovered":true}"#
        );
        assert_eq!(
            ServerFrame::error(None, ErrorCode::ValidationError, "bad").to_json(),
            r#"{"type":"error","code":"VALIDATION_ERROR","message":"bad"}"#
        );
        assert_eq!(
            ServerFrame::Pong {
                id: RequestId::Str("p".into())
            }
            .to_json(),
            r#"{"type":"pong","id":"p"}"#
        );
    }

    fn frames() -> impl Strategy<Value = ServerFrame> {
        let id = prop_oneof![
            any::<u64>().prop_map(RequestId::Num),
            "[a-z]{0,10}".prop_map(|s| RequestId::Str(s.into()))
        ];
        prop_oneof![
            (id.clone(), any::<Option<u64>>(), any::<Option<bool>>()).prop_map(|(id, offset, recovered)| {
                ServerFrame::Ack(Ack {
                    offset,
                    recovered,
                    channel: Some(ChannelName::new("a.b").unwrap()),
                    epoch: Some(Epoch::new("x")),
                    ..Ack::new(id)
                })
            }),
            (proptest::option::of(id.clone()), ".{0,40}").prop_map(|(id, m)| ServerFrame::error(
                id,
                ErrorCode::Forbidden,
                m
            )),
            (any::<u64>(), ".{0,40}").prop_map(|(offset, text)| ServerFrame::Message {
                channel: ChannelName::new("c.d").unwrap(),
                offset,
                data: raw(&serde_json::Value::from(text).to_string()),
            }),
            id.prop_map(|id| ServerFrame::Pong { id }),
        ]
    }

    #[test]
    fn operator_frames_round_trip() {
        let frame = ServerFrame::Frame {
            from: From {
                conn: ConnId(7),
                sub: Subject::new("alice").unwrap(),
            },
            reply_to: Some(ChannelName::new("chat.1").unwrap()),
            data: raw(r#"{"text":"hi"}"#),
        };
        assert_eq!(
            frame.to_json(),
            r#"{"type":"frame","from":{"conn":7,"sub":"alice"},"reply_to":"chat.1","data":{"text":"hi"}}"#
        );
        assert_eq!(
            ServerFrame::decode(frame.to_json().as_bytes()).unwrap().to_json(),
            frame.to_json()
        );
        let gap = ServerFrame::Gap { dropped: 3 };
        assert_eq!(
            ServerFrame::decode(gap.to_json().as_bytes()).unwrap().to_json(),
            r#"{"type":"gap","dropped":3}"#
        );
    }

    proptest! {
        #[test]
        fn every_frame_round_trips(frame in frames()) {
            let json = frame.to_json();
            let back = ServerFrame::decode(json.as_bytes()).unwrap();
            prop_assert_eq!(back.to_json(), json.clone());
            prop_assert_eq!(frame.prepare().payload(), json.as_bytes());
        }
    }
}
