//! One run: connect and subscribe every connection (bounded concurrent
//! handshakes), then measure what the scenario asks for: deliveries under an
//! open-loop publisher, idle memory, or the connect rate.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use std::sync::Mutex;

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::hostile;
use crate::payload::now_us;
use crate::procfs;
use crate::publish::{self, Schedule, Via};
use crate::rawws;
use crate::report::{Latency, RunResult};
use crate::scenario::{Mode, Plan};
use crate::stats::{ConnSeq, Recorder};
use crate::target::{Reader, Target, Ws};

/// Histograms the subscribers record into (a few, not one per connection:
/// each is tens of KiB).
const RECORDERS: usize = 16;
/// After the last publish, how long deliveries may keep arriving without progress.
const DRAIN_QUIET: Duration = Duration::from_secs(3);

#[derive(Clone, Debug)]
pub struct RunConfig {
    pub target: Target,
    pub plan: Plan,
    pub via: Via,
    /// Source addresses to spread client sockets over (127.0.0.1..=n).
    pub sources: usize,
    /// Handshakes in flight at once.
    pub handshakes: usize,
    /// The server's processes (summed: a cluster's pods and nats-server), for CPU and memory.
    pub server_pid: Vec<u32>,
    pub label: String,
}

struct Connected {
    conns: Vec<(usize, Ws)>,
    elapsed: Duration,
    connect_ms: Histogram<u64>,
    errors: u64,
}

async fn connect_all(cfg: &RunConfig) -> Connected {
    let started = Instant::now();
    let plan = &cfg.plan;
    let results: Vec<_> = futures_util::stream::iter(0..plan.connections)
        .map(|i| {
            let names: Vec<String> = plan
                .channels_of(i)
                .into_iter()
                .map(|c| plan.channel_name(c))
                .collect();
            async move {
                let t = Instant::now();
                let ws = cfg.target.open(i, &names, cfg.sources).await;
                (i, ws, t.elapsed())
            }
        })
        .buffer_unordered(cfg.handshakes.max(1))
        .collect()
        .await;
    let elapsed = started.elapsed();
    let mut connect_ms = Histogram::new_with_bounds(1, 600_000, 3).expect("constant, valid bounds");
    let mut conns = Vec::with_capacity(results.len());
    let mut errors = 0;
    for (i, ws, took) in results {
        match ws {
            Ok(ws) => {
                let _ = connect_ms.record((took.as_millis() as u64).max(1));
                conns.push((i, ws));
            }
            Err(e) => {
                if errors == 0 {
                    eprintln!("connect {i} failed: {e:#}");
                }
                errors += 1;
            }
        }
    }
    Connected {
        conns,
        elapsed,
        connect_ms,
        errors,
    }
}

pub async fn run(cfg: RunConfig) -> anyhow::Result<RunResult> {
    let sample = || procfs::sample_all(&cfg.server_pid);
    let before = sample();
    let connected = connect_all(&cfg).await;
    let mut result = RunResult::new(&cfg);
    result.connect_errors = connected.errors;
    result.connect_per_s = connected.conns.len() as f64 / connected.elapsed.as_secs_f64().max(1e-9);
    result.connect_p99_ms = connected.connect_ms.value_at_quantile(0.99);
    result.rss_kib_before = before.rss_kib;
    match cfg.plan.mode {
        Mode::ConnectStorm => {
            result.rss_kib_after = sample().rss_kib;
        }
        Mode::Idle { settle } => {
            tokio::time::sleep(settle).await;
            let after = sample();
            result.rss_kib_after = after.rss_kib;
            let n = connected.conns.len().max(1) as f64;
            result.rss_kib_per_conn = Some(after.rss_kib.saturating_sub(before.rss_kib) as f64 / n);
        }
        Mode::Deliver => deliver(&cfg, connected.conns, &mut result, sample).await?,
    }
    Ok(result)
}

async fn deliver(
    cfg: &RunConfig,
    conns: Vec<(usize, Ws)>,
    result: &mut RunResult,
    sample: impl Fn() -> procfs::Sample,
) -> anyhow::Result<()> {
    let plan = &cfg.plan;
    let subscribers = plan.subscribers();
    let expected: u64 = (0..plan.messages())
        .map(|i| subscribers[plan.channel_for(i) as usize])
        .sum();
    let delivered = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);

    // One task per connection, recording into a few shared histograms.
    let recorders: Vec<_> = (0..RECORDERS)
        .map(|_| Arc::new(Mutex::new(Recorder::new())))
        .collect();
    let readers: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(n, (conn, ws))| {
            let reader = Reading {
                reader: cfg.target.reader(),
                seq: ConnSeq::new(plan.channels_of(conn)),
                recorder: Arc::clone(&recorders[n % RECORDERS]),
                delivered: Arc::clone(&delivered),
            };
            tokio::spawn(reader.run(ws, stop_rx.clone()))
        })
        .collect();

    // Hostile connections (the abuse scenario) start with the measurement
    // and stop when it ends; the server's memory is sampled every second.
    let hostile = (plan.hostile > 0)
        .then(|| tokio::spawn(hostile::run(cfg.target.clone(), plan.hostile, stop_rx.clone())));
    let peak = Arc::new(AtomicU64::new(0));
    let pids = cfg.server_pid.clone();
    let sampler = (!pids.is_empty()).then(|| {
        let (peak, mut stop) = (Arc::clone(&peak), stop_rx.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tick.tick() => {}
                }
                peak.fetch_max(procfs::sample_all(&pids).rss_kib, Ordering::Relaxed);
            }
        })
    });
    let start = sample();
    let schedule = Schedule {
        start: Instant::now() + Duration::from_millis(100),
        start_us: now_us() + 100_000,
        rate: plan.rate,
    };
    // The publisher gets a thread (and runtime) of its own: behind a thousand
    // runnable reader tasks on the same worker it would send late, and its
    // lateness would show up as the server's latency.
    let (target, publish_plan, via) = (cfg.target.clone(), plan.clone(), cfg.via);
    let published = tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(publish::publish(&target, &publish_plan, via, schedule))
    })
    .await??;
    // Wait for the tail: until everything arrived or nothing moved for a while.
    let mut last = delivered.load(Ordering::Relaxed);
    let mut quiet_since = Instant::now();
    while last < expected && quiet_since.elapsed() < DRAIN_QUIET {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = delivered.load(Ordering::Relaxed);
        if now != last {
            last = now;
            quiet_since = Instant::now();
        }
    }
    let end = sample();
    let _ = stop_tx.send(true);
    if let Some(hostile) = hostile {
        let counts = hostile.await?;
        result.hostile_connects = counts.connects.load(Ordering::Relaxed);
        result.hostile_churned = counts.churned.load(Ordering::Relaxed);
        result.hostile_bulk = counts.bulk.load(Ordering::Relaxed);
    }
    if let Some(sampler) = sampler {
        let _ = sampler.await;
    }
    result.rss_kib_peak = peak.load(Ordering::Relaxed).max(end.rss_kib);

    let mut total = Recorder::new();
    for r in readers {
        total.lost += r.await?.tail_lost(&published.per_channel);
    }
    for recorder in &recorders {
        let recorder = recorder
            .lock()
            .map_err(|_| anyhow::anyhow!("a reader panicked"))?;
        total.merge(&recorder);
    }
    result.published = published.per_channel.iter().sum();
    result.publish_errors = published.errors;
    result.publisher_max_lag_ms = published.max_lag.as_millis() as u64;
    result.expected = expected;
    result.delivered = total.delivered;
    result.lost = total.lost;
    result.duplicated = total.duplicated + total.foreign;
    // From the first message's due time to the last delivery: a burst's
    // throughput, a paced run's rate.
    let delivering_for = total.last_us.saturating_sub(schedule.start_us) as f64 / 1e6;
    result.delivered_per_s = total.delivered as f64 / delivering_for.max(1e-3);
    result.latency_us = Some(Latency::from(&total.latency));
    result.rss_kib_after = end.rss_kib;
    let user = end.user.saturating_sub(start.user).as_secs_f64();
    let system = end.system.saturating_sub(start.system).as_secs_f64();
    result.server_user_s = user;
    result.server_sys_s = system;
    if total.delivered > 0 {
        let per = 1e6 / total.delivered as f64;
        result.cpu_s_per_1m = Some((user + system) * per);
        result.user_us_per_delivery = Some(user * per);
        result.sys_us_per_delivery = Some(system * per);
    }
    Ok(())
}

/// One subscriber's reading: its sequence check, and where it records.
struct Reading {
    reader: Reader,
    seq: ConnSeq,
    recorder: Arc<Mutex<Recorder>>,
    delivered: Arc<AtomicU64>,
}

impl Reading {
    /// Reads until told to stop or the connection ends; returns the
    /// connection's sequence state for the final loss count.
    async fn run(mut self, mut ws: Ws, mut stop: watch::Receiver<bool>) -> ConnSeq {
        loop {
            let frame = tokio::select! {
                _ = stop.changed() => break,
                frame = ws.read_frame() => match frame {
                    Ok(Some(frame)) => frame,
                    _ => break,
                },
            };
            let reply = match frame.opcode {
                rawws::TEXT | rawws::BINARY => self
                    .deliveries(ws.payload(&frame))
                    .map(|r| (rawws::BINARY, r.to_vec())),
                rawws::PING => Some((rawws::PONG, ws.payload(&frame).to_vec())),
                rawws::CLOSE => break,
                _ => None,
            };
            if let Some((opcode, payload)) = reply
                && ws.send(opcode, &payload).await.is_err()
            {
                break;
            }
        }
        self.seq
    }

    fn deliveries(&mut self, payload: &[u8]) -> Option<&'static [u8]> {
        let now = now_us();
        let mut n = 0;
        let Ok(mut recorder) = self.recorder.lock() else {
            return None;
        };
        let seq = &mut self.seq;
        let reply = self.reader.read(payload, |stamp| {
            recorder.record(seq, stamp, now);
            n += 1;
        });
        if n > 0 {
            self.delivered.fetch_add(n, Ordering::Relaxed);
        }
        reply
    }
}
