//! Client WebSockets over the raw socket: our own handshake
//! ([`handshake`]), frame reading ([`reader`]), the hub's sink into the
//! socket ([`socket`]) and each connection's task ([`task`]).

pub mod handshake;
pub mod reader;
pub mod socket;
pub mod task;

pub use socket::SocketSink;
pub use task::WsSettings;
