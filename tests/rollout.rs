//! A rolling restart behind a load balancer loses nothing: three pods in
//! cluster mode on one nats-server, behind HAProxy health-checking `/ready`
//! (what a Kubernetes Service does); subscribers resume with `since` through
//! it, publishers publish through it, agents stream turns through it. The
//! pods get SIGTERM one at a time, each after its replacement is ready.
//! Every acknowledged message reaches every subscriber once, in order, at
//! its acknowledged offset; every turn an agent finished arrives whole;
//! no operator session is lost. `benches/rollout.sh` runs the long version
//! (`bench`, ignored here) and prints delivery latency during the roll
//! against the steady run before it.

use crate::common;

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::haproxy::{Haproxy, free_addr};
use common::nats::*;
use common::process::{Serve, sigterm, wait_exit};
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard_proto::{ServerFrame, TurnStatus};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

const CHANNEL: &str = "feed";
const PODS: usize = 3;

/// How long and how hard.
#[derive(Clone, Copy)]
struct Plan {
    steady: Duration,
    tail: Duration,
    subscribers: usize,
    publishers: usize,
    /// Messages per second per publisher.
    rate: u64,
    agents: usize,
    drain_delay_secs: u64,
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// What one subscriber saw.
#[derive(Default)]
struct Seen {
    /// (publisher, n) → offset, for every message.
    messages: HashMap<(u64, u64), u64>,
    /// Frames at or below an offset already seen (never allowed), after it.
    duplicates: Vec<(u64, String)>,
    /// Resumes answered `recovered: false` (history lost): since, the ack.
    unrecovered: Vec<(u64, String)>,
    /// Finished turns: id → (text, done).
    turns: HashMap<String, (String, bool)>,
    /// (publish time µs, latency µs) of each message.
    latencies: Vec<(u64, u64)>,
    reconnects: u32,
}

/// Subscribes through the load balancer and keeps resuming until it has
/// seen offset `end` (once `end` is known).
async fn subscriber(
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
struct Published {
    acked: HashMap<u64, u64>,
    failed: u64,
}

async fn publisher(lb: String, key: String, p: u64, rate: u64, stop: CancellationToken) -> Published {
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
struct Streamed {
    finished: Vec<(String, String)>,
    cut_short: Vec<String>,
    session_lost: Option<String>,
    reconnects: u32,
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

async fn agent(lb: String, key: String, a: usize, stop: CancellationToken) -> Streamed {
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
async fn call_at(lb: &str, path: &str, key: &str, body: Value) -> (u16, Value) {
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

async fn ready(addr: &str) {
    eventually("a new pod is ready", async || {
        reqwest::get(format!("http://{addr}/ready"))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
}

/// Latency percentiles (ms) of the deliveries whose publish time is in `[from, to)`.
fn percentiles(seen: &[Seen], from: u64, to: u64) -> (usize, f64, f64) {
    let mut all: Vec<u64> = seen
        .iter()
        .flat_map(|s| s.latencies.iter())
        .filter(|(t, _)| *t >= from && *t < to)
        .map(|(_, l)| *l)
        .collect();
    all.sort_unstable();
    let at = |q: f64| {
        all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1)))
            .map_or(0.0, |v| *v as f64 / 1000.0)
    };
    (all.len(), at(0.5), at(0.99))
}

async fn roll(plan: Plan) {
    let nats = Nats::start().await;
    let processes = ProcessPods::new(&nats, |c| {
        c.shutdown.drain_delay_secs = Some(plan.drain_delay_secs);
        c.shutdown.grace_secs = Some(10);
        c.limits.publish_rate = Some(0);
    });
    let slots: Vec<String> = (0..2 * PODS).map(|_| free_addr().to_string()).collect();
    let mut pods: Vec<Serve> = slots[..PODS].iter().map(|s| processes.serve_at(s)).collect();
    let balancer = Haproxy::start(&slots.iter().map(|s| s.parse().unwrap()).collect::<Vec<_>>());
    let lb = balancer.addr.to_string();
    ready(&lb).await;
    let key = processes.key("acme").to_owned();

    let (end_tx, end_rx) = tokio::sync::watch::channel(0u64);
    let (subscribed, mut acks) = tokio::sync::mpsc::channel(plan.subscribers * 64);
    let subscribers: Vec<_> = (0..plan.subscribers)
        .map(|i| {
            tokio::spawn(subscriber(
                lb.clone(),
                format!("s{i}"),
                subscribed.clone(),
                end_rx.clone(),
            ))
        })
        .collect();
    for _ in 0..plan.subscribers {
        tokio::time::timeout(PATIENCE, acks.recv())
            .await
            .expect("subscribed in time");
    }
    let stop = CancellationToken::new();
    let publishers: Vec<_> = (0..plan.publishers as u64)
        .map(|p| tokio::spawn(publisher(lb.clone(), key.clone(), p, plan.rate, stop.clone())))
        .collect();
    let agents: Vec<_> = (0..plan.agents)
        .map(|a| tokio::spawn(agent(lb.clone(), key.clone(), a, stop.clone())))
        .collect();

    let started = now_micros();
    tokio::time::sleep(plan.steady).await;
    let roll_start = now_micros();
    let rolled = Instant::now();
    for (i, slot) in slots[PODS..].iter().enumerate() {
        let fresh = processes.serve_at(slot);
        ready(slot).await;
        // The balancer's next health check sees it.
        tokio::time::sleep(Duration::from_millis(500)).await;
        sigterm(&pods[i].child);
        let status = tokio::task::block_in_place(|| wait_exit(&mut pods[i].child));
        assert!(status.success(), "pod {i} drained and exited cleanly: {status}");
        pods.push(fresh);
    }
    let roll_end = now_micros();
    let roll_took = rolled.elapsed();
    tokio::time::sleep(plan.tail).await;
    stop.cancel();
    let mut published = Vec::new();
    for p in publishers {
        published.push(p.await.unwrap());
    }
    let mut streamed = Vec::new();
    for a in agents {
        streamed.push(a.await.unwrap());
    }
    // The last word, acknowledged: every subscriber reads up to it.
    let (status, last) = call_at(
        &lb,
        &format!("/v1/orgs/acme/channels/{CHANNEL}/publish"),
        &key,
        json!({"data": "end"}),
    )
    .await;
    assert_eq!(status, 200, "{last}");
    end_tx.send(last["offset"].as_u64().unwrap()).unwrap();
    let mut seen = Vec::new();
    for s in subscribers {
        seen.push(
            tokio::time::timeout(PATIENCE * 3, s)
                .await
                .expect("subscribers catch up")
                .unwrap(),
        );
    }

    // Every acknowledged message, once, at its offset, at every subscriber.
    let acked: usize = published.iter().map(|p| p.acked.len()).sum();
    assert!(
        acked as u64 > plan.rate,
        "publishing went on ({acked} acknowledged)"
    );
    for (i, s) in seen.iter().enumerate() {
        assert!(
            s.duplicates.is_empty(),
            "subscriber {i} got offsets again: {:?}",
            s.duplicates
        );
        assert!(
            s.unrecovered.is_empty(),
            "subscriber {i} was told history was lost: {:?}",
            s.unrecovered
        );
        for (p, publisher) in published.iter().enumerate() {
            for (n, offset) in &publisher.acked {
                assert_eq!(
                    s.messages.get(&(p as u64, *n)),
                    Some(offset),
                    "subscriber {i}: message {p}/{n}, acknowledged at {offset}"
                );
            }
        }
    }
    // Every finished turn, whole, at every subscriber; no session lost.
    let finished: usize = streamed.iter().map(|a| a.finished.len()).sum();
    assert!(finished > 0, "agents streamed turns");
    for (a, agent) in streamed.iter().enumerate() {
        assert_eq!(agent.session_lost, None, "agent {a}'s session");
        assert!(
            agent.cut_short.is_empty(),
            "agent {a}'s turns cut short: {:?}",
            agent.cut_short
        );
        for (turn, text) in &agent.finished {
            for (i, s) in seen.iter().enumerate() {
                assert_eq!(
                    s.turns.get(turn),
                    Some(&(text.clone(), true)),
                    "subscriber {i}: turn {turn}"
                );
            }
        }
    }
    let (steady_n, steady_p50, steady_p99) = percentiles(&seen, started, roll_start);
    let (roll_n, roll_p50, roll_p99) = percentiles(&seen, roll_start, roll_end);
    let failed: u64 = published.iter().map(|p| p.failed).sum();
    let reconnects: u32 = seen.iter().map(|s| s.reconnects).sum();
    let agent_reconnects: u32 = streamed.iter().map(|a| a.reconnects).sum();
    println!(
        "rollout: {PODS} pods replaced in {:.1} s; {acked} messages acknowledged ({failed} refused or cut, none of them counted), \
         {finished} turns finished, 0 lost, 0 duplicated; subscriber reconnects {reconnects}, agent reconnects {agent_reconnects}",
        roll_took.as_secs_f64()
    );
    println!(
        "delivery latency: steady p50 {steady_p50:.2} ms p99 {steady_p99:.2} ms ({steady_n} deliveries); \
         during the roll p50 {roll_p50:.2} ms p99 {roll_p99:.2} ms ({roll_n} deliveries); p99 ratio {:.2}",
        if steady_p99 > 0.0 {
            roll_p99 / steady_p99
        } else {
            0.0
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_behind_a_load_balancer_loses_nothing() {
    roll(Plan {
        steady: Duration::from_secs(2),
        tail: Duration::from_secs(1),
        subscribers: 3,
        publishers: 2,
        rate: 20,
        agents: 2,
        drain_delay_secs: 1,
    })
    .await;
}

/// The long run `benches/rollout.sh` reports (`ROLLOUT_STEADY_SECS`, default 20).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: benches/rollout.sh"]
async fn bench() {
    let steady = std::env::var("ROLLOUT_STEADY_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    roll(Plan {
        steady: Duration::from_secs(steady),
        tail: Duration::from_secs(5),
        subscribers: 20,
        publishers: 4,
        rate: 50,
        agents: 4,
        drain_delay_secs: 2,
    })
    .await;
}
