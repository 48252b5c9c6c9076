//! The `switchboard` binary as a process: run a command, serve with a
//! config, read its memory, stop it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::PATIENCE;

pub const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

pub fn run(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).current_dir(dir).output().unwrap()
}

/// A `switchboard serve` process; killed if the test fails early.
pub struct Serve {
    pub child: Child,
    pub addr: String,
    /// Everything it printed to stderr before it was listening.
    pub banner: Vec<String>,
    /// Everything it printed to stderr so far.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

pub fn serve(dir: &Path, args: &[&str]) -> Serve {
    serve_at(dir, "127.0.0.1:0", args)
}

/// As [`serve`], listening on `listen`.
pub fn serve_at(dir: &Path, listen: &str, args: &[&str]) -> Serve {
    let mut child = Command::new(BIN)
        .arg("serve")
        .args(["--listen", listen, "--log-format", "json"])
        .args(args)
        .current_dir(dir)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let all = log.clone();
    std::thread::spawn(move || {
        let mut banner = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            all.lock().unwrap().push(line.clone());
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && v["fields"]["message"] == "switchboard listening"
            {
                let _ = tx.send((
                    v["fields"]["addr"].as_str().unwrap().to_owned(),
                    std::mem::take(&mut banner),
                ));
            } else {
                banner.push(line);
            }
        }
    });
    let (addr, banner) = rx.recv_timeout(PATIENCE).expect("the server starts listening");
    Serve {
        child,
        addr,
        banner,
        log,
    }
}

pub fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

pub fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + PATIENCE * 2;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(std::time::Instant::now() < deadline, "the server exits in time");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Serve {
    /// The process's resident memory now, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

/// A served config written by `switchboard init`: its directory, the demo
/// org's API key and a client token for it (every channel).
pub struct Broker {
    pub serve: Serve,
    pub dir: tempfile::TempDir,
    pub api_key: String,
    pub token: String,
}

impl Broker {
    /// `init`, then `serve` with `args`.
    pub fn start(args: &[&str]) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let out = run(dir.path(), &["init"]);
        assert!(out.status.success(), "{out:?}");
        let stdout = String::from_utf8(out.stdout).unwrap();
        let api_key = stdout
            .lines()
            .find_map(|l| l.split("(shown once, stored hashed): ").nth(1))
            .unwrap()
            .to_owned();
        let token = String::from_utf8(run(dir.path(), &["token", "--sub", "t"]).stdout).unwrap();
        let serve = serve(dir.path(), args);
        Broker {
            serve,
            dir,
            api_key,
            token: token.trim().to_owned(),
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/ws?token={}", self.serve.addr, self.token)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.serve.addr)
    }

    /// A metric of this process (the sum over its label sets).
    pub async fn metric(&self, name: &str) -> f64 {
        super::metric_in(&super::get_text(&self.url("/metrics")).await, name)
    }
}
