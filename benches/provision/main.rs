//! Cluster-mode provisioning, measured: how long an org's first use takes
//! (account made, pushed, recorded, this pod's connection opened and
//! listening), how long a second pod takes to adopt it, what each open org
//! connection costs the pod and nats-server, how long a pod with many known
//! orgs takes to start, and whether idle close gives the connections back.
//!
//! Needs a nats-server started from `switchboard nats init`: `benches/provision.sh`
//! sets one up and runs this.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use switchboard::config::{FileConfig, Overrides, Settings};
use switchboard::http::App;
use switchboard::registry::admin::NewOrg;
use switchboard::server::Server;
use switchboard_bench::procfs;
use switchboard_proto::OrgId;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long)]
    nats_url: String,
    /// What `switchboard nats init --out` made.
    #[arg(long)]
    nats_dir: PathBuf,
    /// nats-server's pid, for its memory.
    #[arg(long)]
    nats_pid: u32,
    /// Orgs provisioned one after another (first use on pod A, adoption on pod B).
    #[arg(long, default_value_t = 500)]
    orgs: usize,
    /// Orgs in the registry before a third pod starts (start-up time with many orgs).
    #[arg(long, default_value_t = 10_000)]
    known: usize,
    /// Seconds an idle org connection stays open (idle close is checked last).
    #[arg(long, default_value_t = 3)]
    idle_secs: u64,
}

async fn pod(args: &Args) -> anyhow::Result<(Arc<App>, tokio::sync::oneshot::Sender<()>)> {
    let data = tempfile::tempdir()?;
    let file = FileConfig {
        listen: Some("127.0.0.1:0".into()),
        data_dir: Some(data.path().to_path_buf()),
        nats: switchboard::config::FileNats {
            url: Some(args.nats_url.clone()),
            dir: Some(args.nats_dir.clone()),
            org_idle_secs: Some(args.idle_secs),
            ..Default::default()
        },
        ..FileConfig::default()
    };
    let settings = Settings::resolve(file, &Overrides::default())?;
    let server = Server::bind(settings).await?;
    let app = server.app().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _keep = data;
        let _ = server
            .run(async move {
                let _ = stopped.await;
            })
            .await;
    });
    Ok((app, stop))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(what: &str, mut times: Vec<Duration>) {
    times.sort();
    println!(
        "{what}: n={} p50={:.2} ms p90={:.2} ms p99={:.2} ms max={:.2} ms",
        times.len(),
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.9).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3,
        times.last().map_or(0.0, |t| t.as_secs_f64() * 1e3),
    );
}

fn rss(pid: u32) -> u64 {
    procfs::sample(pid).map_or(0, |s| s.rss_kib)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let me = std::process::id();
    let (a, _stop_a) = pod(&args).await.context("pod A")?;
    let (b, _stop_b) = pod(&args).await.context("pod B")?;
    let accounts_a = a.accounts.clone().context("cluster mode")?;
    let accounts_b = b.accounts.clone().context("cluster mode")?;
    let orgs: Vec<OrgId> = (0..args.orgs)
        .map(|i| OrgId::new(&format!("p{i}")))
        .collect::<Result<_, _>>()?;

    let (pod_before, nats_before) = (rss(me), rss(args.nats_pid));
    let mut first = Vec::new();
    for org in &orgs {
        let started = Instant::now();
        accounts_a.open(org).await?;
        first.push(started.elapsed());
    }
    report(
        "first use (account made, pushed, connection open, listening)",
        first,
    );
    let (pod_mid, nats_mid) = (rss(me), rss(args.nats_pid));
    let mut adopt = Vec::new();
    for org in &orgs {
        let started = Instant::now();
        accounts_b.open(org).await?;
        adopt.push(started.elapsed());
    }
    report("adoption on a second pod (connection open, listening)", adopt);
    let (pod_after, nats_after) = (rss(me), rss(args.nats_pid));
    let n = args.orgs as f64;
    println!(
        "memory per org connection: both pods (one process) {:.1} KiB, nats-server {:.1} KiB (first use, account included) + {:.1} KiB (a second pod's connection)",
        (pod_after.saturating_sub(pod_before)) as f64 / (2.0 * n),
        (nats_mid.saturating_sub(nats_before)) as f64 / n,
        (nats_after.saturating_sub(nats_mid)) as f64 / n,
    );
    let _ = pod_mid;

    // Idle close: nothing uses the orgs now; they all close after the idle time.
    let deadline = Instant::now() + Duration::from_secs(args.idle_secs * 3 + 5);
    while accounts_a.open_orgs() + accounts_b.open_orgs() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "idle close: {} org connections open {} s after last use (was {}); pod RSS {} → {} MiB, nats-server {} → {} MiB",
        accounts_a.open_orgs() + accounts_b.open_orgs(),
        args.idle_secs * 3 + 5,
        2 * args.orgs,
        pod_after / 1024,
        rss(me) / 1024,
        nats_after / 1024,
        rss(args.nats_pid) / 1024,
    );

    // Many known orgs: registry records only (no account until first use).
    let started = Instant::now();
    let registry = a.registry.clone();
    for i in 0..args.known {
        registry
            .create_org(NewOrg::new(OrgId::new(&format!("k{i}"))?), "bench")
            .await?;
    }
    println!(
        "{} orgs created in the registry in {:.1} s",
        args.known,
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let (c, _stop_c) = pod(&args).await.context("pod C")?;
    println!(
        "a pod starting with {} known orgs: ready in {:.2} s",
        args.known + args.orgs + 2,
        started.elapsed().as_secs_f64()
    );
    drop(c);
    Ok(())
}
