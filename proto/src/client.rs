//! Frames a client sends on `/v1/ws`: JSON text frames with a `type` field.
//!
//! Decoding goes field by field so every refusal is precise ("subscribe:
//! channel: ...") and still carries the request `id` when one was readable,
//! letting the client match the error to its request.

use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::channel::ChannelName;
use crate::code::ErrorCode;
use crate::ids::{Epoch, RequestId, RoleName, Sid};

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Start receiving a channel's messages; with `since`, first replay what
    /// came after that offset.
    Subscribe {
        id: RequestId,
        channel: ChannelName,
        #[serde(flatten, skip_serializing_if = "Option::is_none")]
        recover: Option<Recover>,
    },
    Unsubscribe {
        id: RequestId,
        channel: ChannelName,
    },
    Publish {
        id: RequestId,
        channel: ChannelName,
        data: Box<RawValue>,
    },
    /// A frame for an operator session, addressed by role or sid. The
    /// operator may answer on `reply_to`, a channel the client can subscribe to.
    Send {
        id: RequestId,
        to: Target,
        #[serde(skip_serializing_if = "Option::is_none")]
        reply_to: Option<ChannelName>,
        data: Box<RawValue>,
    },
    Ping {
        id: RequestId,
    },
}

/// Where a resuming subscriber left off.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Recover {
    /// The last offset the client received (or the `offset` of its last ack).
    pub since: u64,
    /// The epoch the client's offsets belong to; without it the current one is assumed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<Epoch>,
}

/// The address of an operator session.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// Whichever live session of the org holds this role.
    Role(RoleName),
    /// One session by id.
    Op(Sid),
}

impl Target {
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(role) = s.strip_prefix("role:") {
            return RoleName::new(role).map(Target::Role).map_err(|e| e.to_string());
        }
        if let Some(sid) = s.strip_prefix("op:") {
            return Sid::new(sid).map(Target::Op).map_err(|e| e.to_string());
        }
        Err("must be \"role:<name>\" or \"op:<sid>\"".into())
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Target::Role(r) => write!(f, "role:{r}"),
            Target::Op(s) => write!(f, "op:{s}"),
        }
    }
}

/// Which operator addresses a client may `send` to: `role:<name>`,
/// `role:*`, `op:<sid>`, `op:*`, or `*` for any.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TargetPattern {
    Any,
    AnyRole,
    AnyOp,
    Exact(Target),
}

impl TargetPattern {
    pub fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "*" => TargetPattern::Any,
            "role:*" => TargetPattern::AnyRole,
            "op:*" => TargetPattern::AnyOp,
            _ => TargetPattern::Exact(Target::parse(s)?),
        })
    }

    pub fn matches(&self, target: &Target) -> bool {
        match self {
            TargetPattern::Any => true,
            TargetPattern::AnyRole => matches!(target, Target::Role(_)),
            TargetPattern::AnyOp => matches!(target, Target::Op(_)),
            TargetPattern::Exact(t) => t == target,
        }
    }
}

impl Serialize for TargetPattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            TargetPattern::Any => s.serialize_str("*"),
            TargetPattern::AnyRole => s.serialize_str("role:*"),
            TargetPattern::AnyOp => s.serialize_str("op:*"),
            TargetPattern::Exact(t) => t.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for TargetPattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        TargetPattern::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Target {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A refused client frame, ready to become an `error` frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError {
    pub id: Option<RequestId>,
    pub code: ErrorCode,
    pub message: String,
}

impl DecodeError {
    pub(crate) fn invalid(id: Option<RequestId>, message: impl Into<String>) -> Self {
        Self {
            id,
            code: ErrorCode::ValidationError,
            message: message.into(),
        }
    }
}

/// Every field any frame may carry, each left raw so a bad one can be named.
#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    channel: Option<&'a RawValue>,
    #[serde(borrow)]
    since: Option<&'a RawValue>,
    #[serde(borrow)]
    epoch: Option<&'a RawValue>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    to: Option<&'a RawValue>,
    #[serde(borrow)]
    reply_to: Option<&'a RawValue>,
}

#[derive(Clone, Copy)]
enum Kind {
    Subscribe,
    Unsubscribe,
    Publish,
    Send,
    Ping,
}

pub(crate) fn field<'a, T: Deserialize<'a>>(
    raw: Option<&'a RawValue>,
    name: &str,
) -> Result<Option<T>, String> {
    match raw {
        None => Ok(None),
        Some(r) if r.get() == "null" => Ok(None),
        Some(r) => serde_json::from_str(r.get())
            .map(Some)
            .map_err(|e| format!("{name}: {}", strip_position(&e.to_string()))),
    }
}

pub(crate) fn required<'a, T: Deserialize<'a>>(raw: Option<&'a RawValue>, name: &str) -> Result<T, String> {
    field(raw, name)?.ok_or_else(|| format!("missing field {name}"))
}

/// serde_json appends " at line 1 column 9" to messages; inside one field the
/// position is meaningless to the client.
fn strip_position(msg: &str) -> &str {
    msg.find(" at line ").map_or(msg, |i| &msg[..i])
}

/// Parses `payload` as a JSON object of raw fields `W`, and reads its `id`
/// and `type`, so each frame family decodes the rest field by field.
pub(crate) fn decode_head<'a, W: Deserialize<'a>>(
    payload: &'a [u8],
    id_of: impl Fn(&W) -> Option<&'a RawValue>,
    kind_of: impl Fn(&W) -> Option<&'a RawValue>,
) -> Result<(W, Option<RequestId>, std::borrow::Cow<'a, str>), DecodeError> {
    // A struct also deserializes from a JSON array; only objects are frames.
    if payload.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(DecodeError::invalid(None, "a frame must be a JSON object"));
    }
    let wire: W = serde_json::from_slice(payload)
        .map_err(|e| DecodeError::invalid(None, format!("malformed JSON: {e}")))?;
    let id: Option<RequestId> = field(id_of(&wire), "id").map_err(|m| DecodeError::invalid(None, m))?;
    match field(kind_of(&wire), "type") {
        Ok(Some(kind)) => Ok((wire, id, kind)),
        Ok(None) => Err(DecodeError::invalid(id, "missing field type")),
        Err(m) => Err(DecodeError::invalid(id, m)),
    }
}

impl ClientFrame {
    /// Decodes one text frame's payload.
    pub fn decode(payload: &[u8]) -> Result<ClientFrame, DecodeError> {
        let (wire, id, kind) = decode_head::<Wire>(payload, |w| w.id, |w| w.kind)?;
        let kind = match &*kind {
            "subscribe" => Kind::Subscribe,
            "unsubscribe" => Kind::Unsubscribe,
            "publish" => Kind::Publish,
            "send" => Kind::Send,
            "ping" => Kind::Ping,
            k => return Err(DecodeError::invalid(id, format!("unknown frame type {k:?}"))),
        };
        let Some(id) = id else {
            return Err(DecodeError::invalid(None, "missing field id"));
        };
        Self::decode_kind(kind, id.clone(), &wire).map_err(|m| DecodeError::invalid(Some(id), m))
    }

    fn decode_kind(kind: Kind, id: RequestId, w: &Wire) -> Result<ClientFrame, String> {
        Ok(match kind {
            Kind::Subscribe => {
                let since: Option<u64> = field(w.since, "since")?;
                let epoch: Option<Epoch> = field(w.epoch, "epoch")?;
                if since.is_none() && epoch.is_some() {
                    return Err("epoch needs since".into());
                }
                ClientFrame::Subscribe {
                    id,
                    channel: required(w.channel, "channel")?,
                    recover: since.map(|since| Recover { since, epoch }),
                }
            }
            Kind::Unsubscribe => ClientFrame::Unsubscribe {
                id,
                channel: required(w.channel, "channel")?,
            },
            Kind::Publish => ClientFrame::Publish {
                id,
                channel: required(w.channel, "channel")?,
                data: required_data(w.data)?,
            },
            Kind::Send => {
                let to: String = required(w.to, "to")?;
                ClientFrame::Send {
                    id,
                    to: Target::parse(&to).map_err(|m| format!("to: {m}"))?,
                    reply_to: field(w.reply_to, "reply_to")?,
                    data: required_data(w.data)?,
                }
            }
            Kind::Ping => ClientFrame::Ping { id },
        })
    }

    /// The JSON text of this frame.
    pub fn encode(&self) -> String {
        // Serializing owned, validated data into a String cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

pub(crate) fn required_data(raw: Option<&RawValue>) -> Result<Box<RawValue>, String> {
    match raw {
        Some(r) if r.get() != "null" => Ok(r.to_owned()),
        _ => Err("missing field data".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode(s: &str) -> Result<ClientFrame, DecodeError> {
        ClientFrame::decode(s.as_bytes())
    }

    fn err(s: &str) -> DecodeError {
        decode(s).unwrap_err()
    }

    #[test]
    fn decodes_every_frame() {
        match decode(r#"{"type":"subscribe","id":1,"channel":"chat.1","since":5,"epoch":"e1"}"#) {
            Ok(ClientFrame::Subscribe { id, channel, recover }) => {
                assert_eq!(id, RequestId::Num(1));
                assert_eq!(channel.as_str(), "chat.1");
                assert_eq!(
                    recover,
                    Some(Recover {
                        since: 5,
                        epoch: Some(Epoch::new("e1"))
                    })
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decode(r#"{"type":"subscribe","id":"a","channel":"c"}"#),
            Ok(ClientFrame::Subscribe { recover: None, .. })
        ));
        assert!(matches!(
            decode(r#"{"type":"unsubscribe","id":2,"channel":"c"}"#),
            Ok(ClientFrame::Unsubscribe { .. })
        ));
        match decode(r#"{"type":"publish","id":3,"channel":"c","data":{"k":[1,2]}}"#) {
            Ok(ClientFrame::Publish { data, .. }) => assert_eq!(data.get(), r#"{"k":[1,2]}"#),
            other => panic!("{other:?}"),
        }
        match decode(r#"{"type":"send","id":4,"to":"role:main-ai","data":"hi"}"#) {
            Ok(ClientFrame::Send { to, .. }) => {
                assert_eq!(to, Target::Role(RoleName::new("main-ai").unwrap()))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decode(r#"{"type":"ping","id":5}"#),
            Ok(ClientFrame::Ping { .. })
        ));
        // Unknown fields are ignored, for forward compatibility.
        assert!(decode(r#"{"type":"ping","id":5,"extra":true}"#).is_ok());
    }

    #[test]
    fn target_patterns() {
        let role = Target::parse("role:main-ai").unwrap();
        let op = Target::parse("op:op-0b3c6f1e-2a4d-4c8e-9f00-1234567890ab").unwrap();
        let p = |s: &str| TargetPattern::parse(s).unwrap();
        assert!(p("*").matches(&role) && p("*").matches(&op));
        assert!(p("role:*").matches(&role) && !p("role:*").matches(&op));
        assert!(p("op:*").matches(&op) && !p("op:*").matches(&role));
        assert!(p("role:main-ai").matches(&role) && !p("role:other").matches(&role));
        assert!(TargetPattern::parse("role:").is_err());
        assert!(TargetPattern::parse("main-ai").is_err());
    }

    #[test]
    fn refusals_are_precise_and_keep_the_id() {
        let e = err("{not json");
        assert_eq!(e.code, ErrorCode::ValidationError);
        assert!(e.message.starts_with("malformed JSON"), "{}", e.message);
        assert_eq!(err("[1,2]").message, "a frame must be a JSON object");
        assert_eq!(err(r#"{"id":1}"#).message, "missing field type");
        assert_eq!(err(r#"{"id":1}"#).id, Some(RequestId::Num(1)));
        let e = err(r#"{"type":"dance","id":7}"#);
        assert_eq!(
            (e.id, e.message.as_str()),
            (Some(RequestId::Num(7)), "unknown frame type \"dance\"")
        );
        assert_eq!(err(r#"{"type":"ping"}"#).message, "missing field id");
        let e = err(r#"{"type":"subscribe","id":1,"channel":"a b"}"#);
        assert!(
            e.message.starts_with("channel: channel may only contain"),
            "{}",
            e.message
        );
        assert_eq!(e.id, Some(RequestId::Num(1)));
        assert!(
            err(r#"{"type":"subscribe","id":1,"channel":"chat.*"}"#)
                .message
                .starts_with("channel:")
        );
        assert!(
            err(r#"{"type":"subscribe","id":1,"channel":5}"#)
                .message
                .starts_with("channel: invalid type")
        );
        assert_eq!(
            err(r#"{"type":"subscribe","id":1}"#).message,
            "missing field channel"
        );
        assert!(
            err(r#"{"type":"subscribe","id":1,"channel":"c","since":-1}"#)
                .message
                .starts_with("since:")
        );
        assert_eq!(
            err(r#"{"type":"subscribe","id":1,"channel":"c","epoch":"e"}"#).message,
            "epoch needs since"
        );
        assert_eq!(
            err(r#"{"type":"publish","id":1,"channel":"c"}"#).message,
            "missing field data"
        );
        assert_eq!(
            err(r#"{"type":"publish","id":1,"channel":"c","data":null}"#).message,
            "missing field data"
        );
        assert!(
            err(r#"{"type":"send","id":1,"to":"main-ai","data":1}"#)
                .message
                .starts_with("to: must be")
        );
        assert!(
            err(r#"{"type":"send","id":1,"to":"op:x","data":1}"#)
                .message
                .starts_with("to: sid")
        );
        assert!(err(r#"{"type":"ping","id":-3}"#).message.starts_with("id:"));
        assert!(
            err(r#"{"type":"ping","id":1,"id":2}"#)
                .message
                .contains("duplicate field")
        );
        assert!(err(r#"{"type":7,"id":1}"#).message.starts_with("type:"));
    }

    fn channel() -> impl Strategy<Value = ChannelName> {
        "[a-z0-9_-]{1,8}(\\.[a-z0-9_:@=~-]{1,8}){0,3}".prop_map(|s| ChannelName::new(&s).unwrap())
    }

    fn request_id() -> impl Strategy<Value = RequestId> {
        prop_oneof![
            any::<u64>().prop_map(RequestId::Num),
            "[ -~]{0,64}".prop_map(|s| RequestId::Str(s.into())),
        ]
    }

    fn data() -> impl Strategy<Value = Box<RawValue>> {
        let leaf = prop_oneof![
            any::<i64>().prop_map(serde_json::Value::from),
            any::<bool>().prop_map(serde_json::Value::from),
            ".{0,20}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                proptest::collection::btree_map("[a-z]{1,5}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
        .prop_map(|v| RawValue::from_string(v.to_string()).unwrap())
    }

    pub(crate) fn client_frame() -> impl Strategy<Value = ClientFrame> {
        prop_oneof![
            (
                request_id(),
                channel(),
                proptest::option::of((any::<u64>(), proptest::option::of("[a-z0-9]{1,12}")))
            )
                .prop_map(|(id, channel, r)| ClientFrame::Subscribe {
                    id,
                    channel,
                    recover: r.map(|(since, e)| Recover {
                        since,
                        epoch: e.map(Epoch::new)
                    }),
                }),
            (request_id(), channel()).prop_map(|(id, channel)| ClientFrame::Unsubscribe { id, channel }),
            (request_id(), channel(), data()).prop_map(|(id, channel, data)| ClientFrame::Publish {
                id,
                channel,
                data
            }),
            (
                request_id(),
                "[a-z-]{1,10}",
                proptest::option::of(channel()),
                data()
            )
                .prop_map(|(id, r, reply_to, data)| ClientFrame::Send {
                    id,
                    to: Target::Role(RoleName::new(&r).unwrap()),
                    reply_to,
                    data,
                }),
            request_id().prop_map(|id| ClientFrame::Ping { id }),
        ]
    }

    proptest! {
        #[test]
        fn every_frame_round_trips(frame in client_frame()) {
            let text = frame.encode();
            let back = ClientFrame::decode(text.as_bytes()).unwrap();
            prop_assert_eq!(back.encode(), text);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = ClientFrame::decode(&bytes);
        }

        #[test]
        fn truncated_frames_are_refused(frame in client_frame(), cut in 0usize..1000) {
            let text = frame.encode();
            let cut = cut % text.len();
            prop_assert!(ClientFrame::decode(&text.as_bytes()[..cut]).is_err());
        }
    }
}
