//! Frames an operator (an agent runtime or an operator console) sends on
//! `/v1/operators/:sid/ws`: turn events it streams to a channel, plain
//! publishes, pings. What it receives is in [`crate::server`] (`frame`,
//! `gap`, acks and errors).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::channel::ChannelName;
use crate::client::{DecodeError, decode_head, field, required, required_data};
use crate::ids::{RequestId, TurnId};

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OperatorFrame {
    /// Opens a turn on a channel; `rollup_ms` overrides the channel's token
    /// rollup window for this turn (0 = every token its own frame).
    TurnStart {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        turn: TurnId,
        channel: ChannelName,
        #[serde(skip_serializing_if = "Option::is_none")]
        rollup_ms: Option<u32>,
    },
    /// Appends text to a live turn. No reply unless it is refused.
    Token {
        turn: TurnId,
        text: String,
    },
    TurnEnd {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        turn: TurnId,
    },
    TurnError {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        turn: TurnId,
        #[serde(skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    Publish {
        id: RequestId,
        channel: ChannelName,
        data: Box<RawValue>,
    },
    Ping {
        id: RequestId,
    },
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    turn: Option<&'a RawValue>,
    #[serde(borrow)]
    channel: Option<&'a RawValue>,
    #[serde(borrow)]
    text: Option<&'a RawValue>,
    #[serde(borrow)]
    message: Option<&'a RawValue>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    rollup_ms: Option<&'a RawValue>,
}

impl OperatorFrame {
    pub fn decode(payload: &[u8]) -> Result<OperatorFrame, DecodeError> {
        let (w, id, kind) = decode_head::<Wire>(payload, |w| w.id, |w| w.kind)?;
        let invalid = |m: String| DecodeError::invalid(id.clone(), m);
        let turn = || required::<TurnId>(w.turn, "turn");
        let frame = match &*kind {
            "turn_start" => OperatorFrame::TurnStart {
                id: id.clone(),
                turn: turn().map_err(invalid)?,
                channel: required(w.channel, "channel").map_err(invalid)?,
                rollup_ms: field(w.rollup_ms, "rollup_ms").map_err(invalid)?,
            },
            "token" => OperatorFrame::Token {
                turn: turn().map_err(invalid)?,
                text: required(w.text, "text").map_err(invalid)?,
            },
            "turn_end" => OperatorFrame::TurnEnd {
                id: id.clone(),
                turn: turn().map_err(invalid)?,
            },
            "turn_error" => OperatorFrame::TurnError {
                id: id.clone(),
                turn: turn().map_err(invalid)?,
                message: field(w.message, "message").map_err(invalid)?,
            },
            "publish" | "ping" => {
                let Some(req) = id.clone() else {
                    return Err(DecodeError::invalid(None, "missing field id"));
                };
                if &*kind == "ping" {
                    OperatorFrame::Ping { id: req }
                } else {
                    OperatorFrame::Publish {
                        id: req,
                        channel: required(w.channel, "channel").map_err(invalid)?,
                        data: required_data(w.data).map_err(invalid)?,
                    }
                }
            }
            k => return Err(invalid(format!("unknown frame type {k:?}"))),
        };
        Ok(frame)
    }

    pub fn encode(&self) -> String {
        // Owned, validated data serializes into a String without failing.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_and_refuses() {
        let ok = [
            r#"{"type":"turn_start","id":1,"turn":"t1","channel":"turns.c1","rollup_ms":40}"#,
            r#"{"type":"token","turn":"t1","text":"Hel\"lo"}"#,
            r#"{"type":"turn_end","turn":"t1"}"#,
            r#"{"type":"turn_error","id":"x","turn":"t1","message":"model crashed"}"#,
            r#"{"type":"publish","id":2,"channel":"c","data":{"a":1}}"#,
            r#"{"type":"ping","id":3}"#,
        ];
        for text in ok {
            let frame = OperatorFrame::decode(text.as_bytes()).unwrap();
            let again = OperatorFrame::decode(frame.encode().as_bytes()).unwrap();
            assert_eq!(again.encode(), frame.encode());
        }
        let bad = [
            (r#"{"type":"token","text":"x"}"#, "missing field turn"),
            (r#"{"type":"token","turn":"t1"}"#, "missing field text"),
            (r#"{"type":"turn_start","turn":"t 1","channel":"c"}"#, "turn:"),
            (r#"{"type":"turn_start","turn":"t1"}"#, "missing field channel"),
            (r#"{"type":"publish","channel":"c","data":1}"#, "missing field id"),
            (r#"{"type":"subscribe","id":1}"#, "unknown frame type"),
            (
                r#"{"type":"turn_start","turn":"t1","channel":"c","rollup_ms":-5}"#,
                "rollup_ms:",
            ),
        ];
        for (text, want) in bad {
            let e = OperatorFrame::decode(text.as_bytes()).unwrap_err();
            assert!(e.message.starts_with(want), "{text}: {}", e.message);
        }
    }

    proptest! {
        #[test]
        fn tokens_round_trip(text in ".{0,40}") {
            let frame = OperatorFrame::Token { turn: TurnId::new("t").unwrap(), text: text.clone() };
            match OperatorFrame::decode(frame.encode().as_bytes()).unwrap() {
                OperatorFrame::Token { text: back, .. } => prop_assert_eq!(back, text),
                other => prop_assert!(false, "{:?}", other),
            }
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = OperatorFrame::decode(&bytes);
        }
    }
}
