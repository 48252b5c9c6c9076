//! An operator that answers every frame sent to its role by streaming the
//! text back, reversed, as a turn on the frame's `reply_to` channel, at a
//! set pace. It keeps its session across dropped sockets and across its own
//! restarts (the sid and token are saved in `--session-file`), and honours
//! `{"type":"cancel","turn":..}` frames.
//!
//! ```sh
//! cargo run --example echo_agent -- --api-key "$API_KEY"
//! ```
//!
//! Then, from a client allowed to `send` to `role:main-ai`:
//! `{"type":"send","id":1,"to":"role:main-ai","reply_to":"chat.1","data":{"text":"hello"}}`

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[derive(Parser, Debug)]
struct Args {
    /// The broker's HTTP address
    #[arg(long, env = "SWITCHBOARD_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// An org API key with the `operators` scope
    #[arg(long, env = "SWITCHBOARD_API_KEY")]
    api_key: String,
    #[arg(long, default_value = "main-ai")]
    role: String,
    /// Pace of the streamed reply
    #[arg(long, default_value_t = 20.0)]
    tokens_per_sec: f64,
    /// Where to answer frames that carry no `reply_to`
    #[arg(long, default_value = "echo")]
    default_channel: String,
    /// Where the session's sid and token are kept, to resume it after a restart
    #[arg(long, default_value = "echo_agent.session")]
    session_file: std::path::PathBuf,
}

/// What the agent's writer sends, in order, on whichever socket is current.
type Out = mpsc::Sender<Value>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (sid, token) = session(&args).await?;
    eprintln!("echo agent: session {sid} holds role:{}", args.role);

    let ws_url = format!("{}/v1/operators/{sid}/ws", args.url.replacen("http", "ws", 1));
    let cancels: Arc<std::sync::Mutex<HashMap<String, Arc<AtomicBool>>>> = Arc::default();
    let mut turn = 0u64;
    // One queue for the agent's whole life: replies wait in it while the
    // socket is away, and go out in order on the next one.
    let (out, rx) = mpsc::channel::<Value>(256);
    let mut queue = Some((rx, None));
    // The session outlives the socket: reconnect and carry on where we were.
    loop {
        let mut req = ws_url.as_str().into_client_request()?;
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        let ws = match tokio_tungstenite::connect_async(req).await {
            Ok((ws, _)) => ws,
            Err(tokio_tungstenite::tungstenite::Error::Http(res)) if res.status() == 404 => {
                bail!("the session ended (expired or deleted)")
            }
            Err(e) => {
                eprintln!("echo agent: connect failed ({e}); retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        eprintln!("echo agent: connected");
        let (sink, mut stream) = ws.split();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let Some((rx, stalled)) = queue.take() else {
            bail!("the reply queue was lost")
        };
        let writer = tokio::spawn(write_all(sink, rx, stalled, stopped));
        while let Some(Ok(msg)) = stream.next().await {
            let Message::Text(text) = msg else { continue };
            let Ok(frame) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            match frame["type"].as_str() {
                Some("frame") => {
                    let data = &frame["data"];
                    if data["type"] == "cancel" {
                        if let Some(flag) = data["turn"]
                            .as_str()
                            .and_then(|t| cancels.lock().ok()?.get(t).cloned())
                        {
                            flag.store(true, Ordering::Relaxed);
                        }
                        continue;
                    }
                    turn += 1;
                    let id = format!("t{turn}");
                    let channel = frame["reply_to"]
                        .as_str()
                        .unwrap_or(&args.default_channel)
                        .to_owned();
                    let text = data["text"]
                        .as_str()
                        .map_or_else(|| data.to_string(), str::to_owned);
                    let cancelled = Arc::new(AtomicBool::new(false));
                    if let Ok(mut c) = cancels.lock() {
                        c.insert(id.clone(), cancelled.clone());
                    }
                    let pace = Duration::from_secs_f64(1.0 / args.tokens_per_sec.max(0.1));
                    tokio::spawn(stream_reply(
                        out.clone(),
                        id,
                        channel,
                        text,
                        pace,
                        cancelled,
                        cancels.clone(),
                    ));
                }
                Some("error") => eprintln!("echo agent: the broker says {}", frame["message"]),
                _ => {}
            }
        }
        let _ = stop.send(());
        queue = Some(writer.await?);
        eprintln!("echo agent: socket closed; reconnecting");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The saved session if it is still alive, else a new one (saved).
async fn session(args: &Args) -> anyhow::Result<(String, String)> {
    let http = reqwest::Client::new();
    if let Ok(saved) = std::fs::read_to_string(&args.session_file)
        && let Some((sid, token)) = saved.trim().split_once(' ')
    {
        let res = http
            .get(format!("{}/v1/operators/{sid}", args.url))
            .bearer_auth(token)
            .send()
            .await;
        if res.is_ok_and(|r| r.status().is_success()) {
            eprintln!("echo agent: resuming the saved session");
            return Ok((sid.to_owned(), token.to_owned()));
        }
    }
    let res = http
        .post(format!("{}/v1/operators", args.url))
        .bearer_auth(&args.api_key)
        .json(&json!({ "roles": [args.role] }))
        .send()
        .await
        .context("cannot reach the broker")?;
    let status = res.status();
    let body: Value = res.json().await.unwrap_or_default();
    if !status.is_success() {
        bail!(
            "minting a session failed ({status}): {}",
            body["error"]["message"]
        );
    }
    let sid = body["sid"].as_str().context("no sid in the reply")?.to_owned();
    let token = body["token"]
        .as_str()
        .context("no token in the reply")?
        .to_owned();
    save_private(&args.session_file, &format!("{sid} {token}\n"))?;
    Ok((sid, token))
}

/// The token is a credential: only the owner may read the file.
fn save_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

type WsSink = futures_util::stream::SplitSink<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    Message,
>;

/// Writes queued frames until the socket fails or `stop` fires; hands the
/// queue back with the frame that could not be written, for the next socket.
async fn write_all(
    mut sink: WsSink,
    mut rx: mpsc::Receiver<Value>,
    mut stalled: Option<Value>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> (mpsc::Receiver<Value>, Option<Value>) {
    loop {
        let frame = match stalled.take() {
            Some(frame) => frame,
            None => tokio::select! {
                _ = &mut stop => return (rx, None),
                frame = rx.recv() => match frame {
                    Some(frame) => frame,
                    None => return (rx, None),
                },
            },
        };
        if sink.send(Message::text(frame.to_string())).await.is_err() {
            return (rx, Some(frame));
        }
    }
}

/// Streams `text` reversed, a word at a time, as one turn on `channel`.
async fn stream_reply(
    out: Out,
    turn: String,
    channel: String,
    text: String,
    pace: Duration,
    cancelled: Arc<AtomicBool>,
    cancels: Arc<std::sync::Mutex<HashMap<String, Arc<AtomicBool>>>>,
) {
    let reversed: String = text.chars().rev().collect();
    let _ = out
        .send(json!({"type": "turn_start", "id": turn, "turn": turn, "channel": channel}))
        .await;
    let mut tick = tokio::time::interval(pace);
    for word in reversed.split_inclusive(' ') {
        tick.tick().await;
        if cancelled.load(Ordering::Relaxed) {
            let _ = out
                .send(json!({"type": "turn_error", "turn": turn, "message": "cancelled"}))
                .await;
            break;
        }
        if out
            .send(json!({"type": "token", "turn": turn, "text": word}))
            .await
            .is_err()
        {
            break;
        }
    }
    if !cancelled.load(Ordering::Relaxed) {
        let _ = out.send(json!({"type": "turn_end", "turn": turn})).await;
    }
    if let Ok(mut c) = cancels.lock() {
        c.remove(&turn);
    }
}
