//! Test helpers: a real server on an ephemeral port, tokens, a WebSocket
//! client that speaks the protocol, and bounded waits.
#![allow(dead_code)] // each test file uses its own subset

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

pub fn secret(org: &str) -> String {
    format!("{org}-secret-0123456789-0123456789-abcdef")
}

/// A server running in this process.
pub struct TestServer {
    pub addr: SocketAddr,
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

    pub async fn start_with(edit: impl FnOnce(&mut FileConfig)) -> TestServer {
        let (file, api_keys) = test_config(edit);
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
        let text = reqwest::get(self.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
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
        subscribe: patterns(subscribe),
        publish: patterns(publish),
        send: vec![switchboard_proto::TargetPattern::Any],
    };
    sign_hs256(secret, &claims).unwrap()
}

/// A protocol-speaking WebSocket client.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    pub async fn connect(server: &TestServer, token: &str) -> Client {
        let (ws, _) = tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(server.ws_url(token)))
            .await
            .expect("connect in time")
            .expect("upgrade accepted");
        Client { ws }
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
    match tokio_tungstenite::connect_async(req).await {
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

impl Client {
    /// An operator's socket for `session`.
    pub async fn operator(server: &TestServer, session: &Session) -> Client {
        let url = format!("ws://{}/v1/operators/{}/ws", server.addr, session.sid);
        let bearer = format!("Bearer {}", session.token);
        let req = upgrade_request(&url, &[("authorization", bearer.as_str())]);
        let (ws, _) = tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(req))
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
