//! A real nats-server in operator mode for a test: `switchboard nats init`
//! in a temp dir, ephemeral ports, killed when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::PATIENCE;
use super::process::run;

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
        let _ = self.child.kill();
        let _ = self.child.wait();
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
