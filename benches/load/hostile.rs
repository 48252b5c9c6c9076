//! The `abuse` scenario's hostile connections, beside the honest subscribers
//! of a fan-out run. Each does one thing, over and over, until the run ends:
//! - a slow reader subscribes to a channel of 60 KB messages and never reads
//!   (it reconnects every ten seconds, whether or not it was cut off);
//! - a churner subscribes to and unsubscribes from fresh channel names as fast
//!   as the server answers;
//! - an announcer sends a frame header announcing 64 KiB and nothing more
//!   (it reconnects every fifteen seconds).
//!
//! A bulk publisher feeds the slow readers' channel meanwhile. The same
//! behaviours are spoken to both targets: Switchboard's client protocol and
//! the NATS protocol over nats-server's WebSocket listener.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpSocket;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::net;
use crate::rawws::{self, RawWs};
use crate::target::{NatsEvent, NatsParser, Target};

/// The slow readers' channel and its messages.
pub const BULK_CHANNEL: &str = "bulk";
const BULK_BYTES: usize = 60_000;
const BULK_RATE: f64 = 10.0;
/// A slow reader's receive buffer: it backs up into the server at once.
const SLOW_RCVBUF: u32 = 64 * 1024;
const SLOW_HOLD: Duration = Duration::from_secs(10);
const ANNOUNCE_HOLD: Duration = Duration::from_secs(15);
/// Subscribe/unsubscribe pairs a churner sends before reading the answers.
const CHURN_WINDOW: u64 = 8;
/// A frame header announcing a 65,535-byte masked text frame.
const ANNOUNCE: [u8; 8] = [0x81, 0xFE, 0xFF, 0xFF, 1, 2, 3, 4];

/// What the hostile connections did.
#[derive(Debug, Default)]
pub struct Counts {
    /// Connections opened (reconnects included).
    pub connects: AtomicU64,
    /// Subscribe and unsubscribe requests the churners had answered.
    pub churned: AtomicU64,
    /// Bulk messages published.
    pub bulk: AtomicU64,
}

/// Runs `n` hostile connections and the bulk publisher until `stop` turns true.
pub async fn run(target: Target, n: usize, stop: watch::Receiver<bool>) -> Arc<Counts> {
    let counts = Arc::new(Counts::default());
    let mut tasks = JoinSet::new();
    for i in 0..n {
        let (target, counts, stop) = (target.clone(), Arc::clone(&counts), stop.clone());
        tasks.spawn(async move {
            // Errors only end one attempt: a hostile client comes back.
            while !*stop.borrow() {
                counts.connects.fetch_add(1, Ordering::Relaxed);
                let attempt = match i % 3 {
                    0 => slow_reader(&target, i, stop.clone()).await,
                    1 => churner(&target, i, &counts, stop.clone()).await,
                    _ => announcer(&target, i, stop.clone()).await,
                };
                if attempt.is_err() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
    }
    {
        let (target, counts, stop) = (target.clone(), Arc::clone(&counts), stop.clone());
        tasks.spawn(async move {
            if let Err(e) = bulk(&target, &counts, stop).await {
                eprintln!("bulk publisher: {e:#}");
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    counts
}

/// Waits for `stop` or `hold`, whichever comes first.
async fn hold(mut stop: watch::Receiver<bool>, hold: Duration) {
    let _ = tokio::time::timeout(hold, stop.wait_for(|s| *s)).await;
}

fn ws_addr(target: &Target) -> SocketAddr {
    match target {
        Target::Switchboard(sb) => sb.addr,
        Target::Nats(n) => n.ws_addr,
    }
}

/// A WebSocket from a socket with a receive buffer of `rcvbuf` bytes, if given.
async fn open(target: &Target, i: usize, rcvbuf: Option<u32>) -> anyhow::Result<RawWs> {
    let addr = ws_addr(target);
    let socket = TcpSocket::new_v4()?;
    if let Some(bytes) = rcvbuf {
        socket.set_recv_buffer_size(bytes)?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    let path = match target {
        Target::Switchboard(sb) => format!("/v1/ws?token={}", sb.token(&format!("hostile-{i}"), true)?),
        Target::Nats(_) => "/".into(),
    };
    let mut ws = RawWs::handshake(stream, &addr.to_string(), &path, &[]).await?;
    if let Target::Nats(_) = target {
        let hello =
            r#"CONNECT {"verbose":false,"pedantic":false,"headers":false,"protocol":1,"lang":"load"}"#;
        ws.send(rawws::BINARY, format!("{hello}\r\n").as_bytes()).await?;
    }
    Ok(ws)
}

/// Reads until `done` says the answers it waits for are in.
async fn read_until(
    ws: &mut RawWs,
    target: &Target,
    mut done: impl FnMut(&[u8]) -> bool,
) -> anyhow::Result<()> {
    let mut nats = NatsParser::default();
    loop {
        let frame = ws.read_frame().await?.context("closed")?;
        let payload = ws.payload(&frame);
        let finished = match target {
            Target::Switchboard(_) => done(payload),
            Target::Nats(_) => {
                let mut pong = false;
                nats.feed(payload, |e| pong |= matches!(e, NatsEvent::Pong));
                pong && done(b"PONG")
            }
        };
        if finished {
            return Ok(());
        }
    }
}

async fn slow_reader(target: &Target, i: usize, stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let mut ws = open(target, i, Some(SLOW_RCVBUF)).await?;
    match target {
        Target::Switchboard(_) => {
            let sub = format!(r#"{{"type":"subscribe","id":1,"channel":"{BULK_CHANNEL}"}}"#);
            ws.send(rawws::TEXT, sub.as_bytes()).await?;
            read_until(&mut ws, target, |p| p.starts_with(br#"{"type":"ack""#)).await?;
        }
        Target::Nats(_) => {
            ws.send(
                rawws::BINARY,
                format!("SUB {BULK_CHANNEL} 1\r\nPING\r\n").as_bytes(),
            )
            .await?;
            read_until(&mut ws, target, |_| true).await?;
        }
    }
    hold(stop, SLOW_HOLD).await;
    Ok(())
}

async fn churner(
    target: &Target,
    i: usize,
    counts: &Counts,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut ws = open(target, i, None).await?;
    let mut n = 0u64;
    while !*stop.borrow() {
        match target {
            Target::Switchboard(_) => {
                for k in n..n + CHURN_WINDOW {
                    let channel = format!("churn.{i}.{k}");
                    for (kind, id) in [("subscribe", 2 * k), ("unsubscribe", 2 * k + 1)] {
                        let frame = format!(r#"{{"type":"{kind}","id":{id},"channel":"{channel}"}}"#);
                        ws.send(rawws::TEXT, frame.as_bytes()).await?;
                    }
                }
                let mut answers = 0;
                read_until(&mut ws, target, |p| {
                    answers +=
                        u64::from(p.starts_with(br#"{"type":"ack""#) || p.starts_with(br#"{"type":"error""#));
                    answers == 2 * CHURN_WINDOW
                })
                .await?;
            }
            Target::Nats(_) => {
                let mut window = String::new();
                for k in n..n + CHURN_WINDOW {
                    let sid = k + 1;
                    window.push_str(&format!("SUB churn.{i}.{k} {sid}\r\nUNSUB {sid}\r\n"));
                }
                window.push_str("PING\r\n");
                ws.send(rawws::BINARY, window.as_bytes()).await?;
                read_until(&mut ws, target, |_| true).await?;
            }
        }
        n += CHURN_WINDOW;
        counts.churned.fetch_add(2 * CHURN_WINDOW, Ordering::Relaxed);
    }
    Ok(())
}

async fn announcer(target: &Target, i: usize, stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let mut ws = open(target, i, None).await?;
    ws.write_raw(&ANNOUNCE).await?;
    hold(stop, ANNOUNCE_HOLD).await;
    Ok(())
}

/// 60 KB messages on the slow readers' channel, ten a second.
async fn bulk(target: &Target, counts: &Counts, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let pad = "b".repeat(BULK_BYTES);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / BULK_RATE));
    match target {
        Target::Switchboard(sb) => {
            let token = sb.token("hostile-bulk", true)?;
            let ws = net::websocket(&sb.ws_url(&token), sb.addr, 0, 1).await?;
            let (mut tx, mut rx) = ws.split();
            // Its acks are read, so the publisher is never the slow one.
            let acks = tokio::spawn(async move { while let Some(Ok(_)) = rx.next().await {} });
            let mut id = 0u64;
            let published = async {
                loop {
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => return Ok(()),
                        _ = tick.tick() => {}
                    }
                    id += 1;
                    let frame = format!(
                        r#"{{"type":"publish","id":{id},"channel":"{BULK_CHANNEL}","data":"{pad}"}}"#
                    );
                    tx.send(Message::text(frame)).await?;
                    counts.bulk.fetch_add(1, Ordering::Relaxed);
                }
            }
            .await;
            acks.abort();
            published
        }
        Target::Nats(n) => {
            let client = async_nats::connect(&n.nats_url).await?;
            loop {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return Ok(()),
                    _ = tick.tick() => {}
                }
                client
                    .publish(BULK_CHANNEL, pad.clone().into_bytes().into())
                    .await?;
                counts.bulk.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
