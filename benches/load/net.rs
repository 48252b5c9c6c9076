//! Client sockets for many connections: spread over source addresses
//! 127.0.0.1..=127.0.0.n with `IP_BIND_ADDRESS_NO_PORT` (the port is picked at
//! connect time, per destination, so one source address is not limited to
//! ~28k ephemeral ports), and small WebSocket buffers so that 10,000 client
//! connections fit in the load generator.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use nix::sys::socket::{setsockopt, sockopt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Connects to `server` from source address 127.0.0.(1 + index % sources).
pub async fn connect(server: SocketAddr, index: usize, sources: usize) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if server.ip().is_loopback() && sources > 1 {
        setsockopt(&socket, sockopt::IpBindAddressNoPort, &true).map_err(std::io::Error::from)?;
        let source = Ipv4Addr::new(127, 0, 0, 1 + (index % sources.min(254)) as u8);
        socket.bind(SocketAddr::V4(SocketAddrV4::new(source, 0)))?;
    }
    let stream = socket.connect(server).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Small buffers: the defaults (128 KiB read buffer) would need 1.3 GB for
/// 10,000 connections.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

/// Opens a WebSocket at `url` over a socket from [`connect`].
pub async fn websocket(
    url: &str,
    server: SocketAddr,
    index: usize,
    sources: usize,
) -> anyhow::Result<WebSocketStream<TcpStream>> {
    let stream = connect(server, index, sources).await?;
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config())).await?;
    Ok(ws)
}
