//! Settings: defaults (each with its reason), an optional TOML file, then
//! `SWITCHBOARD_*` environment variables and flags, which win. Every problem
//! in a configuration is reported at once, not one per restart.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchboard_actors::limits as actor_limits;
use switchboard_actors::memory::{
    DEFAULT_HISTORY_AGE, DEFAULT_HISTORY_MESSAGES, DEFAULT_MAX_TURNS_PER_CHANNEL,
};
use switchboard_actors::{HistoryLimits, Limits};

use crate::directory::{OrgConfig, StaticOrgs};
use crate::nats::cluster::ClusterSettings;
use crate::registry::MasterSource;

/// Loopback by default: a laptop broker should not be reachable from the
/// network until someone says so (`--listen 0.0.0.0:8080` in a container).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// An idle connection costs a few KiB here; 100k of them is a few hundred MiB,
/// a sane ceiling for one pod before a load balancer should spread them.
pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;
/// Chat messages, agent frames and tokens are small; bigger payloads belong
/// in object storage, referenced from a message.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024;
/// Below the 30-60 s idle timeouts of common load balancers and NATs.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(25);
/// Two missed pings and a margin: the peer is gone.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A 64 KiB frame arrives in well under a second on any network a browser
/// uses; a client still trickling one after ten is holding memory hostage.
pub const DEFAULT_FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// Long enough for in-flight requests and close handshakes; short of
/// Kubernetes' default 30 s termination grace period.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Beside the working directory, where a laptop user looks first.
pub const DEFAULT_DATA_DIR: &str = "switchboard-data";

/// The environment variables `serve` reads (each also a flag).
pub mod env {
    pub const CONFIG: &str = "SWITCHBOARD_CONFIG";
    pub const LISTEN: &str = "SWITCHBOARD_LISTEN";
    pub const LOG_FORMAT: &str = "SWITCHBOARD_LOG_FORMAT";
    pub const MAX_CONNECTIONS: &str = "SWITCHBOARD_MAX_CONNECTIONS";
    pub const MAX_FRAME_BYTES: &str = "SWITCHBOARD_MAX_FRAME_BYTES";
    pub const OUTBOUND_QUEUE_BYTES: &str = "SWITCHBOARD_OUTBOUND_QUEUE_BYTES";
    pub const MAX_SUBSCRIPTIONS: &str = "SWITCHBOARD_MAX_SUBSCRIPTIONS";
    pub const PUBLISH_RATE: &str = "SWITCHBOARD_PUBLISH_RATE";
    pub const PUBLISH_BURST: &str = "SWITCHBOARD_PUBLISH_BURST";
    pub const SUBSCRIBE_RATE: &str = "SWITCHBOARD_SUBSCRIBE_RATE";
    pub const SUBSCRIBE_BURST: &str = "SWITCHBOARD_SUBSCRIBE_BURST";
    pub const HISTORY_MESSAGES: &str = "SWITCHBOARD_HISTORY_MESSAGES";
    pub const HISTORY_AGE_SECS: &str = "SWITCHBOARD_HISTORY_AGE_SECS";
    pub const SHUTDOWN_GRACE_SECS: &str = "SWITCHBOARD_SHUTDOWN_GRACE_SECS";
    pub const DRAIN_DELAY_SECS: &str = "SWITCHBOARD_DRAIN_DELAY_SECS";
    pub const DATA_DIR: &str = "SWITCHBOARD_DATA_DIR";
    pub const MASTER_KEY_FILE: &str = "SWITCHBOARD_MASTER_KEY_FILE";
    /// The master key itself (base64url); never a flag, so it stays out of `ps`.
    pub const MASTER_KEY: &str = "SWITCHBOARD_MASTER_KEY";
    pub const ADMIN_TOKEN: &str = "SWITCHBOARD_ADMIN_TOKEN";
    pub const NATS_URL: &str = "SWITCHBOARD_NATS_URL";
    pub const NATS_DIR: &str = "SWITCHBOARD_NATS_DIR";
}

/// An org's NATS connection on a pod outlives its last client by this much,
/// so a client that reconnects at once does not pay for a new connection.
pub const DEFAULT_NATS_ORG_IDLE: Duration = Duration::from_secs(300);
/// Long enough to ride out a slow heartbeat, short enough that an agent
/// whose pod crashed takes its role back within seconds.
pub const DEFAULT_ROLE_LEASE: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The TOML file. Every field is optional; unknown keys are errors, so a
/// typo does not silently fall back to a default.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub log_format: Option<LogFormat>,
    /// For the admin API (org management).
    pub admin_token: Option<String>,
    /// Where the registry (orgs, users, keys) lives.
    pub data_dir: Option<PathBuf>,
    /// Serve the demo chat page at `/demo`, signing visitors into this org
    /// (declared here with an HS256 secret). Anyone who reaches `/demo/token`
    /// gets a client token of it: for a throwaway org only.
    pub demo_org: Option<String>,
    /// The master key file (default: `master.key` in the data directory).
    pub master_key_file: Option<PathBuf>,
    #[serde(default)]
    pub limits: FileLimits,
    #[serde(default)]
    pub history: FileHistory,
    #[serde(default)]
    pub shutdown: FileShutdown,
    #[serde(default)]
    pub operators: FileOperators,
    #[serde(default)]
    pub nats: FileNats,
    #[serde(default)]
    pub orgs: Vec<OrgConfig>,
}

/// Cluster mode: set `url` and `dir` together.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileNats {
    pub url: Option<String>,
    /// What `switchboard nats init --out DIR` made.
    pub dir: Option<PathBuf>,
    /// Seconds an org's NATS connection stays open on a pod after its last client left.
    pub org_idle_secs: Option<u64>,
    /// Seconds an operator role stays held after the pod holding it stopped
    /// renewing it (a crashed pod's roles are free again after this).
    pub role_lease_secs: Option<u64>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOperators {
    /// Seconds a session lives without a socket.
    pub session_expiry_secs: Option<u64>,
    /// Seconds a live turn waits for its operator to come back.
    pub turn_grace_secs: Option<u64>,
    /// Bytes buffered for an absent operator.
    pub buffer_bytes: Option<usize>,
    /// Replaced by `buffer_bytes`; kept to say so.
    #[serde(skip_serializing)]
    pub buffer: Option<usize>,
    pub max_turn_bytes: Option<usize>,
    pub max_sessions_per_org: Option<usize>,
    pub max_turns_per_session: Option<usize>,
    pub max_turns_per_channel: Option<usize>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLimits {
    pub max_connections: Option<usize>,
    pub max_frame_bytes: Option<usize>,
    pub outbound_queue_bytes: Option<usize>,
    /// Replaced by `outbound_queue_bytes`; kept to say so.
    #[serde(skip_serializing)]
    pub outbound_queue: Option<usize>,
    pub max_subscriptions: Option<usize>,
    pub publish_rate: Option<u32>,
    pub publish_burst: Option<u32>,
    pub subscribe_rate: Option<u32>,
    pub subscribe_burst: Option<u32>,
    pub ping_interval_secs: Option<u64>,
    pub idle_timeout_secs: Option<u64>,
    pub frame_timeout_secs: Option<u64>,
    pub org_idle_secs: Option<u64>,
    /// Least seconds between two JWKS fetches for one org caused by unknown key ids.
    pub jwks_refetch_secs: Option<u64>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHistory {
    pub max_messages: Option<usize>,
    pub max_age_secs: Option<u64>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileShutdown {
    pub grace_secs: Option<u64>,
    /// Seconds between turning `/ready` false and closing sockets, so a load
    /// balancer stops routing here first.
    pub drain_delay_secs: Option<u64>,
}

/// What flags and environment variables may override (all optional).
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Overrides {
    /// TOML configuration file (default: ./switchboard.toml if it exists)
    #[arg(long, env = env::CONFIG)]
    pub config: Option<PathBuf>,
    /// Address to listen on
    #[arg(long, env = env::LISTEN)]
    pub listen: Option<String>,
    #[arg(long, env = env::LOG_FORMAT, value_enum)]
    pub log_format: Option<LogFormat>,
    #[arg(long, env = env::MAX_CONNECTIONS)]
    pub max_connections: Option<usize>,
    #[arg(long, env = env::MAX_FRAME_BYTES)]
    pub max_frame_bytes: Option<usize>,
    /// Bytes queued per connection before it is cut off as a slow consumer
    #[arg(long, env = env::OUTBOUND_QUEUE_BYTES)]
    pub outbound_queue_bytes: Option<usize>,
    #[arg(long, env = env::MAX_SUBSCRIPTIONS)]
    pub max_subscriptions: Option<usize>,
    /// Publishes per second per connection (0 = unlimited)
    #[arg(long, env = env::PUBLISH_RATE)]
    pub publish_rate: Option<u32>,
    #[arg(long, env = env::PUBLISH_BURST)]
    pub publish_burst: Option<u32>,
    /// Subscribes and unsubscribes per second per connection (0 = unlimited)
    #[arg(long, env = env::SUBSCRIBE_RATE)]
    pub subscribe_rate: Option<u32>,
    #[arg(long, env = env::SUBSCRIBE_BURST)]
    pub subscribe_burst: Option<u32>,
    /// Messages of history kept per channel
    #[arg(long, env = env::HISTORY_MESSAGES)]
    pub history_messages: Option<usize>,
    #[arg(long, env = env::HISTORY_AGE_SECS)]
    pub history_age_secs: Option<u64>,
    #[arg(long, env = env::SHUTDOWN_GRACE_SECS)]
    pub shutdown_grace_secs: Option<u64>,
    #[arg(long, env = env::DRAIN_DELAY_SECS)]
    pub drain_delay_secs: Option<u64>,
    /// Directory of the registry (orgs, users, API keys; default ./switchboard-data)
    #[arg(long, env = env::DATA_DIR)]
    pub data_dir: Option<PathBuf>,
    /// The key secrets are sealed with at rest (default: master.key in the data directory)
    #[arg(long, env = env::MASTER_KEY_FILE)]
    pub master_key_file: Option<PathBuf>,
    /// Token of the admin API (org management)
    #[arg(long, env = env::ADMIN_TOKEN, hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Cluster mode: the NATS server (operator mode, from `switchboard nats init`)
    #[arg(long, env = env::NATS_URL)]
    pub nats_url: Option<String>,
    /// Cluster mode: the directory `switchboard nats init --out` wrote
    #[arg(long, env = env::NATS_DIR)]
    pub nats_dir: Option<PathBuf>,
}

/// The settings a server runs with, validated.
#[derive(Clone, Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    pub log_format: LogFormat,
    pub admin_token: Option<String>,
    pub max_connections: usize,
    pub max_frame_bytes: usize,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    pub frame_timeout: Duration,
    pub limits: Limits,
    pub history: HistoryLimits,
    pub shutdown_grace: Duration,
    pub drain_delay: Duration,
    /// Orgs the config file declares (checked), imported into the registry at start.
    pub orgs: Vec<OrgConfig>,
    pub data_dir: PathBuf,
    pub master_key: MasterSource,
    pub jwks_min_refetch: Duration,
    /// Cluster mode (NATS), or `None` for one pod on its own.
    pub cluster: Option<ClusterSettings>,
    /// The demo page's org, when `/demo` is on.
    pub demo: Option<crate::http::demo::DemoOrg>,
}

/// Every problem found in a configuration.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigErrors(pub Vec<String>);

impl FileConfig {
    pub fn load(path: &Path) -> Result<FileConfig, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors(vec![format!("{}: {e}", path.display())]))?;
        toml::from_str(&text).map_err(|e| ConfigErrors(vec![format!("{}: {e}", path.display())]))
    }
}

impl Settings {
    /// Merges `file` under `over` and validates the result.
    pub fn resolve(file: FileConfig, over: &Overrides) -> Result<Settings, ConfigErrors> {
        let mut errors = Vec::new();
        let listen_text = over
            .listen
            .clone()
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.into());
        let listen = listen_text.parse().unwrap_or_else(|e| {
            errors.push(format!("listen: {listen_text:?} is not an address ({e})"));
            SocketAddr::from(([127, 0, 0, 1], 0))
        });
        let l = &file.limits;
        let o = &file.operators;
        let pick = |o: Option<usize>, f: Option<usize>, d: usize| o.or(f).unwrap_or(d);
        let pick32 = |o: Option<u32>, f: Option<u32>, d: u32| o.or(f).unwrap_or(d);
        let secs = |o: Option<u64>, f: Option<u64>, d: Duration| o.or(f).map_or(d, Duration::from_secs);
        let max_connections = pick(over.max_connections, l.max_connections, DEFAULT_MAX_CONNECTIONS);
        let max_frame_bytes = pick(over.max_frame_bytes, l.max_frame_bytes, DEFAULT_MAX_FRAME_BYTES);
        let ping_interval = secs(None, l.ping_interval_secs, DEFAULT_PING_INTERVAL);
        let idle_timeout = secs(None, l.idle_timeout_secs, DEFAULT_IDLE_TIMEOUT);
        let frame_timeout = secs(None, l.frame_timeout_secs, DEFAULT_FRAME_TIMEOUT);
        let history = HistoryLimits {
            max_messages: pick(
                over.history_messages,
                file.history.max_messages,
                DEFAULT_HISTORY_MESSAGES,
            ),
            max_age: secs(
                over.history_age_secs,
                file.history.max_age_secs,
                DEFAULT_HISTORY_AGE,
            ),
            max_live_turns: o.max_turns_per_channel.unwrap_or(DEFAULT_MAX_TURNS_PER_CHANNEL),
        };
        let limits = Limits {
            outbound_queue_bytes: pick(
                over.outbound_queue_bytes,
                l.outbound_queue_bytes,
                actor_limits::DEFAULT_OUTBOUND_QUEUE_BYTES,
            ),
            max_subscriptions: pick(
                over.max_subscriptions,
                l.max_subscriptions,
                actor_limits::DEFAULT_MAX_SUBSCRIPTIONS,
            ),
            publish_rate: pick32(
                over.publish_rate,
                l.publish_rate,
                actor_limits::DEFAULT_PUBLISH_RATE,
            ),
            publish_burst: pick32(
                over.publish_burst,
                l.publish_burst,
                actor_limits::DEFAULT_PUBLISH_BURST,
            ),
            subscribe_rate: pick32(
                over.subscribe_rate,
                l.subscribe_rate,
                actor_limits::DEFAULT_SUBSCRIBE_RATE,
            ),
            subscribe_burst: pick32(
                over.subscribe_burst,
                l.subscribe_burst,
                actor_limits::DEFAULT_SUBSCRIBE_BURST,
            ),
            replay_limit: history.max_messages.max(1),
            org_idle: secs(None, l.org_idle_secs, actor_limits::DEFAULT_ORG_IDLE),
            session_expiry: secs(None, o.session_expiry_secs, actor_limits::DEFAULT_SESSION_EXPIRY),
            turn_grace: secs(None, o.turn_grace_secs, actor_limits::DEFAULT_TURN_GRACE),
            operator_buffer_bytes: o
                .buffer_bytes
                .unwrap_or(actor_limits::DEFAULT_OPERATOR_BUFFER_BYTES),
            max_turn_bytes: o.max_turn_bytes.unwrap_or(actor_limits::DEFAULT_MAX_TURN_BYTES),
            max_sessions_per_org: o
                .max_sessions_per_org
                .unwrap_or(actor_limits::DEFAULT_MAX_SESSIONS_PER_ORG),
            max_turns_per_session: o
                .max_turns_per_session
                .unwrap_or(actor_limits::DEFAULT_MAX_TURNS_PER_SESSION),
        };
        if l.outbound_queue.is_some() {
            errors.push(
                "limits.outbound_queue (frames) is now limits.outbound_queue_bytes (bytes; default 1 MiB)"
                    .into(),
            );
        }
        if o.buffer.is_some() {
            errors.push(
                "operators.buffer (frames) is now operators.buffer_bytes (bytes; default 256 KiB)".into(),
            );
        }
        for (name, value) in [
            ("limits.max_connections", max_connections),
            ("limits.max_frame_bytes", max_frame_bytes),
            ("operators.max_turns_per_channel", history.max_live_turns),
        ] {
            if value == 0 {
                errors.push(format!("{name} must be at least 1"));
            }
        }
        if max_frame_bytes > 16 << 20 {
            errors.push("limits.max_frame_bytes must be at most 16 MiB".into());
        }
        if ping_interval.is_zero() || idle_timeout <= ping_interval {
            errors.push(
                "limits.idle_timeout_secs must be greater than ping_interval_secs (and both above 0)".into(),
            );
        }
        if frame_timeout.is_zero() {
            errors.push("limits.frame_timeout_secs must be at least 1".into());
        }
        errors.extend(limits.problems(max_frame_bytes));
        if let Err(mut e) = StaticOrgs::from_config(&file.orgs) {
            errors.append(&mut e);
        }
        let data_dir = over
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        if file.nats.role_lease_secs == Some(0) {
            errors
                .push("nats.role_lease_secs must be at least 1: a role no one renews must come free".into());
        }
        let cluster = match (
            over.nats_url.clone().or(file.nats.url),
            over.nats_dir.clone().or(file.nats.dir),
        ) {
            (Some(url), Some(dir)) => Some(ClusterSettings {
                url,
                dir,
                org_idle: secs(None, file.nats.org_idle_secs, DEFAULT_NATS_ORG_IDLE),
                role_lease: secs(None, file.nats.role_lease_secs, DEFAULT_ROLE_LEASE),
            }),
            (None, None) => None,
            (Some(_), None) => {
                errors.push("nats.url (--nats-url) needs nats.dir (--nats-dir): what `switchboard nats init --out DIR` made".into());
                None
            }
            (None, Some(_)) => {
                errors.push("nats.dir (--nats-dir) needs nats.url (--nats-url)".into());
                None
            }
        };
        // Every pod of a cluster must hold the same master key: by default
        // the one `nats init` made beside the operator.
        let default_master = match &cluster {
            Some(c) => c.dir.join(crate::registry::MASTER_KEY_FILE),
            None => data_dir.join(crate::registry::MASTER_KEY_FILE),
        };
        let master_key = match std::env::var(env::MASTER_KEY) {
            Ok(text) if !text.is_empty() => MasterSource::Text(text),
            _ => MasterSource::File(
                over.master_key_file
                    .clone()
                    .or(file.master_key_file)
                    .unwrap_or(default_master),
            ),
        };
        let demo = file.demo_org.as_ref().and_then(|org| {
            let secret = file.orgs.iter().find(|o| &o.id == org).and_then(|o| {
                o.jwt_keys.iter().find_map(|k| match k {
                    crate::directory::JwtKeyConfig::HS256 { secret, .. } => Some(secret.clone()),
                    _ => None,
                })
            });
            if secret.is_none() {
                errors.push(format!(
                    "demo_org: {org:?} is not an org of this file with an HS256 secret"
                ));
            }
            secret.map(|secret| crate::http::demo::DemoOrg {
                org: org.clone(),
                secret,
            })
        });
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        Ok(Settings {
            listen,
            log_format: over.log_format.or(file.log_format).unwrap_or_default(),
            admin_token: over.admin_token.clone().or(file.admin_token),
            max_connections,
            max_frame_bytes,
            ping_interval,
            idle_timeout,
            frame_timeout,
            limits,
            history,
            shutdown_grace: secs(
                over.shutdown_grace_secs,
                file.shutdown.grace_secs,
                DEFAULT_SHUTDOWN_GRACE,
            ),
            drain_delay: secs(
                over.drain_delay_secs,
                file.shutdown.drain_delay_secs,
                Duration::ZERO,
            ),
            orgs: file.orgs,
            data_dir,
            master_key,
            jwks_min_refetch: secs(
                None,
                file.limits.jwks_refetch_secs,
                crate::jwks::DEFAULT_MIN_REFETCH,
            ),
            cluster,
            demo,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_resolve() {
        let s = Settings::resolve(FileConfig::default(), &Overrides::default()).unwrap();
        assert_eq!(s.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(
            s.limits.outbound_queue_bytes,
            actor_limits::DEFAULT_OUTBOUND_QUEUE_BYTES
        );
        assert_eq!(s.history.max_messages, DEFAULT_HISTORY_MESSAGES);
        let defaults = Limits::default();
        assert_eq!(
            (
                s.limits.max_turn_bytes,
                s.limits.session_expiry,
                s.limits.replay_limit
            ),
            (
                defaults.max_turn_bytes,
                defaults.session_expiry,
                defaults.replay_limit
            ),
            "one set of defaults"
        );
    }

    #[test]
    fn flags_win_over_the_file() {
        let file: FileConfig = toml::from_str(
            "listen = \"127.0.0.1:9000\"\n[limits]\noutbound_queue_bytes = 100000\nmax_subscriptions = 3\n",
        )
        .unwrap();
        let over = Overrides {
            outbound_queue_bytes: Some(2_000_000),
            ..Overrides::default()
        };
        let s = Settings::resolve(file, &over).unwrap();
        assert_eq!(s.listen.port(), 9000);
        assert_eq!(s.limits.outbound_queue_bytes, 2_000_000);
        assert_eq!(s.limits.max_subscriptions, 3);
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let file: FileConfig =
            toml::from_str("listen = \"nowhere\"\n[limits]\noutbound_queue_bytes = 0\nmax_frame_bytes = 0\n")
                .unwrap();
        let err = Settings::resolve(file, &Overrides::default()).unwrap_err();
        // listen; max_frame_bytes zero; outbound_queue_bytes zero, and too
        // small for a frame, a turn and the operator buffer.
        assert_eq!(err.0.len(), 6, "{err}");
    }

    #[test]
    fn sizes_that_cannot_work_together_are_refused() {
        let file: FileConfig = toml::from_str(
            "[limits]\noutbound_queue_bytes = 300000\n[operators]\nmax_turn_bytes = 400000\nbuffer_bytes = 100000\n",
        )
        .unwrap();
        let err = Settings::resolve(file, &Overrides::default()).unwrap_err();
        assert_eq!(err.0.len(), 1, "{err}");
        assert!(err.0[0].contains("max_turn_bytes"), "{err}");
    }

    #[test]
    fn renamed_settings_say_so() {
        let file: FileConfig =
            toml::from_str("[limits]\noutbound_queue = 8\n[operators]\nbuffer = 10\n").unwrap();
        let err = Settings::resolve(file, &Overrides::default()).unwrap_err();
        assert_eq!(err.0.len(), 2, "{err}");
        assert!(err.0[0].contains("outbound_queue_bytes"), "{err}");
    }

    #[test]
    fn cluster_mode_needs_both_url_and_dir() {
        let over = Overrides {
            nats_url: Some("nats://127.0.0.1:4222".into()),
            ..Overrides::default()
        };
        let err = Settings::resolve(FileConfig::default(), &over).unwrap_err();
        assert!(err.0[0].contains("--nats-dir"), "{err}");
        let over = Overrides {
            nats_dir: Some("nats".into()),
            ..over
        };
        let s = Settings::resolve(FileConfig::default(), &over).unwrap();
        let cluster = s.cluster.unwrap();
        assert_eq!(cluster.org_idle, DEFAULT_NATS_ORG_IDLE);
        match s.master_key {
            MasterSource::File(path) => assert_eq!(path, PathBuf::from("nats/master.key")),
            MasterSource::Text(_) => {}
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<FileConfig>("[limits]\noutbound_qeue = 1\n").is_err());
    }
}
