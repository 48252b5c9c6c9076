//! Switchboard's wire types, pure data: no sockets, no tokio, no actors.
//!
//! # Layout
//! - [`ids`]: newtypes for every identifier (`OrgId`, `ChannelName`, `ConnId`, ...),
//!   validated where they enter, so two ids cannot be swapped by accident.
//! - [`channel`]: channel-name rules and the `*` / `>` grant patterns.
//! - [`client`]: frames a client sends on `/v1/ws`, decoded with precise errors.
//! - [`server`]: frames the server sends (to clients and to operators).
//! - [`prepared`]: a server frame built once as a complete WebSocket frame
//!   ([`PreparedFrame`]) and shared by every subscriber.
//! - [`operator`]: frames an operator session sends (turn events, publishes).
//! - [`code`]: the stable error codes of the client protocol and the HTTP API.
//! - [`ws`]: WebSocket framing (RFC 6455) for the server side of the socket.

pub mod channel;
pub mod client;
pub mod code;
pub mod ids;
pub mod operator;
pub mod prepared;
pub mod server;
pub mod subjects;
pub mod ws;

pub use channel::{ChannelName, ChannelPattern, Grants};
pub use client::{ClientFrame, DecodeError, Recover};
pub use client::{Target, TargetPattern};
pub use code::ErrorCode;
pub use ids::{ConnId, Epoch, OrgId, RequestId, RoleName, Sid, Subject, TurnId};
pub use operator::OperatorFrame;
pub use prepared::{PreparedFrame, TurnEvent};
pub use server::{Ack, From, ServerFrame, TurnFailure, TurnStatus};
