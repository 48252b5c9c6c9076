//! Turns across pods (cluster mode). A live turn's events are stream
//! messages on the turn's own subject ([`subjects::turn`]): its start, its
//! tokens, and after every [`CHECKPOINT_EVERY`]th token a checkpoint of the
//! text so far that rolls the subject up, so the subject never holds more
//! than about that many messages and a snapshot is one short read. The end
//! is one message on the channel's own subject carrying the whole text (what
//! history keeps: one compacted `turn`), after which the turn's subject is
//! purged. Every pod turns these into the frames the in-process backplane
//! makes, so a joiner or a resumer on any pod sees the same turn.

use async_nats::HeaderMap;
use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use switchboard_proto::subjects::Part;
use switchboard_proto::{ChannelName, PreparedFrame, TurnEvent, TurnFailure, TurnId, TurnStatus};

use super::stream::Stored;

/// What a stored message is (absent on plain messages, which publishers
/// and pods store as their bare JSON).
const KIND: &str = "Sb-Kind";
/// A checkpoint's turn start offset.
const START_OFFSET: &str = "Sb-Start";
/// Rolls a subject up to the message that carries it (JetStream).
const ROLLUP: &str = "Nats-Rollup";

/// Tokens between checkpoints: few enough that a snapshot is one short
/// read, many enough that checkpoints (the whole text each) stay cheap.
pub const CHECKPOINT_EVERY: usize = 64;

/// A finished turn as the channel's history keeps it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Finished {
    pub turn: TurnId,
    pub start_offset: u64,
    pub text: String,
    pub status: TurnStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<TurnFailure>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

fn kind(m: &Stored) -> Option<&str> {
    m.headers.as_ref()?.get(KIND).map(|v| v.as_str())
}

fn text(m: &Stored) -> Option<&str> {
    std::str::from_utf8(&m.payload).ok()
}

/// A stored message to be: what a pod publishes for a turn event.
pub struct Outgoing {
    pub headers: HeaderMap,
    pub payload: Bytes,
    /// Only if its subject's newest offset is this one: 0 for a start (a
    /// turn id is live once at a time), the turn's last event for the rest
    /// (a pod whose view is stale, because another pod streamed on or ended
    /// the turn, is refused and reads it back).
    pub after: Option<u64>,
}

impl Outgoing {
    fn new(kind: &str, payload: Bytes) -> Outgoing {
        let mut headers = HeaderMap::new();
        headers.insert(KIND, kind);
        Outgoing {
            headers,
            payload,
            after: None,
        }
    }

    /// Expects the subject's newest offset to be `last`.
    pub fn after(mut self, last: u64) -> Outgoing {
        self.after = Some(last);
        self
    }

    pub fn into_message(self) -> PublishMessage {
        let message = PublishMessage::build()
            .headers(self.headers)
            .payload(self.payload);
        match self.after {
            Some(last) => message.expected_last_subject_sequence(last),
            None => message,
        }
    }

    /// As the stream hands it back at `offset`.
    pub fn stored(self, offset: u64) -> Stored {
        Stored {
            offset,
            headers: Some(self.headers),
            payload: self.payload,
        }
    }
}

pub fn start() -> Outgoing {
    Outgoing::new("start", Bytes::new()).after(0)
}

pub fn token(text: &str) -> Outgoing {
    Outgoing::new("token", Bytes::copy_from_slice(text.as_bytes()))
}

/// The text so far, replacing everything the turn's subject held before.
pub fn checkpoint(start_offset: u64, text: &str) -> Outgoing {
    let mut out = Outgoing::new("checkpoint", Bytes::copy_from_slice(text.as_bytes()));
    out.headers
        .insert(START_OFFSET, start_offset.to_string().as_str());
    out.headers.insert(ROLLUP, "sub");
    out
}

pub fn finished(turn: &Finished) -> Result<Outgoing, serde_json::Error> {
    Ok(Outgoing::new("turn", serde_json::to_vec(turn)?.into()))
}

fn decode_finished(m: &Stored) -> Option<Finished> {
    (kind(m) == Some("turn"))
        .then(|| serde_json::from_slice(&m.payload).ok())
        .flatten()
}

/// The frame of a channel-subject message as history replays it: a plain
/// message, or a finished turn compacted to one `turn`. `None` for what no
/// pod would have stored (a bug or tampering).
pub fn history_frame(channel: &ChannelName, m: &Stored) -> Option<PreparedFrame> {
    if kind(m).is_none() {
        // Borrowed: no copy of the payload per delivered message.
        let data: &RawValue = serde_json::from_slice(&m.payload).ok()?;
        return Some(PreparedFrame::message(channel, m.offset, data));
    }
    let f = decode_finished(m)?;
    let event = TurnEvent::Finished {
        turn: &f.turn,
        start_offset: f.start_offset,
        text: &f.text,
        status: f.status,
        reason: f.reason,
        message: f.message.as_deref(),
    };
    Some(PreparedFrame::turn(channel, m.offset, event))
}

/// The frame live subscribers get for a stored message, and the turn it
/// finished, if it did (its subject's ordering state can go). Checkpoints
/// carry nothing new: `None`.
pub fn live_frame(channel: &ChannelName, part: &Part, m: &Stored) -> (Option<PreparedFrame>, Option<TurnId>) {
    match part {
        Part::Messages => match decode_finished(m) {
            None => (history_frame(channel, m), None),
            Some(f) => {
                let event = match f.status {
                    TurnStatus::Done => TurnEvent::End { turn: &f.turn },
                    TurnStatus::Error => TurnEvent::Error {
                        turn: &f.turn,
                        reason: f.reason.unwrap_or(TurnFailure::Operator),
                        message: f.message.as_deref(),
                    },
                };
                (
                    Some(PreparedFrame::turn(channel, m.offset, event)),
                    Some(f.turn.clone()),
                )
            }
        },
        Part::Turn(turn) => {
            let frame = match kind(m) {
                Some("start") => Some(PreparedFrame::turn(channel, m.offset, TurnEvent::Start { turn })),
                Some("token") => text(m)
                    .map(|text| PreparedFrame::turn(channel, m.offset, TurnEvent::Token { turn, text })),
                _ => None,
            };
            (frame, None)
        }
    }
}

/// A live turn as its subject's messages tell it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Folded {
    pub start_offset: u64,
    /// The offset of its newest event: where its snapshot sits.
    pub last_offset: u64,
    pub text: String,
    /// Tokens since the last checkpoint.
    pub tokens: usize,
}

/// Folds a turn subject's messages (oldest first) into the turn so far;
/// `None` if they do not begin with its start or a checkpoint (nothing
/// stored, or the start aged out).
pub fn fold(messages: &[Stored]) -> Option<Folded> {
    let (first, rest) = messages.split_first()?;
    let mut turn = match kind(first)? {
        "start" => Folded::default(),
        "checkpoint" => Folded {
            start_offset: first.headers.as_ref()?.get(START_OFFSET)?.as_str().parse().ok()?,
            text: text(first)?.to_owned(),
            ..Folded::default()
        },
        _ => return None,
    };
    if kind(first) == Some("start") {
        turn.start_offset = first.offset;
    }
    turn.last_offset = first.offset;
    for m in rest {
        if kind(m) == Some("token") {
            turn.text.push_str(text(m)?);
            turn.tokens += 1;
        }
        turn.last_offset = m.offset;
    }
    Some(turn)
}

/// The snapshot a joiner gets of a live turn.
pub fn snapshot(channel: &ChannelName, turn: &TurnId, folded: &Folded) -> PreparedFrame {
    let event = TurnEvent::Snapshot {
        turn,
        start_offset: folded.start_offset,
        text: &folded.text,
    };
    PreparedFrame::turn(channel, folded.last_offset, event)
}

/// Which turns `messages` (channel-subject messages) finished.
pub fn finished_turns(messages: &[Stored]) -> impl Iterator<Item = TurnId> + '_ {
    messages.iter().filter_map(|m| decode_finished(m).map(|f| f.turn))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(offset: u64, out: Outgoing) -> Stored {
        out.stored(offset)
    }

    #[test]
    fn a_turn_folds_from_its_start_or_its_last_checkpoint() {
        let started = [
            stored(3, start()),
            stored(5, token("Hel")),
            stored(8, token("lo")),
        ];
        let f = fold(&started).unwrap();
        assert_eq!(
            (f.start_offset, f.last_offset, f.text.as_str(), f.tokens),
            (3, 8, "Hello", 2)
        );
        let rolled = [stored(20, checkpoint(3, "Hello, wor")), stored(21, token("ld"))];
        let f = fold(&rolled).unwrap();
        assert_eq!(
            (f.start_offset, f.last_offset, f.text.as_str(), f.tokens),
            (3, 21, "Hello, world", 1)
        );
        assert_eq!(
            fold(&[stored(4, token("x"))]),
            None,
            "no start: not a turn we can tell"
        );
        assert_eq!(fold(&[]), None);
    }

    #[test]
    fn finished_turns_replay_compacted_and_end_live() {
        let chat = ChannelName::new("chat").unwrap();
        let turn = TurnId::new("t1").unwrap();
        let done = Finished {
            turn: turn.clone(),
            start_offset: 3,
            text: "Hi".into(),
            status: TurnStatus::Done,
            reason: None,
            message: None,
        };
        let m = stored(9, finished(&done).unwrap());
        let replayed: serde_json::Value =
            serde_json::from_slice(&history_frame(&chat, &m).unwrap().payload()).unwrap();
        assert_eq!(
            (
                replayed["type"].as_str(),
                replayed["text"].as_str(),
                replayed["offset"].as_u64()
            ),
            (Some("turn"), Some("Hi"), Some(9))
        );
        let (frame, ended) = live_frame(&chat, &Part::Messages, &m);
        let live: serde_json::Value = serde_json::from_slice(&frame.unwrap().payload()).unwrap();
        assert_eq!(live["type"], "turn_end");
        assert_eq!(ended, Some(turn.clone()));
        assert_eq!(finished_turns(&[m]).collect::<Vec<_>>(), vec![turn.clone()]);
        let plain = Stored {
            offset: 2,
            headers: None,
            payload: Bytes::from_static(b"{\"a\":1}"),
        };
        let (frame, ended) = live_frame(&chat, &Part::Messages, &plain);
        assert!(frame.is_some() && ended.is_none());
        let (frame, _) = live_frame(&chat, &Part::Turn(turn), &stored(4, checkpoint(1, "x")));
        assert!(frame.is_none(), "checkpoints are not news");
    }
}
