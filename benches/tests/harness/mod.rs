//! Real servers for the load generator's tests: a Switchboard in this
//! process and a nats-server child process (ephemeral ports, a temp dir),
//! both stopped when dropped.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use switchboard::auth::new_api_key;
use switchboard::config::{FileConfig, Overrides, Settings};
use switchboard::directory::{ApiKeyConfig, JwtKeyConfig, OrgConfig, Scope};
use switchboard::server::Server;
use switchboard_bench::target::{Nats, Switchboard};
use switchboard_proto::OrgId;

pub const SECRET: &str = "load-test-secret-0123456789-0123456789";

pub struct RunningSwitchboard {
    pub target: Switchboard,
    /// The registry's data directory, gone with the server.
    _data: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub async fn switchboard() -> RunningSwitchboard {
    let key = new_api_key(&OrgId::new("load").unwrap(), "k").unwrap();
    let file = FileConfig {
        listen: Some("127.0.0.1:0".into()),
        orgs: vec![OrgConfig {
            rollup: vec![],
            id: "load".into(),
            allowed_origins: vec![],
            jwt_keys: vec![JwtKeyConfig::HS256 {
                secret: SECRET.into(),
                kid: None,
            }],
            api_keys: vec![ApiKeyConfig {
                id: key.id,
                sha256: key.sha256_hex,
                scopes: Scope::all(),
            }],
        }],
        ..FileConfig::default()
    };
    let data = tempfile::tempdir().unwrap();
    let over = Overrides {
        publish_rate: Some(0),
        data_dir: Some(data.path().to_path_buf()),
        ..Overrides::default()
    };
    let server = Server::bind(Settings::resolve(file, &over).unwrap())
        .await
        .unwrap();
    let addr = server.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    RunningSwitchboard {
        target: Switchboard {
            addr,
            pods: vec![addr],
            cluster: false,
            org: "load".into(),
            secret: SECRET.into(),
            api_key: key.plaintext,
        },
        _data: data,
        stop: Some(stop),
        task: Some(task),
    }
}

impl RunningSwitchboard {
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
        }
    }
}

/// A nats-server with a WebSocket listener, on ports it picked itself.
pub struct NatsServer {
    child: Child,
    pub target: Nats,
    _dir: tempfile::TempDir,
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn nats_server() -> NatsServer {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("nats.conf");
    std::fs::write(
        &conf,
        "host: 127.0.0.1\nport: -1\nwebsocket { host: 127.0.0.1, port: -1, no_tls: true, compression: false }\n",
    )
    .unwrap();
    let mut child = Command::new("nats-server")
        .arg("-c")
        .arg(&conf)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("nats-server is installed (scripts/test.sh installs it)");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut ws, mut client) = (None, None);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let addr = |prefix: &str| line.split(prefix).nth(1).map(|a| a.trim().to_owned());
            if let Some(a) = addr("Listening for websocket clients on ws://") {
                ws = Some(a);
            } else if let Some(a) = addr("Listening for client connections on ") {
                client = Some(a);
            }
            if line.contains("Server is ready") {
                let _ = tx.send((ws.take(), client.take()));
            }
        }
    });
    let (ws, client) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("nats-server starts");
    let ws: SocketAddr = ws.expect("a websocket listener").parse().unwrap();
    let client = client.expect("a client listener");
    NatsServer {
        child,
        target: Nats {
            ws_addr: ws,
            nats_url: format!("nats://{client}"),
        },
        _dir: dir,
    }
}
