//! Start-up of a cluster-mode pod: read what `switchboard nats init` made
//! (operator, its signing seed, the system and broker users' creds), check
//! that the pieces belong together, and connect. Anything missing or wrong
//! stops the pod with a message that names the file or the URL.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use nkeys::KeyPair;

use super::init::files;
use super::jwt;

/// How long start-up waits for nats-server to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What `serve --nats-url URL --nats-dir DIR` asks for.
#[derive(Clone, Debug)]
pub struct ClusterSettings {
    pub url: String,
    pub dir: PathBuf,
    /// An org with no client on this pod for this long closes its NATS connection.
    pub org_idle: Duration,
    /// A role not renewed for this long is free (its pod is gone).
    pub role_lease: Duration,
}

/// The operator as a pod needs it: its public key and the signing key that
/// signs org accounts.
pub struct Operator {
    pub public_key: String,
    pub signing: KeyPair,
}

/// A pod's way into NATS: the operator, and connections as the system user
/// (account pushes) and as the broker user (registry bucket).
pub struct Cluster {
    pub settings: ClusterSettings,
    pub operator: Operator,
    pub sys: async_nats::Client,
    pub broker: async_nats::Client,
}

fn read(dir: &Path, name: &str) -> anyhow::Result<String> {
    let path = dir.join(name);
    std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {} (made by `switchboard nats init --out {}`)",
            path.display(),
            dir.display()
        )
    })
}

/// Reads the operator from `dir` and checks that its signing seed is one of
/// the operator's signing keys.
pub fn load_operator(dir: &Path) -> anyhow::Result<Operator> {
    let operator_jwt = read(dir, files::OPERATOR_JWT)?;
    let public_key = operator_jwt
        .split('.')
        .nth(1)
        .and_then(|body| {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(body).ok()
        })
        .and_then(|body| serde_json::from_slice::<serde_json::Value>(&body).ok())
        .and_then(|claims| claims["iss"].as_str().map(str::to_owned))
        .with_context(|| format!("{} is not an operator JWT", files::OPERATOR_JWT))?;
    let claims = jwt::verify::<jwt::Operator>(operator_jwt.trim(), &public_key)
        .with_context(|| format!("{} does not verify", files::OPERATOR_JWT))?;
    let seed = read(dir, files::OPERATOR_SIGNING_SEED)?;
    let signing = KeyPair::from_seed(seed.trim())
        .map_err(|e| anyhow::anyhow!("{} is not an nkey seed: {e}", files::OPERATOR_SIGNING_SEED))?;
    if !claims.nats.signing_keys.contains(&signing.public_key()) {
        bail!(
            "{} is not a signing key of the operator in {} (files from two different `nats init` runs?)",
            files::OPERATOR_SIGNING_SEED,
            files::OPERATOR_JWT
        );
    }
    Ok(Operator { public_key, signing })
}

/// Connects with a creds file of `dir`; reconnects forever once connected.
async fn connect(url: &str, dir: &Path, creds: &str, name: &str) -> anyhow::Result<async_nats::Client> {
    let text = read(dir, creds)?;
    let options = async_nats::ConnectOptions::with_credentials(&text)
        .with_context(|| format!("{} is not a NATS creds file", dir.join(creds).display()))?
        .name(name)
        .connection_timeout(CONNECT_TIMEOUT);
    // The first connection is tried once: a pod that cannot reach NATS says
    // so and stops. Once connected, the client reconnects forever.
    let attempt = tokio::time::timeout(CONNECT_TIMEOUT, options.connect(url));
    match attempt.await {
        Ok(Ok(client)) => {
            // A round trip proves the server took our credentials.
            tokio::time::timeout(CONNECT_TIMEOUT, client.flush())
                .await
                .map_err(|_| anyhow::anyhow!("NATS at {url} did not answer"))?
                .with_context(|| format!("NATS at {url} did not answer"))?;
            Ok(client)
        }
        Ok(Err(e)) => Err(e).with_context(|| format!("cannot connect to NATS at {url} as {creds}")),
        Err(_) => bail!(
            "cannot connect to NATS at {url} as {creds}: no answer within {}s (is nats-server running there, with the config `nats init` wrote?)",
            CONNECT_TIMEOUT.as_secs()
        ),
    }
}

impl Cluster {
    pub async fn connect(settings: ClusterSettings) -> anyhow::Result<Cluster> {
        let dir = &settings.dir;
        if !dir.is_dir() {
            bail!(
                "the NATS directory {} does not exist (make it with `switchboard nats init --out {}`)",
                dir.display(),
                dir.display()
            );
        }
        let operator = load_operator(dir)?;
        check_url(&settings.url)?;
        let sys = connect(&settings.url, dir, files::SYS_CREDS, "switchboard-sys").await?;
        let broker = connect(&settings.url, dir, files::BROKER_CREDS, "switchboard").await?;
        Ok(Cluster {
            settings,
            operator,
            sys,
            broker,
        })
    }
}

/// Refuses what is not a NATS URL before any connection is tried.
fn check_url(url: &str) -> anyhow::Result<()> {
    url.parse::<async_nats::ServerAddr>().map(|_| ()).map_err(|e| {
        anyhow::anyhow!("--nats-url {url:?} is not a NATS URL ({e}); for example nats://127.0.0.1:4222")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_before_connecting() {
        assert!(check_url("nats://127.0.0.1:4222").is_ok());
        assert!(check_url("nats://127.0.0.1:port").is_err());
        assert!(check_url("http://127.0.0.1:4222").is_err());
    }

    #[test]
    fn a_signing_seed_of_another_operator_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        for out in [&a, &b] {
            super::super::init::init(&super::super::init::InitOptions {
                out: out.clone(),
                port: 4222,
                http_port: 8222,
                name: "t".into(),
                force: false,
            })
            .unwrap();
        }
        assert!(load_operator(&a).is_ok());
        std::fs::copy(
            b.join(files::OPERATOR_SIGNING_SEED),
            a.join(files::OPERATOR_SIGNING_SEED),
        )
        .unwrap();
        let err = load_operator(&a).err().unwrap().to_string();
        assert!(err.contains("not a signing key"), "{err}");
        std::fs::remove_file(a.join(files::OPERATOR_JWT)).unwrap();
        let err = load_operator(&a).err().unwrap().to_string();
        assert!(err.contains("operator.jwt") && err.contains("nats init"), "{err}");
    }
}
