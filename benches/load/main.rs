//! `switchboard-load run ...` measures one scenario against one target and
//! appends a JSON line; `switchboard-load report FILE` prints medians and
//! ratios and draws the plots. `benches/run.sh` drives both.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use switchboard::config::FileConfig;
use switchboard::directory::JwtKeyConfig;
use switchboard_bench::publish::Via;
use switchboard_bench::run::{RunConfig, run};
use switchboard_bench::scenario::{Plan, SCENARIOS};
use switchboard_bench::target::{Nats, Switchboard, Target};
use switchboard_bench::{plot, report};

#[derive(Parser)]
#[command(
    name = "switchboard-load",
    about = "Load generator for Switchboard and the nats-server WebSocket baseline"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum TargetKind {
    Switchboard,
    /// Switchboard pods in cluster mode (give every pod's --addr)
    Cluster,
    Nats,
}

#[derive(Subcommand)]
enum Command {
    /// Run one scenario against one server
    Run(Box<RunArgs>),
    /// Medians and ratios of the runs in a JSON-lines file; optionally SVG plots
    Report {
        results: PathBuf,
        /// The target in the first column (ratio = first / second)
        #[arg(long, default_value = "switchboard")]
        first: String,
        /// The target in the second column
        #[arg(long, default_value = "nats")]
        second: String,
        /// Write latency-cdf.svg and scaling.svg here
        #[arg(long)]
        plot_dir: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    #[arg(long, value_enum)]
    target: TargetKind,
    /// The server's WebSocket address (Switchboard's listener, or nats-server's
    /// websocket port); repeat for every pod of a cluster
    #[arg(long, required = true)]
    addr: Vec<SocketAddr>,
    /// Switchboard: the config file holding the org's HS256 secret
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long, default_value = "demo")]
    org: String,
    /// Switchboard: an API key with the publish scope (for --via http)
    #[arg(long, default_value = "")]
    api_key: String,
    /// nats-server's client URL (the baseline publishes there)
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    #[arg(long, help = format!("one of: {}", SCENARIOS.join(", ")))]
    scenario: String,
    #[arg(long)]
    connections: Option<usize>,
    /// Messages per second, all channels together
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long)]
    payload: Option<usize>,
    /// Seconds of publishing
    #[arg(long)]
    duration: Option<u64>,
    /// Seconds idle connections settle before memory is read
    #[arg(long)]
    settle: Option<u64>,
    /// How to publish (default: ws for Switchboard, operator for its turns, nats for the baseline)
    #[arg(long, value_enum)]
    via: Option<Via>,
    /// Spread client sockets over 127.0.0.1..=N
    #[arg(long, default_value_t = 4)]
    sources: usize,
    /// Handshakes in flight at once
    #[arg(long, default_value_t = 64)]
    handshakes: usize,
    /// The server's pid, for CPU time and RSS; repeat to sum several
    /// processes (a cluster's pods and its nats-server)
    #[arg(long)]
    server_pid: Vec<u32>,
    #[arg(long, default_value = "")]
    label: String,
    /// Append the result as a JSON line here
    #[arg(long)]
    out: Option<PathBuf>,
}

fn hs256_secret(config: &FileConfig, org: &str) -> anyhow::Result<String> {
    let org_config = config
        .orgs
        .iter()
        .find(|o| o.id == org)
        .with_context(|| format!("no org {org:?} in the config"))?;
    org_config
        .jwt_keys
        .iter()
        .find_map(|k| match k {
            JwtKeyConfig::HS256 { secret, .. } => Some(secret.clone()),
            _ => None,
        })
        .with_context(|| format!("org {org:?} has no HS256 secret"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Report {
            results,
            first,
            second,
            plot_dir,
        } => {
            let runs = report::read_jsonl(&results)?;
            print!("{}", report::table(&runs, &first, &second));
            if let Some(dir) = plot_dir {
                std::fs::create_dir_all(&dir)?;
                plot::plot_cdf(&runs, &dir.join("latency-cdf.svg"))?;
                plot::plot_scaling(&runs, &dir.join("scaling.svg"))?;
                plot::plot_rates(&runs, &dir.join("rates.svg"))?;
                eprintln!("plots written to {}", dir.display());
            }
            Ok(())
        }
        Command::Run(args) => {
            let RunArgs {
                target,
                addr,
                config,
                org,
                api_key,
                nats_url,
                scenario,
                connections,
                rate,
                payload,
                duration,
                settle,
                via,
                sources,
                handshakes,
                server_pid,
                label,
                out,
            } = *args;
            let mut plan = Plan::preset(&scenario)
                .with_context(|| format!("unknown scenario {scenario:?}; one of {}", SCENARIOS.join(", ")))?;
            plan.connections = connections.unwrap_or(plan.connections);
            plan.rate = rate.unwrap_or(plan.rate);
            plan.payload = payload.unwrap_or(plan.payload);
            plan.duration = duration.map_or(plan.duration, Duration::from_secs);
            if let (Some(s), switchboard_bench::scenario::Mode::Idle { .. }) = (settle, plan.mode) {
                plan.mode = switchboard_bench::scenario::Mode::Idle {
                    settle: Duration::from_secs(s),
                };
            }
            let (target, default_via) = match target {
                TargetKind::Switchboard | TargetKind::Cluster => {
                    let path = config.context("--config is required for Switchboard")?;
                    let file = FileConfig::load(&path)?;
                    let secret = hs256_secret(&file, &org)?;
                    // Turns are streamed by an operator session; everything else
                    // goes over one client WebSocket, the counterpart of the
                    // baseline's one NATS connection (--via http to compare).
                    let via = match plan.layout {
                        switchboard_bench::scenario::Layout::Turns { .. } => Via::Operator,
                        _ => Via::Ws,
                    };
                    (
                        Target::Switchboard(Switchboard {
                            addr: addr[0],
                            pods: addr.clone(),
                            cluster: matches!(target, TargetKind::Cluster),
                            org,
                            secret,
                            api_key,
                        }),
                        via,
                    )
                }
                TargetKind::Nats => (
                    Target::Nats(Nats {
                        ws_addr: addr[0],
                        nats_url,
                    }),
                    Via::Nats,
                ),
            };
            let via = via.unwrap_or(default_via);
            let publishes = plan.mode == switchboard_bench::scenario::Mode::Deliver;
            if publishes
                && matches!((&target, via), (Target::Switchboard(sb), Via::Http | Via::Operator) if sb.api_key.is_empty())
            {
                bail!("--api-key is required to publish over HTTP or as an operator");
            }
            let result = run(RunConfig {
                target,
                plan,
                via,
                sources,
                handshakes,
                server_pid,
                label,
            })
            .await?;
            eprintln!("{}", result.summary());
            let line = serde_json::to_string(&result)?;
            match out {
                Some(path) => {
                    let mut f = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&path)?;
                    writeln!(f, "{line}")?;
                }
                None => println!("{line}"),
            }
            Ok(())
        }
    }
}
