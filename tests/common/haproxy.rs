//! HAProxy in front of pods, doing what a Kubernetes Service does: it sends
//! new connections only to pods whose `/ready` answers 200 (checked every
//! 200 ms), retries a connection a dead pod refused on another, and leaves
//! open connections to the pod until the pod closes them.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::PATIENCE;

pub struct Haproxy {
    child: Child,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nobody listens on now (for a slot that a pod takes later).
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn binary() -> &'static str {
    // Debian puts it in /usr/sbin, not on every user's PATH.
    if std::path::Path::new("/usr/sbin/haproxy").exists() {
        "/usr/sbin/haproxy"
    } else {
        "haproxy"
    }
}

impl Haproxy {
    /// Balances over `slots` (pods may come and go on them).
    pub fn start(slots: &[SocketAddr]) -> Haproxy {
        let dir = tempfile::tempdir().unwrap();
        let addr = free_addr();
        let servers: String = slots
            .iter()
            .enumerate()
            .map(|(i, a)| format!("  server pod{i} {a} check\n"))
            .collect();
        let config = format!(
            "global\n  maxconn 4096\n\
             defaults\n  mode http\n  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\n  timeout tunnel 1h\n  retries 3\n  option redispatch\n\
             frontend switchboard\n  bind {addr}\n  default_backend pods\n\
             backend pods\n  balance roundrobin\n  option httpchk GET /ready\n  http-check expect status 200\n  default-server inter 200ms fall 1 rise 1\n{servers}"
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let log = dir.path().join("haproxy.log");
        let mut child = Command::new(binary())
            .args(["-db", "-f"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start HAProxy (scripts/test.sh installs it): {e}"));
        let deadline = std::time::Instant::now() + PATIENCE;
        while std::net::TcpStream::connect(addr).is_err() {
            let exited = child.try_wait().unwrap().is_some();
            if exited || std::time::Instant::now() > deadline {
                panic!(
                    "HAProxy does not listen: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Haproxy {
            child,
            addr,
            _dir: dir,
        }
    }
}
