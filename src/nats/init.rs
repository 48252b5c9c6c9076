//! `switchboard nats init --out DIR`: everything a NATS deployment in
//! operator mode needs before Switchboard can provision org accounts on it.
//!
//! Written into DIR: `operator.jwt`, `sys-account.jwt`, `broker-account.jwt`
//! (public), `accounts.conf` (the trusted operator, the system account and
//! both accounts preloaded, with no path in it: any nats-server config can
//! include it, see `deploy/nats`), `nats-server.conf` (includes it; full
//! resolver, JetStream on, no WebSocket listener), and, readable by their owner only,
//! the operator's identity and signing seeds, the `sys.creds` and
//! `broker.creds` of the users Switchboard connects as, and the master key
//! the cluster's registry is sealed with.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use nkeys::KeyPair;

use super::jwt;

/// The files `init` writes, by name, for whoever reads them back.
pub mod files {
    pub const OPERATOR_JWT: &str = "operator.jwt";
    pub const SYS_ACCOUNT_JWT: &str = "sys-account.jwt";
    pub const BROKER_ACCOUNT_JWT: &str = "broker-account.jwt";
    pub const OPERATOR_SEED: &str = "operator.nk";
    pub const OPERATOR_SIGNING_SEED: &str = "operator-signing.nk";
    pub const SYS_CREDS: &str = "sys.creds";
    pub const BROKER_CREDS: &str = "broker.creds";
    pub const SERVER_CONF: &str = "nats-server.conf";
    /// The operator and preloaded accounts, for any nats-server config to include.
    pub const ACCOUNTS_CONF: &str = "accounts.conf";
    /// The registry's master key every pod of the cluster shares.
    pub const MASTER_KEY: &str = crate::registry::MASTER_KEY_FILE;
}

#[derive(Debug, Clone)]
pub struct InitOptions {
    pub out: PathBuf,
    pub port: u16,
    pub http_port: u16,
    pub name: String,
    pub force: bool,
}

/// What `init` made: the public keys, for the caller to print.
#[derive(Debug)]
pub struct Made {
    pub operator: String,
    pub system_account: String,
    pub broker_account: String,
    pub conf: PathBuf,
}

fn seed(kp: &KeyPair) -> anyhow::Result<String> {
    kp.seed()
        .map_err(|e| anyhow::anyhow!("no seed for a key we made: {e}"))
}

pub fn init(o: &InitOptions) -> anyhow::Result<Made> {
    std::fs::create_dir_all(&o.out).with_context(|| format!("cannot create {}", o.out.display()))?;
    let dir = o
        .out
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", o.out.display()))?;
    if dir.join(files::OPERATOR_JWT).exists() && !o.force {
        bail!(
            "{} already holds an operator; pass --force to replace it (every account it signed stops working)",
            dir.display()
        );
    }
    let operator = KeyPair::new_operator();
    let operator_signing = KeyPair::new_operator();
    let sys = KeyPair::new_account();
    let broker = KeyPair::new_account();
    let sys_user = KeyPair::new_user();
    let broker_user = KeyPair::new_user();

    let operator_jwt = jwt::operator(&operator, &operator_signing, &sys.public_key(), &o.name)?;
    let sys_jwt = jwt::account(&operator_signing, &sys.public_key(), "SYS", false, vec![])?;
    let broker_jwt = jwt::account(
        &operator_signing,
        &broker.public_key(),
        "switchboard",
        true,
        vec![],
    )?;
    let sys_user_jwt = jwt::user(
        &sys,
        None,
        &sys_user.public_key(),
        "sys",
        jwt::Permissions::default(),
    )?;
    let broker_user_jwt = jwt::user(
        &broker,
        None,
        &broker_user.public_key(),
        "switchboard",
        jwt::Permissions::default(),
    )?;
    // Never write claims nats-server would take and later reject (NATS.md, trap 1).
    jwt::verify::<jwt::Operator>(&operator_jwt, &operator.public_key())?;
    for account in [&sys_jwt, &broker_jwt] {
        jwt::verify::<jwt::Account>(account, &operator_signing.public_key())?;
    }

    let public = |name: &str, text: &str| -> anyhow::Result<()> {
        std::fs::write(dir.join(name), text).with_context(|| format!("cannot write {name}"))
    };
    let private = |name: &str, text: &str| crate::cli::write_private(&dir.join(name), text);
    public(files::OPERATOR_JWT, &operator_jwt)?;
    public(files::SYS_ACCOUNT_JWT, &sys_jwt)?;
    public(files::BROKER_ACCOUNT_JWT, &broker_jwt)?;
    private(files::OPERATOR_SEED, &format!("{}\n", seed(&operator)?))?;
    private(
        files::OPERATOR_SIGNING_SEED,
        &format!("{}\n", seed(&operator_signing)?),
    )?;
    private(files::SYS_CREDS, &jwt::creds(&sys_user_jwt, &seed(&sys_user)?))?;
    private(
        files::BROKER_CREDS,
        &jwt::creds(&broker_user_jwt, &seed(&broker_user)?),
    )?;
    let (_, master) = crate::registry::seal::MasterKey::generate()?;
    private(files::MASTER_KEY, &format!("{master}\n"))?;
    let accounts = accounts_conf(
        &operator_jwt,
        &sys.public_key(),
        &sys_jwt,
        &broker.public_key(),
        &broker_jwt,
    );
    public(files::ACCOUNTS_CONF, &accounts)?;
    public(files::SERVER_CONF, &server_conf(&dir, o))?;
    Ok(Made {
        operator: operator.public_key(),
        system_account: sys.public_key(),
        broker_account: broker.public_key(),
        conf: dir.join(files::SERVER_CONF),
    })
}

/// The operator (inline: nats-server takes a JWT where it takes its file),
/// the system account and the preloaded accounts.
fn accounts_conf(operator_jwt: &str, sys: &str, sys_jwt: &str, broker: &str, broker_jwt: &str) -> String {
    format!(
        "# Made by `switchboard nats init`: the trusted operator and the accounts\n\
         # every server of the deployment preloads (org accounts are pushed to\n\
         # the full resolver at run time). Public keys and signed JWTs only.\n\
         operator: \"{operator_jwt}\"\n\
         system_account: {sys}\n\
         resolver_preload: {{\n  {sys}: \"{sys_jwt}\"\n  {broker}: \"{broker_jwt}\"\n}}\n"
    )
}

fn server_conf(dir: &Path, o: &InitOptions) -> String {
    let d = dir.display();
    format!(
        "# nats-server configuration made by `switchboard nats init` (operator mode).\n\
         port: {port}\n\
         http_port: {http}\n\
         include \"{accounts}\"\n\
         jetstream: {{ store_dir: \"{d}/js\", max_memory_store: 256MB, max_file_store: 2GB }}\n\
         resolver: {{ type: full, dir: \"{d}/jwt\", allow_delete: true, interval: \"2m\", timeout: \"1.9s\" }}\n",
        port = o.port,
        http = o.http_port,
        accounts = files::ACCOUNTS_CONF,
    )
}
