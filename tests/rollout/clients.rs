//! The clients of the rolling-restart proof, all through the load
//! balancer: a subscriber that resumes with `since`, a publisher over HTTP
//! and an agent streaming turns on an operator session.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard_proto::{ServerFrame, TurnStatus};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::CHANNEL;
use crate::common::{PATIENCE, Session, token, upgrade_request};

pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// What one subscriber saw.
#[derive(Default)]
pub struct Seen {
    /// (publisher, n) → offset, for every message.
    pub messages: HashMap<(u64, u64), u64>,
    /// Frames at or below an offset already seen (never allowed), after it.
    pub duplicates: Vec<(u64, String)>,
    /// Resumes answered `recovered: false` (history lost): since, the ack.
    pub unrecovered: Vec<(u64, String)>,
    /// Finished turns: id → (text, done).
    pub turns: HashMap<String, (String, bool)>,
    /// (publish time µs, latency µs) of each message.
    pub latencies: Vec<(u64, u64)>,
    pub reconnects: u32,
}

/// Subscribes through the load balancer and keeps resuming until it has
/// seen offset `end` (once `end` is known).
pub async fn subscriber(
    lb: String,
    sub: String,
    subscribed: tokio::sync::mpsc::Sender<()>,
    end: tokio::sync::watch::Receiver<u64>,
) -> Seen {
    let url = format!("ws://{lb}/v1/ws?token={}", token("acme", &sub, &[">"], &[">"]));
    let mut seen = Seen::default();
    let (mut last, mut epoch): (u64, Option<String>) = (0, None);
    let mut live: HashMap<String, String> = HashMap::new();
    let mut recent: Vec<String> = Vec::new();
    let done = |last: u64| {
        let end = *end.borrow();
        end > 0 && last >= end
    };
    loop {
        if done(last) {
            return seen;
        }
        let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url.as_str()).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let mut subscribe = json!({"type": "subscribe", "id": 1, "channel": CHANNEL});
        if let Some(e) = &epoch {
            subscribe["since"] = json!(last);
            subscribe["epoch"] = json!(e);
        }
        if ws.send(Message::text(subscribe.to_string())).await.is_err() {
            continue;
        }
        loop {
            if done(last) {
                return seen;
            }
            let next = tokio::time::timeout(Duration::from_millis(200), ws.next()).await;
            let text = match next {
                Err(_) => continue,
                Ok(Some(Ok(Message::Text(text)))) => text,
                Ok(Some(Ok(_))) => continue,
                Ok(_) => break,
            };
            let Ok(frame) = ServerFrame::decode(text.as_bytes()) else {
                continue;
            };
            if let ServerFrame::Ack(ack) = &frame {
                if ack.recovered == Some(false) {
                    seen.unrecovered.push((last, text.to_string()));
                }
                let _ = subscribed.try_send(());
                epoch = ack.epoch.as_ref().map(|e| e.to_string());
                continue;
            }
            if let ServerFrame::TurnSnapshot {
                turn, text_so_far, ..
            } = &frame
            {
                live.insert(turn.to_string(), text_so_far.clone());
                continue;
            }
            let Some(offset) = frame.offset() else { continue };
            if offset <= last {
                seen.duplicates.push((last, format!("{text} after {recent:?}")));
                continue;
            }
            recent.push(text.to_string());
            if recent.len() > 4 {
                recent.remove(0);
            }
            last = offset;
            match frame {
                ServerFrame::Message { data, .. } => {
                    let data: Value = serde_json::from_str(data.get()).unwrap_or(Value::Null);
                    if let (Some(p), Some(n), Some(t)) =
                        (data["p"].as_u64(), data["n"].as_u64(), data["t"].as_u64())
                    {
                        seen.messages.insert((p, n), offset);
                        seen.latencies.push((t, now_micros().saturating_sub(t)));
                    }
                }
                ServerFrame::TurnStart { turn, .. } => {
                    live.insert(turn.to_string(), String::new());
                }
                ServerFrame::Token { turn, text, .. } => {
                    live.entry(turn.to_string()).or_default().push_str(&text);
                }
                ServerFrame::TurnEnd { turn, .. } => {
                    let text = live.remove(turn.as_str()).unwrap_or_default();
                    seen.turns.insert(turn.to_string(), (text, true));
                }
                ServerFrame::TurnError { turn, .. } => {
                    let text = live.remove(turn.as_str()).unwrap_or_default();
                    seen.turns.insert(turn.to_string(), (text, false));
                }
                ServerFrame::Turn {
                    turn, text, status, ..
                } => {
                    live.remove(turn.as_str());
                    seen.turns
                        .insert(turn.to_string(), (text, status == TurnStatus::Done));
                }
                _ => {}
            }
        }
        seen.reconnects += 1;
        recent.push(format!("reconnect at {last}"));
    }
}

/// What one publisher had acknowledged: n → offset; and how many failed.
pub struct Published {
    pub acked: HashMap<u64, u64>,
    pub failed: u64,
}

pub async fn publisher(lb: String, key: String, p: u64, rate: u64, stop: CancellationToken) -> Published {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let url = format!("http://{lb}/v1/orgs/acme/channels/{CHANNEL}/publish");
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    let mut out = Published {
        acked: HashMap::new(),
        failed: 0,
    };
    for n in 1.. {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let body = json!({"data": {"p": p, "n": n, "t": now_micros()}});
        let sent = http.post(&url).bearer_auth(&key).json(&body).send().await;
        let offset = match sent {
            Ok(res) if res.status() == 200 => {
                res.json::<Value>().await.ok().and_then(|v| v["offset"].as_u64())
            }
            _ => None,
        };
        match offset {
            Some(offset) => {
                out.acked.insert(n, offset);
            }
            None => out.failed += 1,
        }
    }
    out
}

/// What one agent did: the turns it finished (id → text), those cut short,
/// and whether its session was ever refused.
#[derive(Default)]
pub struct Streamed {
    pub finished: Vec<(String, String)>,
    pub cut_short: Vec<String>,
    pub session_lost: Option<String>,
    pub reconnects: u32,
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Waits for the ack of request `id`; false if the socket went first.
async fn acked(ws: &mut Socket, id: u64) -> bool {
    loop {
        let Ok(Some(Ok(msg))) = tokio::time::timeout(PATIENCE, ws.next()).await else {
            return false;
        };
        let Message::Text(text) = msg else { continue };
        match ServerFrame::decode(text.as_bytes()) {
            Ok(ServerFrame::Ack(ack)) if ack.id == switchboard_proto::RequestId::Num(id) => return true,
            Ok(ServerFrame::Error { id: Some(got), .. }) if got == switchboard_proto::RequestId::Num(id) => {
                return false;
            }
            _ => {}
        }
    }
}

pub async fn agent(lb: String, key: String, a: usize, stop: CancellationToken) -> Streamed {
    let mut out = Streamed::default();
    let (status, minted) = call_at(
        &lb,
        "/v1/operators",
        &key,
        json!({"roles": [format!("agent-{a}")]}),
    )
    .await;
    assert_eq!(status, 201, "{minted}");
    let session = Session {
        sid: minted["sid"].as_str().unwrap().into(),
        token: minted["token"].as_str().unwrap().into(),
    };
    let url = format!("ws://{lb}/v1/operators/{}/ws", session.sid);
    let bearer = format!("Bearer {}", session.token);
    let mut ws: Option<Socket> = None;
    let mut id = 0;
    for k in 0.. {
        if stop.is_cancelled() {
            break;
        }
        let socket = match ws.as_mut() {
            Some(ws) => ws,
            None => {
                match tokio_tungstenite::connect_async(upgrade_request(&url, &[("authorization", &bearer)]))
                    .await
                {
                    Ok((socket, _)) => ws.insert(socket),
                    Err(tokio_tungstenite::tungstenite::Error::Http(res))
                        if res.status().is_client_error() =>
                    {
                        out.session_lost = Some(format!("reconnect refused: {}", res.status()));
                        break;
                    }
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                }
            }
        };
        let turn = format!("a{a}-{k}");
        id += 1;
        let start = json!({"type": "turn_start", "id": id, "turn": turn, "channel": CHANNEL, "rollup_ms": 0});
        if socket.send(Message::text(start.to_string())).await.is_err() || !acked(socket, id).await {
            // Not started here (the pod was leaving): a new turn on the next socket.
            ws = None;
            out.reconnects += 1;
            continue;
        }
        let mut text = String::new();
        let mut sent = true;
        for j in 0..10 {
            let token = format!("{k}.{j} ");
            text.push_str(&token);
            let frame = json!({"type": "token", "turn": turn, "text": token});
            sent = sent && socket.send(Message::text(frame.to_string())).await.is_ok();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        id += 1;
        let end = json!({"type": "turn_end", "id": id, "turn": turn});
        if sent && socket.send(Message::text(end.to_string())).await.is_ok() && acked(socket, id).await {
            out.finished.push((turn, text));
        } else {
            out.cut_short.push(turn);
            ws = None;
            out.reconnects += 1;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    out
}

/// `POST path` through the load balancer with an API key.
pub async fn call_at(lb: &str, path: &str, key: &str, body: Value) -> (u16, Value) {
    let res = reqwest::Client::new()
        .post(format!("http://{lb}{path}"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}
