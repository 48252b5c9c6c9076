//! The two protocols the load generator speaks: Switchboard's client
//! protocol and the NATS protocol over WebSocket (the baseline: nats-server's
//! own WebSocket listener). Both subscribe a connection to its channels,
//! confirm the subscription with the server, and find stamps in deliveries.

use std::net::SocketAddr;

use anyhow::{Context, bail};
use switchboard::auth::{ClientClaims, now_secs, sign_hs256};
use switchboard_proto::ChannelPattern;

use crate::net;
use crate::payload::{Stamp, scan};
use crate::rawws::{self, RawWs};

/// A subscriber's connection.
pub type Ws = RawWs;

/// A Switchboard server and the credentials to load it.
#[derive(Clone, Debug)]
pub struct Switchboard {
    /// The first pod: where operators and HTTP publishers go.
    pub addr: SocketAddr,
    /// Every pod (the first included): subscribers and WebSocket publishes
    /// are spread over them.
    pub pods: Vec<SocketAddr>,
    /// Whether the pods run in cluster mode (the result's target is named so).
    pub cluster: bool,
    pub org: String,
    /// The org's HS256 secret, to sign client tokens.
    pub secret: String,
    /// An API key with the publish scope, for HTTP publishing.
    pub api_key: String,
}

/// A nats-server: its WebSocket listener and its client port.
#[derive(Clone, Debug)]
pub struct Nats {
    pub ws_addr: SocketAddr,
    pub nats_url: String,
}

#[derive(Clone, Debug)]
pub enum Target {
    Switchboard(Switchboard),
    Nats(Nats),
}

impl Target {
    pub fn name(&self) -> &'static str {
        match self {
            Target::Switchboard(sb) if sb.cluster => "cluster",
            Target::Switchboard(_) => "switchboard",
            Target::Nats(_) => "nats",
        }
    }

    /// Opens connection `index` and subscribes it to `channels`; resolves
    /// once the server has confirmed every subscription.
    pub async fn open(&self, index: usize, channels: &[String], sources: usize) -> anyhow::Result<Ws> {
        match self {
            Target::Switchboard(sb) => sb.open(index, channels, sources).await,
            Target::Nats(n) => n.open(index, channels, sources).await,
        }
    }

    /// A reader of this target's deliveries.
    pub fn reader(&self) -> Reader {
        match self {
            Target::Switchboard(_) => Reader::Switchboard,
            Target::Nats(_) => Reader::Nats(NatsParser::default()),
        }
    }
}

impl Switchboard {
    pub fn token(&self, sub: &str, publish: bool) -> anyhow::Result<String> {
        let all = vec![ChannelPattern::new(">")?];
        let claims = ClientClaims {
            sub: sub.into(),
            org: self.org.clone(),
            exp: now_secs() + 24 * 3600,
            iat: None,
            jti: None,
            subscribe: all.clone(),
            publish: if publish { all } else { vec![] },
            send: vec![],
        };
        Ok(sign_hs256(&self.secret, &claims)?)
    }

    pub fn ws_url(&self, token: &str) -> String {
        Self::ws_url_at(self.addr, token)
    }

    pub fn ws_url_at(addr: SocketAddr, token: &str) -> String {
        format!("ws://{addr}/v1/ws?token={token}")
    }

    async fn open(&self, index: usize, channels: &[String], sources: usize) -> anyhow::Result<Ws> {
        let token = self.token(&format!("load-{index}"), false)?;
        let addr = self.pods[index % self.pods.len().max(1)];
        let stream = net::connect(addr, index, sources).await?;
        let mut ws =
            RawWs::handshake(stream, &addr.to_string(), &format!("/v1/ws?token={token}"), &[]).await?;
        for (id, channel) in channels.iter().enumerate() {
            let frame = serde_json::json!({"type": "subscribe", "id": id, "channel": channel});
            ws.send(rawws::TEXT, frame.to_string().as_bytes()).await?;
        }
        let mut acked = 0;
        while acked < channels.len() {
            let frame = ws
                .read_frame()
                .await?
                .context("closed before the subscribe ack")?;
            let text = ws.payload(&frame);
            if text.starts_with(br#"{"type":"ack""#) {
                acked += 1;
            } else if text.starts_with(br#"{"type":"error""#) {
                bail!("subscribe refused: {}", String::from_utf8_lossy(text));
            }
        }
        Ok(ws)
    }
}

impl Nats {
    async fn open(&self, index: usize, channels: &[String], sources: usize) -> anyhow::Result<Ws> {
        let stream = net::connect(self.ws_addr, index, sources).await?;
        let mut ws = RawWs::handshake(stream, &self.ws_addr.to_string(), "/", &[]).await?;
        let mut hello = String::from(
            r#"CONNECT {"verbose":false,"pedantic":false,"headers":false,"protocol":1,"lang":"load"}"#,
        );
        hello.push_str("\r\n");
        for (sid, subject) in channels.iter().enumerate() {
            hello.push_str(&format!("SUB {subject} {}\r\n", sid + 1));
        }
        // The PONG comes after the server processed every SUB before it.
        hello.push_str("PING\r\n");
        ws.send(rawws::BINARY, hello.as_bytes()).await?;
        let mut parser = NatsParser::default();
        loop {
            let frame = ws.read_frame().await?.context("closed before PONG")?;
            let mut ponged = false;
            let mut error = None;
            parser.feed(ws.payload(&frame), |event| match event {
                NatsEvent::Pong => ponged = true,
                NatsEvent::Err(e) => error = Some(e),
                _ => {}
            });
            if let Some(e) = error {
                bail!("nats refused the subscription: {e}");
            }
            if ponged {
                return Ok(ws);
            }
        }
    }
}

/// Finds deliveries in what a connection receives.
pub enum Reader {
    Switchboard,
    Nats(NatsParser),
}

impl Reader {
    /// Calls `on_stamp` for each delivery in a text or binary frame's
    /// payload; returns a reply to send back as a binary frame (NATS pings).
    pub fn read(&mut self, payload: &[u8], mut on_stamp: impl FnMut(Stamp)) -> Option<&'static [u8]> {
        match self {
            Reader::Switchboard => {
                if (payload.starts_with(br#"{"type":"message""#)
                    || payload.starts_with(br#"{"type":"token""#))
                    && let Some(stamp) = scan(payload)
                {
                    on_stamp(stamp);
                }
                None
            }
            Reader::Nats(parser) => {
                let mut ping = false;
                parser.feed(payload, |event| match event {
                    NatsEvent::Msg(payload) => {
                        if let Some(stamp) = scan(payload) {
                            on_stamp(stamp);
                        }
                    }
                    NatsEvent::Ping => ping = true,
                    _ => {}
                });
                ping.then_some(&b"PONG\r\n"[..])
            }
        }
    }
}

pub enum NatsEvent<'a> {
    Msg(&'a [u8]),
    Ping,
    Pong,
    Err(String),
    Other,
}

/// The server side of the NATS text protocol, incrementally: WebSocket
/// messages may split or join protocol lines.
#[derive(Default)]
pub struct NatsParser {
    buf: Vec<u8>,
}

impl NatsParser {
    pub fn feed(&mut self, bytes: &[u8], mut on: impl FnMut(NatsEvent)) {
        self.buf.extend_from_slice(bytes);
        let mut at = 0;
        while let Some(eol) = self.buf[at..].windows(2).position(|w| w == b"\r\n") {
            let line = &self.buf[at..at + eol];
            let body = at + eol + 2;
            if let Some(rest) = line.strip_prefix(b"MSG ") {
                // MSG <subject> <sid> [reply-to] <#bytes>
                let size = std::str::from_utf8(rest)
                    .ok()
                    .and_then(|r| r.rsplit(' ').next())
                    .and_then(|n| n.parse::<usize>().ok());
                let Some(size) = size else {
                    on(NatsEvent::Err("malformed MSG line".into()));
                    at = body;
                    continue;
                };
                if self.buf.len() < body + size + 2 {
                    break;
                }
                on(NatsEvent::Msg(&self.buf[body..body + size]));
                at = body + size + 2;
                continue;
            }
            on(match line {
                b"PING" => NatsEvent::Ping,
                b"PONG" => NatsEvent::Pong,
                l if l.starts_with(b"-ERR") => NatsEvent::Err(String::from_utf8_lossy(l).into_owned()),
                _ => NatsEvent::Other,
            });
            at = body;
        }
        self.buf.drain(..at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_parser_handles_split_and_joined_frames() {
        let stream =
            b"INFO {}\r\nMSG room 1 5\r\nhello\r\nPING\r\nMSG room 1 reply.x 3\r\nabc\r\n-ERR 'x'\r\n";
        for cut in 0..stream.len() {
            let mut p = NatsParser::default();
            let mut seen = Vec::new();
            for part in [&stream[..cut], &stream[cut..]] {
                p.feed(part, |e| {
                    seen.push(match e {
                        NatsEvent::Msg(m) => String::from_utf8_lossy(m).into_owned(),
                        NatsEvent::Ping => "PING".into(),
                        NatsEvent::Pong => "PONG".into(),
                        NatsEvent::Err(e) => e,
                        NatsEvent::Other => "other".into(),
                    })
                });
            }
            assert_eq!(
                seen,
                vec!["other", "hello", "PING", "abc", "-ERR 'x'"],
                "cut at {cut}"
            );
        }
    }
}
