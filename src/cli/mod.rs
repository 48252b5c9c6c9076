//! The `switchboard` command: `serve`, `init` and `token`; `org`, `user`
//! and `key` talk to a running server's admin API ([`admin`]).

mod admin;

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use switchboard_proto::{ChannelPattern, OrgId, TargetPattern};

use crate::auth::{ClientClaims, new_api_key, now_secs, random_token, sign_hs256};
use crate::config::{FileConfig, Overrides, Settings};
use crate::directory::{ApiKeyConfig, JwtKeyConfig, OrgConfig, Scope};
use crate::server::Server;

/// The config file `serve` and `token` read when none is named.
pub const DEFAULT_CONFIG: &str = "switchboard.toml";
/// Client tokens printed for a demo last a day.
const DEMO_TOKEN_TTL_SECS: u64 = 24 * 3600;

#[derive(Parser, Debug)]
#[command(name = "switchboard", version, about = "Multi-tenant realtime message broker")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the broker
    Serve(Overrides),
    /// Write a config file with a random admin token and a demo org
    Init {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        path: PathBuf,
        /// The demo org's id
        #[arg(long, default_value = "demo")]
        org: String,
        /// Overwrite an existing file
        #[arg(long)]
        force: bool,
    },
    /// Print a client token (JWT) signed with an org's HS256 secret
    Token {
        #[arg(long, env = crate::config::env::CONFIG, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[arg(long, default_value = "demo")]
        org: String,
        /// The client's subject (user id)
        #[arg(long, default_value = "demo-user")]
        sub: String,
        /// Channel patterns it may subscribe to (repeatable; default: all)
        #[arg(long)]
        subscribe: Vec<String>,
        /// Channel patterns it may publish on (repeatable; default: all)
        #[arg(long)]
        publish: Vec<String>,
        /// Operator addresses it may send to: role:<name>, role:*, op:*, * (repeatable; default: *)
        #[arg(long)]
        send: Vec<String>,
        /// Lifetime in seconds
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
    /// Manage orgs on a running server (admin token)
    #[command(subcommand)]
    Org(admin::OrgCommand),
    /// Manage an org's users on a running server
    #[command(subcommand)]
    User(admin::UserCommand),
    /// Manage an org's API keys on a running server
    #[command(subcommand)]
    Key(admin::KeyCommand),
    /// NATS operator mode (cluster)
    #[command(subcommand)]
    Nats(NatsCommand),
}

#[derive(Subcommand, Debug)]
pub enum NatsCommand {
    /// Make the operator, system and broker accounts, their credentials and a nats-server.conf
    Init {
        /// Directory to write into
        #[arg(long)]
        out: PathBuf,
        /// nats-server's client port
        #[arg(long, default_value_t = 4222)]
        port: u16,
        /// nats-server's monitoring port
        #[arg(long, default_value_t = 8222)]
        http_port: u16,
        /// The operator's name
        #[arg(long, default_value = "switchboard")]
        name: String,
        /// Replace an operator already there
        #[arg(long)]
        force: bool,
    },
    /// Print what `init` wrote as the Secret and ConfigMap of deploy/overlays/cluster (for `kubectl apply -f -`)
    Kubernetes {
        /// The directory `nats init --out` wrote
        #[arg(long)]
        dir: PathBuf,
        /// Namespace to put them in (default: kubectl's)
        #[arg(long)]
        namespace: Option<String>,
    },
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(over) => serve(over).await,
        Command::Init { path, org, force } => init(&path, &org, force),
        Command::Org(c) => admin::org(c).await,
        Command::User(c) => admin::user(c).await,
        Command::Key(c) => admin::key(c).await,
        Command::Nats(NatsCommand::Init {
            out,
            port,
            http_port,
            name,
            force,
        }) => {
            let made = crate::nats::init::init(&crate::nats::init::InitOptions {
                out,
                port,
                http_port,
                name,
                force,
            })?;
            println!("operator        {}", made.operator);
            println!("system account  {}", made.system_account);
            println!("broker account  {}", made.broker_account);
            println!("start NATS:     nats-server -c {}", made.conf.display());
            Ok(())
        }
        Command::Nats(NatsCommand::Kubernetes { dir, namespace }) => {
            let list = crate::nats::kube::manifests(&dir, namespace.as_deref())?;
            println!("{}", serde_json::to_string_pretty(&list)?);
            Ok(())
        }
        Command::Token {
            config,
            org,
            sub,
            subscribe,
            publish,
            send,
            ttl,
        } => {
            let file = FileConfig::load(&config)?;
            let grants = TokenGrants {
                subscribe: &subscribe,
                publish: &publish,
                send: &send,
            };
            let token = token_for(&file, &org, &sub, grants, ttl)?;
            println!("{token}");
            Ok(())
        }
    }
}

async fn serve(over: Overrides) -> anyhow::Result<()> {
    let default = Path::new(DEFAULT_CONFIG);
    let (file, demo) = match &over.config {
        Some(path) => (FileConfig::load(path)?, None),
        None if default.exists() => (FileConfig::load(default)?, None),
        // A pod of a cluster takes its orgs from the shared registry: a
        // throwaway demo org per pod would overwrite the other pods' one.
        None if over.nats_url.is_some() => (FileConfig::default(), None),
        None => {
            let (file, key) = demo_config("demo")?;
            (file, Some(key))
        }
    };
    let demo_token = match demo {
        Some(api_key) => Some((
            token_for(&file, "demo", "demo-user", TokenGrants::ALL, DEMO_TOKEN_TTL_SECS)?,
            api_key,
        )),
        None => None,
    };
    let settings = Settings::resolve(file, &over)?;
    // The admin token in effect: a flag or SWITCHBOARD_ADMIN_TOKEN wins over the demo's.
    let demo = demo_token.map(|(token, api_key)| Demo {
        token,
        api_key,
        admin_token: settings.admin_token.clone().unwrap_or_default(),
    });
    crate::telemetry::init_tracing(settings.log_format);
    let server = Server::bind(settings).await?;
    if let Some(demo) = demo {
        print_demo_banner(server.local_addr(), &demo)?;
    }
    server.run(shutdown_signal()).await
}

/// An in-memory config with one demo org: what `serve` runs with when there
/// is no config file. Returns the org's API key in plain text.
fn demo_config(org: &str) -> anyhow::Result<(FileConfig, String)> {
    let org_id = OrgId::new(org)?;
    let key = new_api_key(&org_id, "default")?;
    let file = FileConfig {
        admin_token: Some(random_token(32)?),
        demo_org: Some(org.into()),
        orgs: vec![OrgConfig {
            rollup: vec![],
            id: org.into(),
            allowed_origins: vec![],
            jwt_keys: vec![JwtKeyConfig::HS256 {
                secret: random_token(32)?,
                kid: None,
            }],
            api_keys: vec![ApiKeyConfig {
                id: key.id.clone(),
                sha256: key.sha256_hex.clone(),
                scopes: Scope::all(),
            }],
        }],
        ..FileConfig::default()
    };
    Ok((file, key.plaintext))
}

/// What the no-config quick start prints: its credentials are made afresh each start.
struct Demo {
    token: String,
    api_key: String,
    admin_token: String,
}

fn print_demo_banner(addr: std::net::SocketAddr, demo: &Demo) -> anyhow::Result<()> {
    let Demo {
        token,
        api_key,
        admin_token,
    } = demo;
    let mut err = std::io::stderr().lock();
    writeln!(
        err,
        "\nNo config file: running with a throwaway demo org (`switchboard init` writes a config to keep).\n\
         \n  client token (24 h, every channel):\n    {token}\n\
         \n  connect:   websocat 'ws://{addr}/v1/ws?token={token}'\n\
         \n  then send: {{\"type\":\"subscribe\",\"id\":1,\"channel\":\"chat.1\"}}\n\
         \n  publish:   curl -H 'Authorization: Bearer {api_key}' -d '{{\"data\":{{\"text\":\"hi\"}}}}' \\\n               http://{addr}/v1/orgs/demo/channels/chat.1/publish\n\
         \n  admin:     SWITCHBOARD_ADMIN_TOKEN={admin_token} switchboard org list\n"
    )?;
    Ok(())
}

fn init(path: &Path, org: &str, force: bool) -> anyhow::Result<()> {
    if path.exists() && !force {
        bail!("{} exists; pass --force to overwrite it", path.display());
    }
    let (file, api_key) = demo_config(org)?;
    let body = toml::to_string_pretty(&file).context("cannot serialize the config")?;
    let text = format!(
        "# Switchboard configuration. Secrets inside: keep this file private.\n\
         # Every setting and its default: README.md, \"Configuration\".\n\n{body}"
    );
    write_private(path, &text)?;
    println!("wrote {}", path.display());
    println!("API key for org {org} (shown once, stored hashed): {api_key}");
    println!("client token: switchboard token --org {org} --sub alice");
    Ok(())
}

/// Writes `text` to `path` readable by its owner only. The file is written
/// beside it and renamed over it, so an existing file ends up 0600 too, and
/// a symbolic link at `path` is refused rather than written through.
#[cfg(unix)]
pub(crate) fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if path.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink()) {
        bail!(
            "{} is a symbolic link; refusing to write secrets through it",
            path.display()
        );
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("config");
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(not(unix))]
pub(crate) fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// The grants of a token as given on the command line; empty means all.
#[derive(Clone, Copy)]
pub struct TokenGrants<'a> {
    pub subscribe: &'a [String],
    pub publish: &'a [String],
    pub send: &'a [String],
}

impl TokenGrants<'_> {
    pub const ALL: TokenGrants<'static> = TokenGrants {
        subscribe: &[],
        publish: &[],
        send: &[],
    };
}

/// A client token for `org` signed with its first HS256 secret.
pub fn token_for(
    file: &FileConfig,
    org: &str,
    sub: &str,
    grants: TokenGrants,
    ttl: u64,
) -> anyhow::Result<String> {
    let org_config = file
        .orgs
        .iter()
        .find(|o| o.id == org)
        .with_context(|| format!("no org {org:?} in the config"))?;
    let secret = org_config
        .jwt_keys
        .iter()
        .find_map(|k| match k {
            JwtKeyConfig::HS256 { secret, .. } => Some(secret),
            _ => None,
        })
        .with_context(|| format!("org {org:?} has no HS256 secret; sign tokens with your own private key"))?;
    let patterns = |given: &[String]| -> anyhow::Result<Vec<ChannelPattern>> {
        if given.is_empty() {
            return Ok(vec![ChannelPattern::new(">")?]);
        }
        given
            .iter()
            .map(|p| ChannelPattern::new(p).map_err(anyhow::Error::from))
            .collect()
    };
    let now = now_secs();
    let claims = ClientClaims {
        sub: sub.into(),
        org: org.into(),
        exp: now + ttl,
        iat: Some(now),
        jti: None,
        subscribe: patterns(grants.subscribe)?,
        publish: patterns(grants.publish)?,
        send: if grants.send.is_empty() {
            vec![TargetPattern::Any]
        } else {
            grants
                .send
                .iter()
                .map(|p| TargetPattern::parse(p).map_err(anyhow::Error::msg))
                .collect::<Result<_, _>>()?
        },
    };
    Ok(sign_hs256(secret, &claims)?)
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
