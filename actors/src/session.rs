//! `OperatorSession`: one per operator session (sid), a child of its org's
//! actor. It outlives its socket: frames sent to it while the socket is away
//! are buffered (bounded in bytes) and delivered, in order, when a socket
//! attaches again, and so are frames a dying socket took but never wrote.
//! What could not be kept is counted and reported to the operator as a
//! `gap`. Its live turns are in [`turns`].

mod turns;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use metrics::{counter, gauge};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use switchboard_proto::{
    ChannelName, ErrorCode, OperatorFrame, OrgId, PreparedFrame, RequestId, RoleName, ServerFrame, Sid,
    TurnId,
};

use crate::channels::Channels;
use crate::leases::RoleLeases;
use crate::limits::Limits;
use crate::session_store::{RollupRule, SessionRecord, SessionStore};
use crate::sink::{CloseReason, Sink, charge};
use crate::telemetry;

use turns::LiveTurn;

/// Session timings and bounds (from [`crate::Limits`]).
#[derive(Clone, Copy, Debug)]
pub struct SessionLimits {
    pub expiry: Duration,
    pub turn_grace: Duration,
    pub buffer_bytes: usize,
    pub max_turn_bytes: usize,
    pub max_turns: usize,
    /// Sessions per org (the org's actor enforces it).
    pub max_sessions: usize,
}

impl From<&Limits> for SessionLimits {
    fn from(limits: &Limits) -> Self {
        Self {
            expiry: limits.session_expiry,
            turn_grace: limits.turn_grace,
            buffer_bytes: limits.operator_buffer_bytes,
            max_turn_bytes: limits.max_turn_bytes,
            max_turns: limits.max_turns_per_session,
            max_sessions: limits.max_sessions_per_org,
        }
    }
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
    /// The socket of this generation closed; with the frames it took and
    /// never wrote.
    Detached(u64, Vec<PreparedFrame>),
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
    /// The pod is shutting down: the socket goes (1001, so the operator
    /// reconnects to another pod) as soon as no turn of it is live, so no
    /// turn is cut short.
    Drain,
    /// The session moves to another pod: its live turns' waiting text is
    /// published, and they are given up here (not failed) and returned.
    HandOff(RpcReplyPort<Vec<(TurnId, ChannelName)>>),
}

pub struct SessionArgs {
    pub record: SessionRecord,
    pub channels: Arc<Channels>,
    pub store: Arc<SessionStore>,
    pub limits: SessionLimits,
    /// Where frames wait while the operator is away, for any pod.
    pub leases: Arc<dyn RoleLeases>,
}

/// Frames waiting for the operator, bounded in bytes, and the count of
/// those that could not be kept (its next `gap`).
#[derive(Default)]
struct Buffer {
    frames: VecDeque<PreparedFrame>,
    bytes: usize,
    lost: u64,
}

impl Buffer {
    fn push(&mut self, frame: PreparedFrame, limit: usize) -> bool {
        let cost = charge(&frame);
        if self.bytes + cost > limit {
            return false;
        }
        self.bytes += cost;
        self.frames.push_back(frame);
        true
    }

    /// Puts back, ahead of what is buffered, frames a socket took and never
    /// wrote (they are older); what no longer fits is counted as lost.
    fn restore(&mut self, unsent: Vec<PreparedFrame>, limit: usize) {
        if unsent.is_empty() {
            return;
        }
        let newer = std::mem::take(&mut self.frames);
        self.bytes = 0;
        let mut lost = 0;
        for frame in unsent.into_iter().chain(newer) {
            if lost > 0 || !self.push(frame, limit) {
                lost += 1;
            }
        }
        self.lose(lost);
    }

    fn lose(&mut self, n: u64) {
        self.lost += n;
        telemetry::operator_frames_lost(n);
    }

    fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Forgets the `n` oldest frames (kept elsewhere now).
    fn drop_front(&mut self, n: usize) {
        for frame in self.frames.drain(..n.min(self.frames.len())) {
            self.bytes -= charge(&frame);
        }
    }

    /// Offers `first`, then everything buffered, then the gap notice; what
    /// the sink refuses stays buffered (it is closing, and will hand back
    /// what it took).
    fn hand_over(&mut self, sink: &dyn Sink, first: Vec<PreparedFrame>, limit: usize) {
        let buffered = std::mem::take(&mut self.frames);
        self.bytes = 0;
        let mut refused = false;
        for frame in first.into_iter().chain(buffered) {
            refused = refused || sink.offer(&frame).is_err();
            if refused && !self.push(frame, limit) {
                self.lose(1);
            }
        }
        if self.lost > 0
            && sink
                .offer(&ServerFrame::Gap { dropped: self.lost }.prepare())
                .is_ok()
        {
            self.lost = 0;
        }
    }
}

pub struct SessionState {
    sid: Sid,
    org: OrgId,
    roles: Vec<RoleName>,
    rollup: Arc<[RollupRule]>,
    channels: Arc<Channels>,
    store: Arc<SessionStore>,
    limits: SessionLimits,
    socket: Option<(u64, Arc<dyn Sink>)>,
    generation: u64,
    leases: Arc<dyn RoleLeases>,
    /// Frames may be parked for it (by this pod or another): the next
    /// socket gets them first.
    parked: bool,
    /// The pod is shutting down ([`SessionMsg::Drain`]).
    draining: bool,
    buffer: Buffer,
    turns: std::collections::HashMap<TurnId, LiveTurn>,
}

impl SessionState {
    /// To the operator, if it is here; replies are not buffered.
    fn tell(&self, frame: ServerFrame) {
        if let Some((_, sink)) = &self.socket {
            let _ = sink.offer(&frame.prepare());
        }
    }

    fn refuse(&self, id: Option<RequestId>, code: ErrorCode, message: impl Into<String>) {
        self.tell(ServerFrame::error(id, code, message));
    }

    /// Tells an attached operator at once about frames that were lost.
    fn report_gap(&mut self) {
        if self.buffer.lost > 0
            && let Some((_, sink)) = &self.socket
            && sink
                .offer(
                    &ServerFrame::Gap {
                        dropped: self.buffer.lost,
                    }
                    .prepare(),
                )
                .is_ok()
        {
            self.buffer.lost = 0;
        }
    }

    async fn attach(&mut self, sink: Arc<dyn Sink>) -> u64 {
        self.generation += 1;
        // What the replaced socket had not started writing goes to its
        // successor first, in order.
        let mut first = match self.socket.take() {
            Some((_, old)) => {
                old.close(CloseReason::Replaced);
                old.take_unsent()
            }
            None => {
                gauge!(telemetry::SESSIONS_CONNECTED).increment(1.0);
                Vec::new()
            }
        };
        // Then what was parked while it was away (nothing is parked after
        // a park failed until now, so all of it is older than the buffer).
        if self.parked {
            match self.leases.unpark(&self.org, &self.sid).await {
                Ok(parked) => {
                    self.parked = false;
                    first.extend(parked);
                }
                Err(e) => {
                    tracing::warn!(sid = %self.sid, error = %e, "parked frames not read; the next socket gets them")
                }
            }
        }
        self.buffer
            .hand_over(sink.as_ref(), first, self.limits.buffer_bytes);
        self.socket = Some((self.generation, sink));
        self.generation
    }

    async fn detached(&mut self, me: &ActorRef<SessionMsg>, generation: u64, unsent: Vec<PreparedFrame>) {
        if self.socket.as_ref().is_some_and(|(g, _)| *g == generation) {
            self.socket = None;
            gauge!(telemetry::SESSIONS_CONNECTED).decrement(1.0);
            self.buffer.restore(unsent, self.limits.buffer_bytes);
            self.park_buffer().await;
            self.detach_timers(me);
        } else {
            // A replaced socket's last, partly written frame: its successor
            // already has everything after it.
            self.buffer.lose(unsent.len() as u64);
            self.report_gap();
        }
    }

    /// Moves what is buffered to where any pod finds it (the operator may
    /// come back elsewhere, or this pod may die); in one pod it stays.
    async fn park_buffer(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        let frames: Vec<PreparedFrame> = self.buffer.frames.iter().cloned().collect();
        let parked = self.leases.park(&self.org, &self.sid, &frames).await;
        if parked > 0 {
            self.buffer.drop_front(parked);
            self.parked = true;
        }
    }

    async fn route_client_frame(&mut self, frame: PreparedFrame) -> Result<(), Offline> {
        let offered = self.buffer.is_empty()
            && self
                .socket
                .as_ref()
                .is_some_and(|(_, sink)| sink.offer(&frame).is_ok());
        // Away: parked, unless an earlier frame could not be (order).
        let parked = !offered
            && self.socket.is_none()
            && self.buffer.is_empty()
            && self
                .leases
                .park(&self.org, &self.sid, std::slice::from_ref(&frame))
                .await
                == 1;
        self.parked |= parked;
        if offered || parked || self.buffer.push(frame, self.limits.buffer_bytes) {
            counter!(telemetry::FRAMES_ROUTED).increment(1);
            return Ok(());
        }
        self.buffer.lose(1);
        counter!(telemetry::FRAMES_REFUSED).increment(1);
        Err(Offline)
    }

    fn detach_timers(&self, me: &ActorRef<SessionMsg>) {
        let generation = self.generation;
        me.send_after(self.limits.expiry, move || SessionMsg::Expire(generation));
        if !self.turns.is_empty() {
            me.send_after(self.limits.turn_grace, move || SessionMsg::TurnGrace(generation));
        }
    }

    /// Draining, with no live turn: its socket leaves now.
    fn close_if_drained(&self) {
        if self.draining
            && self.turns.is_empty()
            && let Some((_, sink)) = &self.socket
        {
            sink.close(CloseReason::GoingAway);
        }
    }

    fn away_since(&self, generation: u64) -> bool {
        self.socket.is_none() && self.generation == generation
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
            .map(|(turn, channel)| (turn.clone(), LiveTurn::new(channel.clone(), &record.rollup, None)))
            .collect();
        let state = SessionState {
            sid: record.sid,
            org: record.org,
            roles: record.roles,
            rollup: record.rollup,
            channels: args.channels,
            store: args.store,
            limits: args.limits,
            socket: None,
            generation: 0,
            leases: args.leases,
            // Adopted from another pod, it may have left frames.
            parked: true,
            draining: false,
            buffer: Buffer::default(),
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
                let generation = state.attach(sink).await;
                let _ = reply.send(generation);
            }
            SessionMsg::Detached(generation, unsent) => state.detached(&me, generation, unsent).await,
            SessionMsg::FromClient(frame, reply) => {
                let _ = reply.send(state.route_client_frame(frame).await);
            }
            SessionMsg::FromOperator(frame, reply) => {
                state.on_operator_frame(&me, frame).await;
                let _ = reply.send(());
                state.close_if_drained();
            }
            SessionMsg::Drain => {
                state.draining = true;
                state.close_if_drained();
            }
            SessionMsg::HandOff(reply) => {
                let _ = reply.send(state.hand_off().await);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::MemorySink;
    use switchboard_proto::ws::{self, OpCode};

    fn frame(n: u8) -> PreparedFrame {
        PreparedFrame::from_wire(ws::frame(OpCode::Text, &[n; 100]))
    }

    fn room(n: usize) -> usize {
        n * charge(&frame(0))
    }

    fn payloads(sink: &MemorySink) -> Vec<u8> {
        sink.drain().iter().map(|f| f.payload()[0]).collect()
    }

    #[test]
    fn frames_parked_elsewhere_leave_the_buffer_oldest_first() {
        let mut buffer = Buffer::default();
        for n in 1..=3 {
            assert!(buffer.push(frame(n), room(3)));
        }
        buffer.drop_front(2);
        assert_eq!(buffer.bytes, room(1));
        assert!(buffer.push(frame(4), room(2)), "room again for what left");
        let sink = MemorySink::new(room(10));
        buffer.hand_over(&sink, Vec::new(), room(3));
        assert_eq!(payloads(&sink), vec![3, 4]);
        buffer.drop_front(5);
        assert!(buffer.is_empty() && buffer.bytes == 0);
    }

    #[test]
    fn what_a_dead_socket_never_wrote_goes_first_and_the_rest_is_a_gap() {
        let mut buffer = Buffer::default();
        assert!(buffer.push(frame(3), room(3)));
        buffer.restore(vec![frame(1), frame(2)], room(3));
        assert!(!buffer.push(frame(4), room(3)), "full");
        buffer.lose(1);
        buffer.restore(vec![frame(0)], room(3));
        // 0, 1, 2 fit; 3 no longer does: two lost in all.
        let sink = MemorySink::new(room(10));
        buffer.hand_over(&sink, Vec::new(), room(3));
        let frames = sink.drain();
        let gap = ServerFrame::decode(&frames[3].payload()).unwrap();
        assert_eq!(
            frames[..3].iter().map(|f| f.payload()[0]).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        assert!(
            matches!(gap, ServerFrame::Gap { dropped: 2 }),
            "{}",
            gap.to_json()
        );
        assert!(buffer.is_empty() && buffer.lost == 0);
    }

    #[test]
    fn a_socket_that_refuses_keeps_the_rest_buffered() {
        let mut buffer = Buffer::default();
        for n in 1..=3 {
            assert!(buffer.push(frame(n), room(10)));
        }
        let small = MemorySink::new(room(2));
        buffer.hand_over(&small, vec![frame(0)], room(10));
        assert_eq!(payloads(&small), vec![0, 1]);
        assert_eq!(buffer.frames.len(), 2, "2 and 3 wait for the next socket");
    }
}
