//! A real nats-server in operator mode for a test (`switchboard nats init`
//! in a temp dir, ephemeral ports, killed when dropped), and what cluster
//! tests share: two pods, publishers, NATS' answers.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::process::run;
use super::{ADMIN_TOKEN, PATIENCE, TestServer, call};

pub struct Nats {
    pub url: String,
    /// The `nats init` output (operator, creds, config).
    pub dir: PathBuf,
    child: Child,
    _temp: tempfile::TempDir,
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Nats {
    /// Runs `nats init` and starts nats-server from its config; returns
    /// once the server takes connections.
    pub async fn start() -> Nats {
        let temp = tempfile::tempdir().unwrap();
        let (port, http) = (free_port(), free_port());
        let out = run(
            temp.path(),
            &[
                "nats",
                "init",
                "--out",
                "nats",
                "--port",
                &port.to_string(),
                "--http-port",
                &http.to_string(),
            ],
        );
        assert!(out.status.success(), "nats init: {out:?}");
        let dir = temp.path().join("nats");
        let child = Command::new("nats-server")
            .args(["-c", dir.join("nats-server.conf").to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is installed (scripts/test.sh installs it)");
        let url = format!("nats://127.0.0.1:{port}");
        let nats = Nats {
            url,
            dir,
            child,
            _temp: temp,
        };
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "nats-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        nats
    }

    /// Stops nats-server and starts it again on the same port and data;
    /// `forget_accounts` first deletes the accounts its resolver stored (the
    /// system and broker accounts come back from the config's preload).
    pub async fn restart(&mut self, forget_accounts: bool) {
        self.kill();
        self.revive(forget_accounts).await;
    }

    /// Stops nats-server (until [`Nats::revive`]).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts nats-server again on the same port and data.
    pub async fn revive(&mut self, forget_accounts: bool) {
        if forget_accounts {
            for entry in std::fs::read_dir(self.dir.join("jwt")).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|e| e == "jwt") {
                    std::fs::remove_file(path).unwrap();
                }
            }
        }
        self.child = Command::new("nats-server")
            .args(["-c", self.dir.join("nats-server.conf").to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let port: u16 = self.url.rsplit(':').next().unwrap().parse().unwrap();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "nats-server did not start again"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A client connected with one of the `nats init` creds files.
    pub async fn connect(&self, creds: &str) -> async_nats::Client {
        async_nats::ConnectOptions::with_credentials_file(self.dir.join(creds))
            .await
            .unwrap()
            .max_reconnects(Some(1))
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("{creds} does not connect: {e}"))
    }
}

/// Two pods of one cluster. Each imports the test config's orgs with API
/// keys of its own; the last import wins, so both use B's keys.
pub async fn two_pods(nats: &Nats) -> (TestServer, TestServer) {
    let mut a = TestServer::start_cluster(nats, |_| {}).await;
    let b = TestServer::start_cluster(nats, |_| {}).await;
    a.api_keys = b.api_keys.clone();
    (a, b)
}

/// `n` pods of one cluster, each configured by `edit`; all use the API
/// keys of the last one (each imported the test orgs with keys of its own).
pub async fn cluster(
    nats: &Nats,
    n: usize,
    edit: impl Fn(&mut switchboard::config::FileConfig),
) -> Vec<TestServer> {
    let mut pods = Vec::new();
    for _ in 0..n {
        pods.push(TestServer::start_cluster(nats, &edit).await);
    }
    let keys = pods[n - 1].api_keys.clone();
    for pod in &mut pods {
        pod.api_keys = keys.clone();
    }
    pods
}

/// Pods as processes (to be killed with -9), sharing one config file of the
/// test orgs, in cluster mode on `nats`.
pub struct ProcessPods {
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
    /// The test orgs' API keys, as the config holds them.
    pub keys: Vec<String>,
}

impl ProcessPods {
    pub fn new(nats: &Nats, edit: impl FnOnce(&mut switchboard::config::FileConfig)) -> ProcessPods {
        let dir = tempfile::tempdir().unwrap();
        let (mut config, keys) = super::test_config(edit);
        config.nats.url = Some(nats.url.clone());
        config.nats.dir = Some(nats.dir.clone());
        let path = dir.path().join("switchboard.toml");
        std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
        ProcessPods {
            dir,
            config: path,
            keys,
        }
    }

    pub fn serve(&self) -> super::process::Serve {
        super::process::serve(self.dir.path(), &["--config", self.config.to_str().unwrap()])
    }

    /// A pod listening on `listen` (a slot a load balancer knows).
    pub fn serve_at(&self, listen: &str) -> super::process::Serve {
        super::process::serve_at(
            self.dir.path(),
            listen,
            &["--config", self.config.to_str().unwrap()],
        )
    }

    /// A session minted on `pod` (which must answer 201).
    pub async fn mint_ok(&self, pod: &super::process::Serve, org: &str, roles: &[&str]) -> super::Session {
        let (status, minted) = self.mint(pod, org, roles).await;
        assert_eq!(status, 201, "{minted}");
        super::Session {
            sid: minted["sid"].as_str().unwrap().into(),
            token: minted["token"].as_str().unwrap().into(),
        }
    }

    /// The API key of `org`, as the config holds it.
    pub fn key(&self, org: &str) -> &str {
        &self.keys[super::ORGS.iter().position(|o| *o == org).unwrap()]
    }

    /// `POST /v1/operators` on `pod` with `org`'s key: (status, body).
    pub async fn mint(&self, pod: &super::process::Serve, org: &str, roles: &[&str]) -> (u16, Value) {
        let key = &self.keys[super::ORGS.iter().position(|o| *o == org).unwrap()];
        let res = reqwest::Client::new()
            .post(format!("http://{}/v1/operators", pod.addr))
            .bearer_auth(key)
            .json(&serde_json::json!({ "roles": roles }))
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }
}

/// The accounts nats-server knows (system and broker included).
pub async fn server_accounts(nats: &Nats) -> Vec<String> {
    let sys = nats.connect("sys.creds").await;
    let reply = tokio::time::timeout(PATIENCE, sys.request("$SYS.REQ.CLAIMS.LIST", "".into()))
        .await
        .unwrap()
        .unwrap();
    let body: Value = serde_json::from_slice(&reply.payload).unwrap();
    body["data"]
        .as_array()
        .unwrap_or_else(|| panic!("a list of accounts: {body}"))
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

pub async fn create_publisher(pod: &TestServer, org: &str, body: Value) -> Value {
    let (status, made) = call(
        pod,
        Method::POST,
        &format!("/v1/orgs/{org}/publishers"),
        Some(ADMIN_TOKEN),
        Some(body),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    made
}

/// A stock NATS client with a publisher's creds; its errors and
/// disconnections arrive on the returned channel.
pub async fn publisher(
    nats: &Nats,
    made: &Value,
) -> (
    async_nats::Client,
    tokio::sync::mpsc::UnboundedReceiver<async_nats::Event>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::with_credentials(made["creds"].as_str().unwrap())
        .unwrap()
        .max_reconnects(Some(1))
        .event_callback(move |e| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(e);
            }
        })
        .connect(&nats.url)
        .await
        .unwrap();
    (client, rx)
}

/// Waits for a permission error about `subject`.
pub async fn refused(events: &mut tokio::sync::mpsc::UnboundedReceiver<async_nats::Event>, subject: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("no permission error for {subject}"))
            .unwrap();
        if let async_nats::Event::ServerError(e) = &event
            && e.to_string().to_lowercase().contains("permissions violation")
            && e.to_string().contains(subject)
        {
            return;
        }
    }
}

/// Waits until `events` reports the connection lost.
pub async fn cut(events: &mut tokio::sync::mpsc::UnboundedReceiver<async_nats::Event>, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(async_nats::Event::Disconnected | async_nats::Event::Closed)) => return,
            Ok(Some(_)) => continue,
            Ok(None) => return,
            Err(_) => panic!("the connection was not cut within {within:?}"),
        }
    }
}

/// The claims of a JWT, unverified.
pub fn claims(jwt: &str) -> Value {
    use base64::Engine;
    let body = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .unwrap(),
    )
    .unwrap()
}
