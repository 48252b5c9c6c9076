//! A session's live turns: what the operator streams (`turn_start`, `token`,
//! `turn_end`, `turn_error`) goes to the channel through [`Channels`],
//! tokens rolled up per window when asked, every turn bounded (count per
//! session, JSON-escaped bytes per turn, rollup window), and every live turn
//! ended with `operator_gone` when the operator stays away or the session ends.

use std::time::Duration;

use metrics::counter;
use ractor::ActorRef;
use serde_json::value::RawValue;
use switchboard_proto::prepared::json_escaped_len;
use switchboard_proto::{
    Ack, ChannelName, ErrorCode, OperatorFrame, RequestId, ServerFrame, TurnFailure, TurnId,
};

use super::{SessionMsg, SessionState};
use crate::backplane::{BackplaneError, Event};
use crate::clock::{self, Instant};
use crate::hub::ChannelKey;
use crate::limits::MAX_ROLLUP;
use crate::session_store::RollupRule;
use crate::telemetry;

pub(super) struct LiveTurn {
    channel: ChannelName,
    window: Duration,
    pending: String,
    last_emit: Option<Instant>,
    flush_scheduled: bool,
    /// JSON-escaped bytes streamed so far.
    bytes: usize,
}

impl LiveTurn {
    /// A turn on `channel`, its rollup window as asked (at most
    /// [`MAX_ROLLUP`]) or as the org's first matching rule says.
    pub(super) fn new(channel: ChannelName, rules: &[RollupRule], asked_ms: Option<u32>) -> Self {
        let window = match asked_ms {
            Some(ms) => Duration::from_millis(u64::from(ms)).min(MAX_ROLLUP),
            None => rules
                .iter()
                .find(|r| r.channels.matches(&channel))
                .map_or(Duration::ZERO, |r| r.window),
        };
        Self {
            channel,
            window,
            pending: String::new(),
            last_emit: None,
            flush_scheduled: false,
            bytes: 0,
        }
    }
}

impl SessionState {
    fn ack(&self, id: Option<RequestId>, channel: ChannelName, offset: u64) {
        if let Some(id) = id {
            self.tell(ServerFrame::Ack(Ack {
                channel: Some(channel),
                offset: Some(offset),
                ..Ack::new(id)
            }));
        }
    }

    async fn publish(&self, channel: &ChannelName, event: Event<'_>) -> Result<u64, BackplaneError> {
        let key = ChannelKey::of(&self.org, channel);
        Ok(self.channels.publish(&key, event).await?.offset)
    }

    /// Emits a turn's rolled-up text, if any.
    pub(super) async fn flush(&mut self, turn: &TurnId) {
        let Some(live) = self.turns.get_mut(turn) else {
            return;
        };
        live.flush_scheduled = false;
        if live.pending.is_empty() {
            return;
        }
        let text = std::mem::take(&mut live.pending);
        live.last_emit = Some(clock::now());
        let channel = live.channel.clone();
        if let Err(e) = self.publish(&channel, Event::Token(turn, &text)).await {
            self.refuse(
                None,
                e.code(),
                format!("rolled-up text of {turn} lost: {}", e.public_message()),
            );
        }
    }

    /// Flushes every turn with text waiting on `channel`, so whatever is
    /// published there next comes after it.
    async fn flush_channel(&mut self, channel: &ChannelName) {
        let waiting: Vec<TurnId> = self
            .turns
            .iter()
            .filter(|(_, t)| &t.channel == channel && !t.pending.is_empty())
            .map(|(id, _)| id.clone())
            .collect();
        for turn in waiting {
            self.flush(&turn).await;
        }
    }

    /// Ends a turn: its waiting text first, then the end (or error) event.
    async fn finish(
        &mut self,
        turn: &TurnId,
        failure: Option<(TurnFailure, Option<&str>)>,
    ) -> Option<(ChannelName, Result<u64, BackplaneError>)> {
        self.flush(turn).await;
        let live = self.turns.remove(turn)?;
        self.store.remove_turn(&self.sid, turn);
        let event = match failure {
            None => Event::TurnEnd(turn),
            Some((reason, message)) => Event::TurnError {
                turn,
                reason,
                message,
            },
        };
        let status = failure.map_or("done", |(reason, _)| match reason {
            TurnFailure::Operator => "error",
            TurnFailure::OperatorGone => "operator_gone",
        });
        counter!(telemetry::TURNS_FINISHED, "status" => status).increment(1);
        let published = self.publish(&live.channel, event).await;
        Some((live.channel, published))
    }

    /// Publishes every live turn's waiting text and gives the turns up
    /// (another pod carries them on).
    pub(super) async fn hand_off(&mut self) -> Vec<(TurnId, ChannelName)> {
        let turns: Vec<TurnId> = self.turns.keys().cloned().collect();
        let mut moved = Vec::with_capacity(turns.len());
        for turn in turns {
            self.flush(&turn).await;
            if let Some(live) = self.turns.remove(&turn) {
                self.store.remove_turn(&self.sid, &turn);
                moved.push((turn, live.channel));
            }
        }
        moved
    }

    pub(super) async fn fail_all_turns(&mut self) {
        let turns: Vec<TurnId> = self.turns.keys().cloned().collect();
        for turn in turns {
            if let Some((_, Err(e))) = self.finish(&turn, Some((TurnFailure::OperatorGone, None))).await {
                tracing::warn!(error = %e, %turn, "turn_error not published");
            }
        }
    }

    async fn token(&mut self, me: &ActorRef<SessionMsg>, turn: TurnId, text: String) {
        let max = self.limits.max_turn_bytes;
        let Some(live) = self.turns.get_mut(&turn) else {
            return self.refuse(
                None,
                ErrorCode::NotFound,
                format!("no live turn {turn} in this session"),
            );
        };
        let cost = json_escaped_len(&text);
        if live.bytes + cost > max {
            return self.refuse(
                None,
                ErrorCode::LimitExceeded,
                format!("turn {turn} would exceed {max} bytes; end it and start another"),
            );
        }
        live.bytes += cost;
        counter!(telemetry::TOKENS).increment(1);
        let now = clock::now();
        let quiet = live
            .last_emit
            .is_none_or(|t| now.saturating_duration_since(t) >= live.window);
        if live.window.is_zero() || (live.pending.is_empty() && quiet) {
            // The first token of a window goes out at once.
            live.last_emit = Some(now);
            let channel = live.channel.clone();
            if let Err(e) = self.publish(&channel, Event::Token(&turn, &text)).await {
                self.refuse(
                    None,
                    e.code(),
                    format!("token for {turn} lost: {}", e.public_message()),
                );
            }
            return;
        }
        if !live.pending.is_empty() {
            counter!(telemetry::ROLLUP_SAVED).increment(1);
        }
        live.pending.push_str(&text);
        if !live.flush_scheduled {
            live.flush_scheduled = true;
            let due = live.last_emit.map_or(Duration::ZERO, |t| {
                live.window.saturating_sub(now.saturating_duration_since(t))
            });
            me.send_after(due, move || SessionMsg::Flush(turn));
        }
    }

    async fn start_turn(
        &mut self,
        id: Option<RequestId>,
        turn: TurnId,
        channel: ChannelName,
        rollup_ms: Option<u32>,
    ) {
        if self.draining {
            // Its socket is closing: the operator starts it again on the
            // pod it reconnects to.
            return self.refuse(id, ErrorCode::Unavailable, "this pod is shutting down; reconnect");
        }
        if self.turns.contains_key(&turn) {
            return self.refuse(id, ErrorCode::Conflict, format!("turn {turn} is already live"));
        }
        let max = self.limits.max_turns;
        if self.turns.len() >= max {
            return self.refuse(
                id,
                ErrorCode::LimitExceeded,
                format!("at most {max} live turns per session; end one first"),
            );
        }
        self.flush_channel(&channel).await;
        match self.publish(&channel, Event::TurnStart(&turn)).await {
            Ok(offset) => {
                let live = LiveTurn::new(channel.clone(), &self.rollup, rollup_ms);
                self.store.add_turn(&self.sid, &turn, &channel);
                self.turns.insert(turn, live);
                counter!(telemetry::TURNS_STARTED).increment(1);
                self.ack(id, channel, offset);
            }
            Err(e) => self.refuse(id, e.code(), e.public_message()),
        }
    }

    async fn end_turn(&mut self, id: Option<RequestId>, turn: TurnId, message: Option<String>) {
        let failure = message.as_deref().map(|m| {
            let m = (!m.is_empty()).then_some(m);
            (TurnFailure::Operator, m)
        });
        match self.finish(&turn, failure).await {
            Some((channel, Ok(offset))) => self.ack(id, channel, offset),
            Some((_, Err(e))) => self.refuse(id, e.code(), e.public_message()),
            None => self.refuse(
                id,
                ErrorCode::NotFound,
                format!("no live turn {turn} in this session"),
            ),
        }
    }

    async fn publish_message(&mut self, id: RequestId, channel: ChannelName, data: &RawValue) {
        self.flush_channel(&channel).await;
        match self.publish(&channel, Event::Message(data)).await {
            Ok(offset) => self.ack(Some(id), channel, offset),
            Err(e) => self.refuse(Some(id), e.code(), e.public_message()),
        }
    }

    pub(super) async fn on_operator_frame(&mut self, me: &ActorRef<SessionMsg>, frame: OperatorFrame) {
        match frame {
            OperatorFrame::Token { turn, text } => self.token(me, turn, text).await,
            OperatorFrame::TurnStart {
                id,
                turn,
                channel,
                rollup_ms,
            } => self.start_turn(id, turn, channel, rollup_ms).await,
            OperatorFrame::TurnEnd { id, turn } => self.end_turn(id, turn, None).await,
            OperatorFrame::TurnError { id, turn, message } => {
                self.end_turn(id, turn, Some(message.unwrap_or_default())).await
            }
            OperatorFrame::Publish { id, channel, data } => self.publish_message(id, channel, &data).await,
            OperatorFrame::Ping { id } => self.tell(ServerFrame::Pong { id }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_proto::ChannelPattern;

    #[test]
    fn rollup_windows() {
        let channel = ChannelName::new("turns.a").unwrap();
        let rules = [RollupRule {
            channels: ChannelPattern::new("turns.>").unwrap(),
            window: Duration::from_millis(40),
        }];
        assert_eq!(
            LiveTurn::new(channel.clone(), &rules, None).window,
            Duration::from_millis(40)
        );
        assert_eq!(
            LiveTurn::new(channel.clone(), &rules, Some(0)).window,
            Duration::ZERO
        );
        assert_eq!(
            LiveTurn::new(channel.clone(), &rules, Some(u32::MAX)).window,
            MAX_ROLLUP,
            "a client cannot stall a turn for 49 days"
        );
        let other = ChannelName::new("chat.a").unwrap();
        assert_eq!(LiveTurn::new(other, &rules, None).window, Duration::ZERO);
    }
}
