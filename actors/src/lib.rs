//! Switchboard's actors and data plane, with no HTTP, NATS or storage: those
//! reach in through small traits ([`Backplane`], [`History`], [`Sink`]) that
//! `src` implements, so everything here is tested and benchmarked in memory.
//!
//! # Supervision tree
//! ```text
//! Root (tree.rs)                    stops the process if a supervisor fails
//! ├── Orgs (orgs.rs)                starts, holds, idles out and restarts org actors
//! │   └── OrgActor* (org.rs)        one per org with live work: backplane attachments, role table
//! │       └── OperatorSession*      one per sid (session.rs): survives its socket, owns its turns
//! └── Connections (connections.rs)  tracks socket tasks; a panic closes one socket
//!     └── socket task*              one per WebSocket (src): client (connection.rs) or operator (operator.rs)
//! ```
//!
//! # Layout
//! - [`hub`]: sharded channel → subscriber map and the fan-out loop.
//! - [`sink`]: how the hub writes to a connection (bounded in bytes);
//!   [`sink::MemorySink`] for tests. [`batch`]: write coalescing, one
//!   write per subscriber per batch of publishes.
//! - [`channels`]: the one home for publishing and reading channels.
//! - [`backplane`]: the `Backplane` and `History` capabilities.
//! - [`memory`]: the in-process backplane with bounded in-memory history.
//! - [`connection`]: one client's protocol logic (subscribe/resume, publish, send).
//! - [`session`], [`operator`]: operator sessions, their turns, their sockets;
//!   [`sessions`]: how request paths reach them; [`session_store`]: what a
//!   session leaves behind to restart from; [`leases`]: roles and sessions
//!   across pods.
//! - [`link`]: what a socket task needs from the protocol behind it.
//! - [`clock`]: the one (pausable) clock every timer reads.
//! - [`limits`], [`telemetry`]: settings the actors enforce, metric names.

pub mod backplane;
pub mod batch;
pub mod channels;
pub mod clock;
pub mod connection;
pub mod connections;
pub mod hub;
mod in_flight;
pub mod leases;
pub mod limits;
pub mod link;
pub mod memory;
pub mod operator;
pub mod org;
pub mod orgs;
pub mod session;
pub mod session_store;
pub mod sessions;
pub mod sink;
pub mod telemetry;
pub mod tree;

pub use backplane::{Backplane, BackplaneError, Event, History, HistoryRead, Position, Published, Sent};
pub use channels::Channels;
pub use connection::{Connection, Identity};
pub use hub::{ChannelKey, Hub};
pub use leases::{Ask, Forwarded, LeaseError, LocalOnly, RoleLeases};
pub use limits::Limits;
pub use link::{FrameHandler, Match, Supervised};
pub use memory::{HistoryLimits, InProcess};
pub use operator::OperatorLink;
pub use org::{MintError, OrgError};
pub use session::SessionInfo;
pub use session_store::{RollupRule, SessionRecord};
pub use sessions::Sessions;
pub use sink::{CloseReason, MemorySink, Refused, Sink};
pub use tree::{Services, Tree, TreeError};
