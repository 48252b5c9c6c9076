//! WebSockets over the raw socket: our own handshake ([`handshake`]), frame
//! parsing ([`reader`]), the socket that owns the stream and its bounded
//! outbound queue ([`socket`]), its timing ([`liveness`]) and each
//! connection's task ([`task`]).

pub mod handshake;
pub mod liveness;
pub mod reader;
pub mod socket;
pub mod task;

pub use socket::Socket;
pub use task::WsSettings;
