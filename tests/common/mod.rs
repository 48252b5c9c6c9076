//! Test helpers: a real server on an ephemeral port, tokens, a WebSocket
//! client that speaks the protocol, and bounded waits.
#![allow(dead_code)] // each test file uses its own subset

pub mod haproxy;
pub mod nats;
pub mod process;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use switchboard::auth::{ClientClaims, new_api_key, now_secs, sign_hs256};
use switchboard::config::{FileConfig, Overrides, Settings};
use switchboard::directory::{ApiKeyConfig, JwtKeyConfig, OrgConfig, Scope};
use switchboard::server::Server;
use switchboard_proto::{ChannelPattern, OrgId, ServerFrame};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single wait in a test may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub const ORGS: [&str; 2] = ["acme", "globex"];
/// The test servers' admin token.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

pub fn secret(org: &str) -> String {
    format!("{org}-secret-0123456789-0123456789-abcdef")
}

/// A server running in this process.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The registry's data directory (kept for restarts, gone with the test).
    pub data: std::sync::Arc<tempfile::TempDir>,
    pub app: std::sync::Arc<switchboard::http::App>,
    /// API key (all scopes) per org, in `ORGS` order.
    pub api_keys: Vec<String>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Config for two orgs, with `edit` applied to the file config.
pub fn test_config(edit: impl FnOnce(&mut FileConfig)) -> (FileConfig, Vec<String>) {
    let mut keys = Vec::new();
    let orgs = ORGS
        .iter()
        .map(|org| {
            let key = new_api_key(&OrgId::new(org).unwrap(), "test").unwrap();
            keys.push(key.plaintext.clone());
            OrgConfig {
                rollup: vec![],
                id: (*org).into(),
                allowed_origins: vec![],
                jwt_keys: vec![JwtKeyConfig::HS256 {
                    secret: secret(org),
                    kid: None,
                }],
                api_keys: vec![ApiKeyConfig {
                    id: key.id,
                    sha256: key.sha256_hex,
                    scopes: Scope::all(),
                }],
            }
        })
        .collect();
    let mut file = FileConfig {
        listen: Some("127.0.0.1:0".into()),
        admin_token: Some(ADMIN_TOKEN.into()),
        orgs,
        ..FileConfig::default()
    };
    edit(&mut file);
    (file, keys)
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// A pod in cluster mode on `nats` (`nats init` output, master key included).
    pub async fn start_cluster(nats: &nats::Nats, edit: impl FnOnce(&mut FileConfig)) -> TestServer {
        let (url, dir) = (nats.url.clone(), nats.dir.clone());
        Self::start_with(move |file| {
            file.nats.url = Some(url);
            file.nats.dir = Some(dir);
            edit(file);
        })
        .await
    }

    pub async fn start_with(edit: impl FnOnce(&mut FileConfig)) -> TestServer {
        let data = std::sync::Arc::new(tempfile::tempdir().expect("a temp dir"));
        Self::start_in(data, edit).await
    }

    /// A server whose registry lives in `data` (a restart passes the same one).
    pub async fn start_in(
        data: std::sync::Arc<tempfile::TempDir>,
        edit: impl FnOnce(&mut FileConfig),
    ) -> TestServer {
        let (mut file, api_keys) = test_config(edit);
        file.data_dir.get_or_insert_with(|| data.path().to_path_buf());
        let settings = Settings::resolve(file, &Overrides::default()).expect("valid test config");
        let server = Server::bind(settings).await.expect("server binds");
        let addr = server.local_addr();
        let app = server.app().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            data,
            app,
            api_keys,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn ws_url(&self, token: &str) -> String {
        format!("ws://{}/v1/ws?token={token}", self.addr)
    }

    pub fn api_key(&self, org: &str) -> &str {
        &self.api_keys[ORGS.iter().position(|o| *o == org).expect("a test org")]
    }

    /// Publishes over HTTP; returns the offset.
    pub async fn publish(&self, org: &str, channel: &str, data: Value) -> u64 {
        let res = reqwest::Client::new()
            .post(self.url(&format!("/v1/orgs/{org}/channels/{channel}/publish")))
            .bearer_auth(self.api_key(org))
            .json(&serde_json::json!({ "data": data }))
            .send()
            .await
            .expect("publish request");
        assert_eq!(res.status(), 200, "publish refused");
        res.json::<Value>().await.expect("publish reply")["offset"]
            .as_u64()
            .expect("an offset")
    }

    /// Client connections open on this server now.
    pub async fn connections(&self) -> usize {
        self.app.services.connection_count().await
    }

    /// A metric's value summed over its label sets. Metrics are process-wide:
    /// other tests in the same binary add to them too.
    pub async fn metric(&self, name: &str) -> f64 {
        metric_in(&self.metrics().await, name)
    }

    /// The `/metrics` page.
    pub async fn metrics(&self) -> String {
        get_text(&self.url("/metrics")).await
    }

    /// Stops the server (as Ctrl-C would) and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(PATIENCE * 2, task)
                .await
                .expect("server stops in time")
                .unwrap()
                .unwrap();
        }
    }
}

/// One HTTP call; the answer's status and JSON body (null if none).
pub async fn call(
    server: &TestServer,
    method: reqwest::Method,
    path: &str,
    bearer: Option<&str>,
    body: Option<Value>,
) -> (reqwest::StatusCode, Value) {
    let mut req = reqwest::Client::new().request(method, server.url(path));
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    let res = tokio::time::timeout(PATIENCE, req.send())
        .await
        .expect("an answer in time")
        .unwrap();
    let status = res.status();
    let text = res.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Makes org `id` with the admin token; its answer (the HS256 secret once).
pub async fn create_org(server: &TestServer, id: &str) -> Value {
    let (status, body) = call(
        server,
        reqwest::Method::POST,
        "/v1/orgs",
        Some(ADMIN_TOKEN),
        Some(serde_json::json!({"id": id, "name": "Initech"})),
    )
    .await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "{body}");
    body
}

/// A client token for `org` (signed with its secret), valid for an hour.
pub fn token(org: &str, sub: &str, subscribe: &[&str], publish: &[&str]) -> String {
    token_signed(&secret(org), org, sub, subscribe, publish, now_secs() + 3600)
}

pub fn token_signed(
    secret: &str,
    org: &str,
    sub: &str,
    subscribe: &[&str],
    publish: &[&str],
    exp: u64,
) -> String {
    let patterns = |p: &[&str]| p.iter().map(|s| ChannelPattern::new(s).unwrap()).collect();
    let claims = ClientClaims {
        sub: sub.into(),
        org: org.into(),
        exp,
        iat: None,
        jti: None,
        subscribe: patterns(subscribe),
        publish: patterns(publish),
        send: vec![switchboard_proto::TargetPattern::Any],
    };
    sign_hs256(secret, &claims).unwrap()
}

/// Opens a WebSocket with Nagle off, as a latency-minded client would: with
/// it on, a small frame sent while the previous one is unacknowledged waits
/// for the server's delayed ACK (tens of milliseconds of real time that a
/// paused test clock cannot see).
pub async fn connect_ws(
    req: impl IntoClientRequest + Unpin,
) -> Result<
    (
        WebSocketStream<MaybeTlsStream<TcpStream>>,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    tokio_tungstenite::tungstenite::Error,
> {
    tokio_tungstenite::connect_async_with_config(req, None, true).await
}

/// A protocol-speaking WebSocket client.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    pub async fn connect(server: &TestServer, token: &str) -> Client {
        let (ws, _) = tokio::time::timeout(PATIENCE, connect_ws(server.ws_url(token)))
            .await
            .expect("connect in time")
            .expect("upgrade accepted");
        Client { ws }
    }

    /// Connects to `url` with a receive buffer of `rcvbuf` bytes: a client
    /// that stops reading then backs up into the server within that much.
    pub async fn connect_small(url: &str, rcvbuf: u32) -> Client {
        Self::connect_small_with(url.into_client_request().unwrap(), rcvbuf).await
    }

    /// [`Client::connect_small`] with a request of its own (headers).
    pub async fn connect_small_with(
        req: tokio_tungstenite::tungstenite::handshake::client::Request,
        rcvbuf: u32,
    ) -> Client {
        let uri = req.uri();
        let addr = format!("{}:{}", uri.host().unwrap(), uri.port_u16().unwrap())
            .parse()
            .unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(rcvbuf).unwrap();
        let stream = socket.connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (ws, _) = tokio::time::timeout(
            PATIENCE,
            tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream)),
        )
        .await
        .expect("connect in time")
        .expect("upgrade accepted");
        Client { ws }
    }

    /// Resets the connection (no close handshake, no FIN): the peer's next
    /// read or write fails, as when a machine vanishes.
    pub fn reset(self) {
        if let MaybeTlsStream::Plain(stream) = self.ws.get_ref() {
            socket2::SockRef::from(stream)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
        }
    }

    /// Connects to a full `ws://` URL.
    pub async fn connect_url(url: &str) -> Client {
        let (ws, _) = tokio::time::timeout(PATIENCE, connect_ws(url))
            .await
            .expect("connect in time")
            .expect("upgrade accepted");
        Client { ws }
    }

    /// Sends `frames` without waiting for answers in between.
    pub async fn pipeline(&mut self, frames: impl IntoIterator<Item = Value>) {
        for frame in frames {
            self.ws
                .feed(Message::text(frame.to_string()))
                .await
                .expect("send");
        }
        self.ws.flush().await.expect("flush");
    }

    /// Publishes `n` messages of `len` bytes on `channel`, a hundred at a
    /// time, and waits for every ack (the connection needs an unlimited
    /// publish rate). Returns the last offset.
    pub async fn publish_many(&mut self, channel: &str, n: u64, len: usize) -> u64 {
        let pad = "x".repeat(len);
        let mut last = 0;
        for start in (0..n).step_by(100) {
            let ids = start..(start + 100).min(n);
            self.pipeline(ids.clone().map(|id| {
                serde_json::json!({"type": "publish", "id": id, "channel": channel, "data": {"n": id, "pad": pad}})
            }))
            .await;
            let mut acked = 0;
            while acked < ids.end - ids.start {
                if let ServerFrame::Ack(ack) = self.next().await
                    && ack.channel.as_ref().is_some_and(|c| c.as_str() == channel)
                    && let Some(offset) = ack.offset
                {
                    last = last.max(offset);
                    acked += 1;
                }
            }
        }
        last
    }

    /// Connects with an all-channels token for `org`.
    pub async fn connect_all(server: &TestServer, org: &str) -> Client {
        Self::connect(server, &token(org, "tester", &[">"], &[">"])).await
    }

    pub async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .expect("send");
    }

    pub async fn send_raw(&mut self, msg: Message) {
        self.ws.send(msg).await.expect("send");
    }

    /// The next protocol frame (pings and pongs are skipped).
    pub async fn next(&mut self) -> ServerFrame {
        loop {
            let msg = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("a frame in time")
                .expect("connection open")
                .expect("a valid frame");
            match msg {
                Message::Text(t) => return ServerFrame::decode(t.as_bytes()).expect("a protocol frame"),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// Waits for the server to close; returns its close frame.
    pub async fn closed(&mut self) -> Option<CloseFrame> {
        loop {
            match tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("close in time")
            {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }

    pub async fn subscribe(&mut self, id: u64, channel: &str) -> switchboard_proto::Ack {
        self.send(serde_json::json!({"type": "subscribe", "id": id, "channel": channel}))
            .await;
        self.ack(id).await
    }

    pub async fn resume(
        &mut self,
        id: u64,
        channel: &str,
        since: u64,
        epoch: &str,
    ) -> switchboard_proto::Ack {
        self.send(serde_json::json!({"type": "subscribe", "id": id, "channel": channel, "since": since, "epoch": epoch}))
            .await;
        self.ack(id).await
    }

    pub async fn ack(&mut self, id: u64) -> switchboard_proto::Ack {
        match self.next().await {
            ServerFrame::Ack(ack) if ack.id == switchboard_proto::RequestId::Num(id) => ack,
            other => panic!("expected ack {id}, got {}", other.to_json()),
        }
    }

    /// Expects an error frame; returns its code.
    pub async fn error(&mut self) -> (Option<switchboard_proto::RequestId>, switchboard_proto::ErrorCode) {
        match self.next().await {
            ServerFrame::Error { id, code, .. } => (id, code),
            other => panic!("expected an error, got {}", other.to_json()),
        }
    }

    /// Expects a channel message; returns (offset, data).
    pub async fn message(&mut self) -> (u64, Value) {
        match self.next().await {
            ServerFrame::Message { offset, data, .. } => (offset, serde_json::from_str(data.get()).unwrap()),
            other => panic!("expected a message, got {}", other.to_json()),
        }
    }

    /// Round trip proving the connection still works.
    pub async fn ping(&mut self, id: u64) {
        self.send(serde_json::json!({"type": "ping", "id": id})).await;
        match self.next().await {
            ServerFrame::Pong { id: got } => assert_eq!(got, switchboard_proto::RequestId::Num(id)),
            other => panic!("expected pong, got {}", other.to_json()),
        }
    }
}

/// A server frame as it arrived on the wire.
#[derive(Debug)]
pub struct RawFrame {
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl RawFrame {
    /// The close code of a close frame.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == 0x8 && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// What a server wrote to a socket, split into frames.
pub struct RawStream {
    pub frames: Vec<RawFrame>,
    /// Bytes of a last frame that never came whole (0: the stream ended on a
    /// frame boundary).
    pub torn: usize,
}

impl Client {
    /// Reads the raw byte stream under the WebSocket (no pongs sent back,
    /// nothing parsed by tungstenite) until the server closes it, and splits
    /// it into frames.
    pub async fn raw_until_eof(&mut self) -> RawStream {
        use tokio::io::AsyncReadExt;
        let MaybeTlsStream::Plain(stream) = self.ws.get_mut() else {
            panic!("plain TCP expected");
        };
        let mut bytes = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match tokio::time::timeout(PATIENCE * 3, stream.read(&mut chunk))
                .await
                .expect("the server ends the stream in time")
            {
                Ok(0) | Err(_) => break,
                Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            }
        }
        let mut frames = Vec::new();
        let mut at = 0;
        while at + 10 <= bytes.len() || (at + 2 <= bytes.len() && bytes[at + 1] & 0x7F < 126) {
            let (len, header) = match bytes[at + 1] & 0x7F {
                126 => (u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize, 4),
                127 => (
                    u64::from_be_bytes(bytes[at + 2..at + 10].try_into().unwrap()) as usize,
                    10,
                ),
                n => (n as usize, 2),
            };
            let end = at + header + len;
            if end > bytes.len() {
                break;
            }
            frames.push(RawFrame {
                opcode: bytes[at] & 0x0F,
                payload: bytes[at + header..end].to_vec(),
            });
            at = end;
        }
        RawStream {
            frames,
            torn: bytes.len() - at,
        }
    }

    /// [`Client::raw_until_eof`], asserting the stream ended on a frame boundary.
    pub async fn raw_frames_until_eof(&mut self) -> Vec<RawFrame> {
        let stream = self.raw_until_eof().await;
        assert_eq!(stream.torn, 0, "the stream ended inside a frame");
        stream.frames
    }
}

/// The body of a GET, as text.
pub async fn get_text(url: &str) -> String {
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

/// A metric of a Prometheus text page: the sum over its label sets.
pub fn metric_in(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Upgrade request for `url` with extra headers, for refusal tests.
pub fn upgrade_request(
    url: &str,
    headers: &[(&str, &str)],
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    req
}

/// The HTTP status of a refused upgrade.
pub async fn refused_status(req: tokio_tungstenite::tungstenite::handshake::client::Request) -> u16 {
    match connect_ws(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => res.status().as_u16(),
        Ok(_) => panic!("upgrade was accepted"),
        Err(e) => panic!("unexpected error {e}"),
    }
}

/// Waits until `check` holds, polling, for at most [`PATIENCE`].
pub async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "not in time: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Raises the open-files limit as far as allowed (tests open thousands of sockets).
pub fn raise_fd_limit() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
}

/// `POST /v1/operators` with `org`'s API key.
pub async fn mint(server: &TestServer, org: &str, roles: &[&str]) -> (u16, serde_json::Value) {
    let res = reqwest::Client::new()
        .post(server.url("/v1/operators"))
        .bearer_auth(server.api_key(org))
        .json(&serde_json::json!({ "roles": roles }))
        .send()
        .await
        .expect("mint request");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// A minted session: its sid and bearer token.
#[derive(Clone, Debug)]
pub struct Session {
    pub sid: String,
    pub token: String,
}

pub async fn mint_ok(server: &TestServer, org: &str, roles: &[&str]) -> Session {
    let (status, body) = mint(server, org, roles).await;
    assert_eq!(status, 201, "{body}");
    Session {
        sid: body["sid"].as_str().unwrap().into(),
        token: body["token"].as_str().unwrap().into(),
    }
}

/// `GET` or `DELETE` on `/v1/operators/:sid` with a bearer token.
pub async fn session_call(
    server: &TestServer,
    method: reqwest::Method,
    sid: &str,
    token: Option<&str>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, server.url(&format!("/v1/operators/{sid}")));
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let res = req.send().await.expect("session request");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// The upgrade request of `session`'s operator socket.
pub fn operator_request(
    server: &TestServer,
    session: &Session,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let url = format!("ws://{}/v1/operators/{}/ws", server.addr, session.sid);
    let bearer = format!("Bearer {}", session.token);
    upgrade_request(&url, &[("authorization", bearer.as_str())])
}

impl Client {
    /// An operator's socket for `session`.
    pub async fn operator(server: &TestServer, session: &Session) -> Client {
        let (ws, _) = tokio::time::timeout(PATIENCE, connect_ws(operator_request(server, session)))
            .await
            .expect("connect in time")
            .expect("operator upgrade accepted");
        Client { ws }
    }

    /// The next frame that is part of a channel's stream (message or turn event).
    pub async fn channel_event(&mut self) -> ServerFrame {
        loop {
            let frame = self.next().await;
            if frame.offset().is_some() {
                return frame;
            }
        }
    }
}

impl Client {
    /// Reads a channel's events up to `turn`'s end; returns the text a UI
    /// would show for it.
    pub async fn turn_text(&mut self, turn: &str) -> String {
        let mut text = String::new();
        loop {
            let frame = self.channel_event().await;
            apply_turn(&mut text, &frame, turn);
            if matches!(frame, ServerFrame::TurnEnd { .. }) {
                return text;
            }
        }
    }
}

/// Applies a channel's turn events to the text a UI would show for `turn`.
pub fn apply_turn(text: &mut String, frame: &ServerFrame, turn: &str) {
    match frame {
        ServerFrame::Token {
            turn: t, text: more, ..
        } if t.as_str() == turn => text.push_str(more),
        ServerFrame::TurnSnapshot {
            turn: t, text_so_far, ..
        } if t.as_str() == turn => *text = text_so_far.clone(),
        ServerFrame::Turn {
            turn: t, text: all, ..
        } if t.as_str() == turn => *text = all.clone(),
        _ => {}
    }
}

/// A JSON POST with an optional bearer key: (status, body or null).
pub async fn post(url: &str, key: Option<&str>, body: &str) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// A GET with an optional bearer key: (status, body or null).
pub async fn get(url: &str, key: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::new().get(url);
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// The `error.code` of an API error body.
pub fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no error code>")
}
