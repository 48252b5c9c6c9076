//! Open-loop publishers: message `i` is due at `t0 + i/R`, stamped with that
//! scheduled time and sent when due (or at once when behind), never paced by
//! the server's replies. A channel's messages always leave from one lane, in
//! order, so every subscriber can check its sequence.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::net;
use crate::payload::{stamped, stamped_text};
use crate::scenario::Plan;
use crate::target::{Switchboard, Target};

/// How messages reach the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// `POST /v1/orgs/:org/channels/:channel/publish` (Switchboard).
    Http,
    /// `publish` frames on one client WebSocket (Switchboard).
    Ws,
    /// Core NATS publishes on one TCP connection (the nats-server baseline).
    Nats,
    /// One operator session streaming a turn per channel (Switchboard).
    Operator,
}

/// HTTP lanes: independent keep-alive connections, each owning a share of the channels.
const HTTP_LANES: usize = 8;

#[derive(Debug, Default)]
pub struct Published {
    /// Messages published per channel id.
    pub per_channel: Vec<u64>,
    pub errors: u64,
    /// How far behind schedule the publisher fell at worst.
    pub max_lag: Duration,
}

/// The schedule: when message `i` is due, as an instant and as wall-clock µs.
#[derive(Clone, Copy)]
pub struct Schedule {
    pub start: Instant,
    pub start_us: u64,
    pub rate: f64,
}

impl Schedule {
    fn due(&self, i: u64) -> (Instant, u64) {
        let offset = Duration::from_secs_f64(i as f64 / self.rate);
        (self.start + offset, self.start_us + offset.as_micros() as u64)
    }
}

/// Publishes the whole plan on `target`.
pub async fn publish(
    target: &Target,
    plan: &Plan,
    via: Via,
    schedule: Schedule,
) -> anyhow::Result<Published> {
    let plan = Arc::new(plan.clone());
    match (target, via) {
        (Target::Switchboard(sb), Via::Http) => http(sb, plan, schedule).await,
        (Target::Switchboard(sb), Via::Ws) => ws(sb, plan, schedule).await,
        (Target::Nats(n), Via::Nats) => nats(&n.nats_url, plan, schedule).await,
        (Target::Switchboard(sb), Via::Operator) => operator(sb, plan, schedule).await,
        (t, v) => bail!("{} cannot be published to via {v:?}", t.name()),
    }
}

/// Walks the schedule over the messages a lane owns: each comes out when
/// due, and the lane reports whether it went out.
struct Ticks<'a, F: Fn(u32) -> bool> {
    plan: &'a Plan,
    schedule: Schedule,
    owns: F,
    next: u64,
    out: Published,
    /// Stamp as plain text (token text) rather than a JSON object.
    text: bool,
}

impl<'a, F: Fn(u32) -> bool> Ticks<'a, F> {
    fn new(plan: &'a Plan, schedule: Schedule, owns: F) -> Self {
        let out = Published {
            per_channel: vec![0; plan.channel_count()],
            ..Published::default()
        };
        Self {
            plan,
            schedule,
            owns,
            next: 0,
            out,
            text: false,
        }
    }

    /// The next message this lane owns, once it is due: (channel, payload).
    async fn next(&mut self) -> Option<(u32, String)> {
        while self.next < self.plan.messages() {
            let i = self.next;
            self.next += 1;
            let channel = self.plan.channel_for(i);
            if !(self.owns)(channel) {
                continue;
            }
            let (due, due_us) = self.schedule.due(i);
            let now = Instant::now();
            if now < due {
                tokio::time::sleep_until(due).await;
            } else {
                self.out.max_lag = self.out.max_lag.max(now - due);
            }
            let seq = self.out.per_channel[channel as usize] + 1;
            let payload = if self.text { stamped_text } else { stamped };
            return Some((channel, payload(channel, seq, due_us, self.plan.payload)));
        }
        None
    }

    /// Records whether the message handed out last for `channel` was sent.
    fn sent(&mut self, channel: u32, ok: bool) {
        if ok {
            self.out.per_channel[channel as usize] += 1;
        } else {
            self.out.errors += 1;
        }
    }
}

fn merge(parts: Vec<Published>) -> Published {
    let mut total = Published::default();
    for p in parts {
        if total.per_channel.len() < p.per_channel.len() {
            total.per_channel.resize(p.per_channel.len(), 0);
        }
        for (t, c) in total.per_channel.iter_mut().zip(&p.per_channel) {
            *t += c;
        }
        total.errors += p.errors;
        total.max_lag = total.max_lag.max(p.max_lag);
    }
    total
}

async fn http(sb: &Switchboard, plan: Arc<Plan>, schedule: Schedule) -> anyhow::Result<Published> {
    let mut lanes = Vec::new();
    for lane in 0..HTTP_LANES {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .tcp_nodelay(true)
            .build()?;
        let plan = Arc::clone(&plan);
        let base = format!("http://{}/v1/orgs/{}/channels", sb.addr, sb.org);
        let key = sb.api_key.clone();
        lanes.push(tokio::spawn(async move {
            let mut ticks = Ticks::new(&plan, schedule, |c| c as usize % HTTP_LANES == lane);
            while let Some((channel, payload)) = ticks.next().await {
                let sent = client
                    .post(format!("{base}/{}/publish", plan.channel_name(channel)))
                    .bearer_auth(&key)
                    .header("content-type", "application/json")
                    .body(format!(r#"{{"data":{payload}}}"#))
                    .send()
                    .await;
                ticks.sent(channel, sent.is_ok_and(|r| r.status().is_success()));
            }
            ticks.out
        }));
    }
    let mut parts = Vec::new();
    for lane in lanes {
        parts.push(lane.await?);
    }
    Ok(merge(parts))
}

/// Runs `lane(i)` for each of the plan's publishers and adds up what they published.
async fn lanes<F, Fut>(plan: &Plan, lane: F) -> anyhow::Result<Published>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<Published>> + Send + 'static,
{
    let tasks: Vec<_> = (0..plan.publishers.max(1))
        .map(|i| tokio::spawn(lane(i)))
        .collect();
    let mut parts = Vec::new();
    for task in tasks {
        parts.push(task.await??);
    }
    Ok(merge(parts))
}

/// Whether publisher `lane` owns `channel`.
fn owned(plan: &Plan, lane: usize) -> impl Fn(u32) -> bool {
    let n = plan.publishers.max(1);
    move |c| c as usize % n == lane
}

async fn ws(sb: &Switchboard, plan: Arc<Plan>, schedule: Schedule) -> anyhow::Result<Published> {
    lanes(&plan, |lane| {
        ws_lane(sb.clone(), Arc::clone(&plan), schedule, lane)
    })
    .await
}

/// One publisher lane: a socket to every pod, messages sent on each in turn
/// (one pod: one socket). Before it switches sockets it waits until the
/// last one answered everything sent on it, as a client moving between
/// pods must to keep its order (what that costs shows in latency).
async fn ws_lane(
    sb: Switchboard,
    plan: Arc<Plan>,
    schedule: Schedule,
    lane: usize,
) -> anyhow::Result<Published> {
    let token = sb.token(&format!("load-publisher-{lane}"), true)?;
    let mut senders = Vec::new();
    let mut readers = Vec::new();
    let mut answers = Vec::new();
    for addr in &sb.pods {
        let ws = net::websocket(&Switchboard::ws_url_at(*addr, &token), *addr, 0, 1).await?;
        let (tx, rx) = ws.split();
        let (answered, watch) = tokio::sync::watch::channel(0u64);
        senders.push(tx);
        answers.push(watch);
        readers.push(tokio::spawn(count_answers(rx, answered)));
    }
    let mut sent = vec![0u64; senders.len()];
    let mut last: Option<usize> = None;
    let mut ticks = Ticks::new(&plan, schedule, owned(&plan, lane));
    let mut id = 0u64;
    while let Some((channel, payload)) = ticks.next().await {
        id += 1;
        let frame = format!(
            r#"{{"type":"publish","id":{id},"channel":"{}","data":{payload}}}"#,
            plan.channel_name(channel)
        );
        let k = id as usize % senders.len();
        if let Some(j) = last.filter(|j| *j != k) {
            let want = sent[j];
            let _ = answers[j].wait_for(|n| *n >= want).await;
        }
        let ok = senders[k].send(Message::text(frame)).await.is_ok();
        sent[k] += 1;
        last = Some(k);
        ticks.sent(channel, ok);
    }
    let mut out = ticks.out;
    // Let the last acks arrive before closing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for mut tx in senders {
        let _ = tx.close().await;
    }
    for errors in readers {
        out.errors += tokio::time::timeout(Duration::from_secs(5), errors)
            .await
            .context("publisher reader")??;
    }
    Ok(out)
}

async fn nats(url: &str, plan: Arc<Plan>, schedule: Schedule) -> anyhow::Result<Published> {
    lanes(&plan, |lane| {
        nats_lane(url.to_owned(), Arc::clone(&plan), schedule, lane)
    })
    .await
}

async fn nats_lane(
    url: String,
    plan: Arc<Plan>,
    schedule: Schedule,
    lane: usize,
) -> anyhow::Result<Published> {
    let client = async_nats::connect(url).await?;
    let mut ticks = Ticks::new(&plan, schedule, owned(&plan, lane));
    while let Some((channel, payload)) = ticks.next().await {
        let sent = client
            .publish(plan.channel_name(channel), payload.into_bytes().into())
            .await;
        ticks.sent(channel, sent.is_ok());
    }
    client.flush().await?;
    Ok(ticks.out)
}

/// Counts the error replies on a publisher's socket until it closes: the
/// schedule is open-loop, so replies are counted, never waited for.
async fn count_errors(rx: impl futures_util::Stream<Item = Result<Message, WsError>> + Unpin) -> u64 {
    count_answers(rx, tokio::sync::watch::Sender::new(0)).await
}

/// Counts error answers, and every answer (ack or error) in `answered`.
async fn count_answers(
    mut rx: impl futures_util::Stream<Item = Result<Message, WsError>> + Unpin,
    answered: tokio::sync::watch::Sender<u64>,
) -> u64 {
    let mut errors = 0;
    while let Some(Ok(msg)) = rx.next().await {
        if let Message::Text(t) = msg {
            if t.contains(r#""type":"error""#) {
                errors += 1;
            }
            if t.contains(r#""type":"ack""#) || t.contains(r#""type":"error""#) {
                answered.send_modify(|n| *n += 1);
            }
        }
    }
    errors
}

/// Mints an operator session, opens a turn on every channel, streams the
/// schedule as tokens, and ends the turns.
async fn operator(sb: &Switchboard, plan: Arc<Plan>, schedule: Schedule) -> anyhow::Result<Published> {
    let res = reqwest::Client::new()
        .post(format!("http://{}/v1/operators", sb.addr))
        .bearer_auth(&sb.api_key)
        .json(&serde_json::json!({}))
        .send()
        .await?;
    if !res.status().is_success() {
        bail!("minting an operator session failed: {}", res.status());
    }
    let session: serde_json::Value = res.json().await?;
    let (Some(sid), Some(token)) = (session["sid"].as_str(), session["token"].as_str()) else {
        bail!("no sid or token in {session}");
    };
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
        "ws://{}/v1/operators/{sid}/ws",
        sb.addr
    ))?;
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let stream = net::connect(sb.addr, 0, 1).await?;
    let (ws, _) = tokio_tungstenite::client_async_with_config(req, stream, Some(net::ws_config())).await?;
    let (mut tx, mut rx) = ws.split();
    let channels = plan.channel_count();
    for c in 0..channels {
        let start = serde_json::json!({"type": "turn_start", "id": c, "turn": format!("t{c}"), "channel": plan.channel_name(c as u32)});
        tx.send(Message::text(start.to_string())).await?;
    }
    let mut acked = 0;
    while acked < channels {
        let msg = rx.next().await.context("operator socket closed")??;
        let Message::Text(t) = msg else { continue };
        if t.contains(r#""type":"error""#) {
            bail!("turn refused: {t}");
        }
        acked += usize::from(t.contains(r#""type":"ack""#));
    }
    let errors = tokio::spawn(count_errors(rx));
    let mut ticks = Ticks::new(&plan, schedule, |_| true);
    ticks.text = true;
    while let Some((channel, text)) = ticks.next().await {
        let frame = format!(r#"{{"type":"token","turn":"t{channel}","text":"{text}"}}"#);
        let sent = tx.send(Message::text(frame)).await;
        ticks.sent(channel, sent.is_ok());
    }
    for c in 0..channels {
        let end = format!(r#"{{"type":"turn_end","turn":"t{c}"}}"#);
        tx.send(Message::text(end)).await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = tx.close().await;
    let mut out = ticks.out;
    out.errors += tokio::time::timeout(Duration::from_secs(5), errors)
        .await
        .context("operator reader")??;
    Ok(out)
}
