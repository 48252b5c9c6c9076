//! `OperatorSession`: one per operator session (sid), a child of its org's
//! actor. It outlives its socket: frames sent to it while the socket is away
//! are buffered (bounded) and delivered, in order, when a socket attaches
//! again. It owns the session's live turns: it streams their tokens to the
//! backplane (rolled up per window when asked), and ends them with
//! `operator_gone` when the operator stays away past the grace period or the
//! session ends.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{counter, gauge};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use switchboard_proto::{
    Ack, ChannelName, ErrorCode, OperatorFrame, OrgId, PreparedFrame, RequestId, RoleName, ServerFrame, Sid,
    TurnId,
};

use crate::backplane::{Backplane, BackplaneError, Event};
use crate::hub::ChannelKey;
use crate::session_store::{RollupRule, SessionRecord, SessionStore};
use crate::sink::{CloseReason, Sink};
use crate::telemetry;

/// Session timings and bounds (from [`crate::Limits`]).
#[derive(Clone, Copy, Debug)]
pub struct SessionLimits {
    pub expiry: Duration,
    pub turn_grace: Duration,
    pub buffer: usize,
    pub max_turn_bytes: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    pub sid: Sid,
    pub roles: Vec<RoleName>,
    pub connected: bool,
}

/// The operator is away and its buffer is full: the frame was not taken.
#[derive(Debug, PartialEq, Eq)]
pub struct Offline;

pub enum SessionMsg {
    /// A socket for this session; it replaces any current one. Replies with
    /// the socket's generation.
    Attach(Arc<dyn Sink>, RpcReplyPort<u64>),
    /// The socket of this generation closed.
    Detached(u64),
    /// A client's `send`, as the frame the operator receives.
    FromClient(PreparedFrame, RpcReplyPort<Result<(), Offline>>),
    /// A frame from the operator's socket; the reply says it was handled.
    FromOperator(OperatorFrame, RpcReplyPort<()>),
    Info(RpcReplyPort<SessionInfo>),
    /// Sent to itself: end the session if no socket came back since `generation`.
    Expire(u64),
    /// Sent to itself: fail live turns if no socket came back since `generation`.
    TurnGrace(u64),
    /// Sent to itself: emit a turn's rolled-up text.
    Flush(TurnId),
}

pub struct SessionArgs {
    pub record: SessionRecord,
    pub backplane: Arc<dyn Backplane>,
    pub store: Arc<SessionStore>,
    pub limits: SessionLimits,
}

struct LiveTurn {
    channel: ChannelName,
    window: Duration,
    pending: String,
    last_emit: Option<Instant>,
    flush_scheduled: bool,
    bytes: usize,
}

pub struct SessionState {
    sid: Sid,
    org: OrgId,
    roles: Vec<RoleName>,
    rollup: Arc<[RollupRule]>,
    backplane: Arc<dyn Backplane>,
    store: Arc<SessionStore>,
    limits: SessionLimits,
    socket: Option<(u64, Arc<dyn Sink>)>,
    generation: u64,
    buffer: VecDeque<PreparedFrame>,
    refused: u64,
    turns: HashMap<TurnId, LiveTurn>,
}

impl SessionState {
    fn key(&self, channel: &ChannelName) -> ChannelKey {
        ChannelKey::new(self.org.clone(), channel.clone())
    }

    /// To the operator, if it is here; replies are not buffered.
    fn tell(&self, frame: ServerFrame) {
        if let Some((_, sink)) = &self.socket {
            let _ = sink.offer(&frame.prepare());
        }
    }

    fn refuse(&self, id: Option<RequestId>, code: ErrorCode, message: impl Into<String>) {
        self.tell(ServerFrame::error(id, code, message));
    }

    fn ack(&self, id: Option<RequestId>, channel: ChannelName, offset: u64) {
        if let Some(id) = id {
            self.tell(ServerFrame::Ack(Ack {
                channel: Some(channel),
                offset: Some(offset),
                ..Ack::new(id)
            }));
        }
    }

    fn remember_turns(&self) {
        let turns = self
            .turns
            .iter()
            .map(|(t, live)| (t.clone(), live.channel.clone()))
            .collect();
        self.store.set_turns(&self.sid, turns);
    }

    async fn publish(&self, channel: &ChannelName, event: Event<'_>) -> Result<u64, BackplaneError> {
        Ok(self.backplane.publish(&self.key(channel), event).await?.offset)
    }

    /// Emits a turn's rolled-up text, if any.
    async fn flush(&mut self, turn: &TurnId) {
        let Some(live) = self.turns.get_mut(turn) else {
            return;
        };
        live.flush_scheduled = false;
        if live.pending.is_empty() {
            return;
        }
        let text = std::mem::take(&mut live.pending);
        live.last_emit = Some(Instant::now());
        let channel = live.channel.clone();
        if let Err(e) = self.publish(&channel, Event::Token(turn, &text)).await {
            tracing::warn!(error = %e, %turn, "rolled-up token not published");
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
        error: Option<(&str, Option<&str>)>,
    ) -> Option<Result<u64, BackplaneError>> {
        self.flush(turn).await;
        let live = self.turns.remove(turn)?;
        self.remember_turns();
        let event = match error {
            None => Event::TurnEnd(turn),
            Some((reason, message)) => Event::TurnError {
                turn,
                reason,
                message,
            },
        };
        let status = error.map_or("done", |(reason, _)| {
            if reason == "operator" {
                "error"
            } else {
                "operator_gone"
            }
        });
        counter!(telemetry::TURNS_FINISHED, "status" => status).increment(1);
        Some(self.publish(&live.channel, event).await)
    }

    async fn fail_all_turns(&mut self) {
        let turns: Vec<TurnId> = self.turns.keys().cloned().collect();
        for turn in turns {
            if let Some(Err(e)) = self.finish(&turn, Some(("operator_gone", None))).await {
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
        if live.bytes + text.len() > max {
            return self.refuse(
                None,
                ErrorCode::LimitExceeded,
                format!("turn {turn} would exceed {max} bytes"),
            );
        }
        live.bytes += text.len();
        counter!(telemetry::TOKENS).increment(1);
        let now = Instant::now();
        let quiet = live
            .last_emit
            .is_none_or(|t| now.duration_since(t) >= live.window);
        if live.window.is_zero() || (live.pending.is_empty() && quiet) {
            // The first token of a window goes out at once.
            live.last_emit = Some(now);
            let channel = live.channel.clone();
            if let Err(e) = self.publish(&channel, Event::Token(&turn, &text)).await {
                self.refuse(
                    None,
                    ErrorCode::Unavailable,
                    format!("token for {turn} not published: {e}"),
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
                live.window.saturating_sub(now.duration_since(t))
            });
            me.send_after(due, move || SessionMsg::Flush(turn));
        }
    }

    async fn on_operator_frame(&mut self, me: &ActorRef<SessionMsg>, frame: OperatorFrame) {
        match frame {
            OperatorFrame::Token { turn, text } => self.token(me, turn, text).await,
            OperatorFrame::TurnStart {
                id,
                turn,
                channel,
                rollup_ms,
            } => {
                if self.turns.contains_key(&turn) {
                    return self.refuse(id, ErrorCode::Conflict, format!("turn {turn} is already live"));
                }
                self.flush_channel(&channel).await;
                match self.publish(&channel, Event::TurnStart(&turn)).await {
                    Ok(offset) => {
                        let window = rollup_window(&self.rollup, &channel, rollup_ms);
                        let live = LiveTurn {
                            channel: channel.clone(),
                            window,
                            pending: String::new(),
                            last_emit: None,
                            flush_scheduled: false,
                            bytes: 0,
                        };
                        self.turns.insert(turn, live);
                        self.remember_turns();
                        counter!(telemetry::TURNS_STARTED).increment(1);
                        self.ack(id, channel, offset);
                    }
                    Err(BackplaneError::TurnExists(t)) => self.refuse(
                        id,
                        ErrorCode::Conflict,
                        format!("turn {t} is already live on {channel}"),
                    ),
                    Err(e) => self.refuse(id, ErrorCode::Unavailable, format!("turn not started: {e}")),
                }
            }
            OperatorFrame::TurnEnd { id, turn } => self.end_turn(id, turn, None).await,
            OperatorFrame::TurnError { id, turn, message } => {
                let message = message.unwrap_or_default();
                self.end_turn(id, turn, Some(message)).await
            }
            OperatorFrame::Publish { id, channel, data } => {
                self.flush_channel(&channel).await;
                match self.publish(&channel, Event::Message(&data)).await {
                    Ok(offset) => self.ack(Some(id), channel, offset),
                    Err(e) => self.refuse(Some(id), ErrorCode::Unavailable, format!("publish failed: {e}")),
                }
            }
            OperatorFrame::Ping { id } => self.tell(ServerFrame::Pong { id }),
        }
    }

    async fn end_turn(&mut self, id: Option<RequestId>, turn: TurnId, error: Option<String>) {
        let channel = self.turns.get(&turn).map(|t| t.channel.clone());
        let error = error
            .as_deref()
            .map(|m| ("operator", (!m.is_empty()).then_some(m)));
        match (self.finish(&turn, error).await, channel) {
            (Some(Ok(offset)), Some(channel)) => self.ack(id, channel, offset),
            (Some(Err(e)), _) => {
                self.refuse(id, ErrorCode::Unavailable, format!("turn end not published: {e}"))
            }
            _ => self.refuse(
                id,
                ErrorCode::NotFound,
                format!("no live turn {turn} in this session"),
            ),
        }
    }

    fn detach_timers(&self, me: &ActorRef<SessionMsg>) {
        let generation = self.generation;
        me.send_after(self.limits.expiry, move || SessionMsg::Expire(generation));
        if !self.turns.is_empty() {
            me.send_after(self.limits.turn_grace, move || SessionMsg::TurnGrace(generation));
        }
    }

    fn away_since(&self, generation: u64) -> bool {
        self.socket.is_none() && self.generation == generation
    }
}

/// A turn's rollup window: asked for at `turn_start`, else the org's first
/// rule matching the channel, else none.
fn rollup_window(rules: &[RollupRule], channel: &ChannelName, asked: Option<u32>) -> Duration {
    match asked {
        Some(ms) => Duration::from_millis(u64::from(ms)),
        None => rules
            .iter()
            .find(|r| r.channels.matches(channel))
            .map_or(Duration::ZERO, |r| r.window),
    }
}

pub struct OperatorSession;

impl Actor for OperatorSession {
    type Msg = SessionMsg;
    type State = SessionState;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        me: ActorRef<SessionMsg>,
        args: SessionArgs,
    ) -> Result<SessionState, ActorProcessingErr> {
        let record = args.record;
        let turns = record
            .turns
            .iter()
            .map(|(turn, channel)| {
                let live = LiveTurn {
                    channel: channel.clone(),
                    window: rollup_window(&record.rollup, channel, None),
                    pending: String::new(),
                    last_emit: None,
                    flush_scheduled: false,
                    bytes: 0,
                };
                (turn.clone(), live)
            })
            .collect();
        let state = SessionState {
            sid: record.sid,
            org: record.org,
            roles: record.roles,
            rollup: record.rollup,
            backplane: args.backplane,
            store: args.store,
            limits: args.limits,
            socket: None,
            generation: 0,
            buffer: VecDeque::new(),
            refused: 0,
            turns,
        };
        // No socket yet: the clocks for expiry (and for inherited turns) run.
        state.detach_timers(&me);
        gauge!(telemetry::SESSIONS).increment(1.0);
        Ok(state)
    }

    async fn post_stop(
        &self,
        _me: ActorRef<SessionMsg>,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        state.fail_all_turns().await;
        if let Some((_, sink)) = state.socket.take() {
            sink.close(CloseReason::SessionEnded);
            gauge!(telemetry::SESSIONS_CONNECTED).decrement(1.0);
        }
        gauge!(telemetry::SESSIONS).decrement(1.0);
        Ok(())
    }

    async fn handle(
        &self,
        me: ActorRef<SessionMsg>,
        msg: SessionMsg,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SessionMsg::Attach(sink, reply) => {
                state.generation += 1;
                match state.socket.take() {
                    Some((_, old)) => old.close(CloseReason::Replaced),
                    None => gauge!(telemetry::SESSIONS_CONNECTED).increment(1.0),
                }
                for frame in state.buffer.drain(..) {
                    let _ = sink.offer(&frame);
                }
                if state.refused > 0 {
                    let _ = sink.offer(
                        &ServerFrame::Gap {
                            dropped: state.refused,
                        }
                        .prepare(),
                    );
                    state.refused = 0;
                }
                state.buffer = VecDeque::new();
                state.socket = Some((state.generation, sink));
                let _ = reply.send(state.generation);
            }
            SessionMsg::Detached(generation) => {
                if state.socket.as_ref().is_some_and(|(g, _)| *g == generation) {
                    state.socket = None;
                    gauge!(telemetry::SESSIONS_CONNECTED).decrement(1.0);
                    state.detach_timers(&me);
                }
            }
            SessionMsg::FromClient(frame, reply) => {
                let delivered = state
                    .socket
                    .as_ref()
                    .is_some_and(|(_, sink)| sink.offer(&frame).is_ok());
                let result = if delivered || state.buffer.len() < state.limits.buffer {
                    if !delivered {
                        state.buffer.push_back(frame);
                    }
                    counter!(telemetry::FRAMES_ROUTED).increment(1);
                    Ok(())
                } else {
                    state.refused += 1;
                    counter!(telemetry::FRAMES_REFUSED).increment(1);
                    Err(Offline)
                };
                let _ = reply.send(result);
            }
            SessionMsg::FromOperator(frame, reply) => {
                state.on_operator_frame(&me, frame).await;
                let _ = reply.send(());
            }
            SessionMsg::Info(reply) => {
                let _ = reply.send(SessionInfo {
                    sid: state.sid.clone(),
                    roles: state.roles.clone(),
                    connected: state.socket.is_some(),
                });
            }
            SessionMsg::Expire(generation) => {
                if state.away_since(generation) {
                    tracing::info!(sid = %state.sid, "operator session expired");
                    me.stop(Some("expired".into()));
                }
            }
            SessionMsg::TurnGrace(generation) => {
                if state.away_since(generation) {
                    state.fail_all_turns().await;
                }
            }
            SessionMsg::Flush(turn) => state.flush(&turn).await,
        }
        Ok(())
    }
}
