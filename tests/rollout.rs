//! A rolling restart behind a load balancer loses nothing: three pods in
//! cluster mode on one nats-server, behind HAProxy health-checking `/ready`
//! (what a Kubernetes Service does); subscribers resume with `since` through
//! it, publishers publish through it, agents stream turns through it. The
//! pods get SIGTERM one at a time, each after its replacement is ready.
//! Every acknowledged message reaches every subscriber once, in order, at
//! its acknowledged offset; every turn an agent finished arrives whole;
//! no operator session is lost. `benches/rollout.sh` runs the long version
//! and prints delivery latency during the roll against the steady run
//! before it.

use crate::common;

mod clients;

use clients::{Seen, agent, call_at, now_micros, publisher, subscriber};

use std::time::{Duration, Instant};

use common::haproxy::{Haproxy, free_addr};
use common::nats::*;
use common::process::{Serve, sigterm, wait_exit};
use common::*;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const CHANNEL: &str = "feed";
const PODS: usize = 3;

/// How long and how hard.
#[derive(Clone, Copy)]
struct Plan {
    steady: Duration,
    tail: Duration,
    subscribers: usize,
    publishers: usize,
    /// Messages per second per publisher.
    rate: u64,
    agents: usize,
    drain_delay_secs: u64,
}

async fn ready(addr: &str) {
    eventually("a new pod is ready", async || {
        reqwest::get(format!("http://{addr}/ready"))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
}

/// Latency percentiles (ms) of the deliveries whose publish time is in `[from, to)`.
fn percentiles(seen: &[Seen], from: u64, to: u64) -> (usize, f64, f64) {
    let mut all: Vec<u64> = seen
        .iter()
        .flat_map(|s| s.latencies.iter())
        .filter(|(t, _)| *t >= from && *t < to)
        .map(|(_, l)| *l)
        .collect();
    all.sort_unstable();
    let at = |q: f64| {
        all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1)))
            .map_or(0.0, |v| *v as f64 / 1000.0)
    };
    (all.len(), at(0.5), at(0.99))
}

async fn roll(plan: Plan) {
    let nats = Nats::start().await;
    let processes = ProcessPods::new(&nats, |c| {
        c.shutdown.drain_delay_secs = Some(plan.drain_delay_secs);
        c.shutdown.grace_secs = Some(10);
        c.limits.publish_rate = Some(0);
    });
    let slots: Vec<String> = (0..2 * PODS).map(|_| free_addr().to_string()).collect();
    let mut pods: Vec<Serve> = slots[..PODS].iter().map(|s| processes.serve_at(s)).collect();
    let balancer = Haproxy::start(&slots.iter().map(|s| s.parse().unwrap()).collect::<Vec<_>>());
    let lb = balancer.addr.to_string();
    ready(&lb).await;
    let key = processes.key("acme").to_owned();

    let (end_tx, end_rx) = tokio::sync::watch::channel(0u64);
    let (subscribed, mut acks) = tokio::sync::mpsc::channel(plan.subscribers * 64);
    let subscribers: Vec<_> = (0..plan.subscribers)
        .map(|i| {
            tokio::spawn(subscriber(
                lb.clone(),
                format!("s{i}"),
                subscribed.clone(),
                end_rx.clone(),
            ))
        })
        .collect();
    for _ in 0..plan.subscribers {
        tokio::time::timeout(PATIENCE, acks.recv())
            .await
            .expect("subscribed in time");
    }
    let stop = CancellationToken::new();
    let publishers: Vec<_> = (0..plan.publishers as u64)
        .map(|p| tokio::spawn(publisher(lb.clone(), key.clone(), p, plan.rate, stop.clone())))
        .collect();
    let agents: Vec<_> = (0..plan.agents)
        .map(|a| tokio::spawn(agent(lb.clone(), key.clone(), a, stop.clone())))
        .collect();

    let started = now_micros();
    tokio::time::sleep(plan.steady).await;
    let roll_start = now_micros();
    let rolled = Instant::now();
    for (i, slot) in slots[PODS..].iter().enumerate() {
        let fresh = processes.serve_at(slot);
        ready(slot).await;
        // The balancer's next health check sees it.
        tokio::time::sleep(Duration::from_millis(500)).await;
        sigterm(&pods[i].child);
        let status = tokio::task::block_in_place(|| wait_exit(&mut pods[i].child));
        assert!(status.success(), "pod {i} drained and exited cleanly: {status}");
        pods.push(fresh);
    }
    let roll_end = now_micros();
    let roll_took = rolled.elapsed();
    tokio::time::sleep(plan.tail).await;
    stop.cancel();
    let mut published = Vec::new();
    for p in publishers {
        published.push(p.await.unwrap());
    }
    let mut streamed = Vec::new();
    for a in agents {
        streamed.push(a.await.unwrap());
    }
    // The last word, acknowledged: every subscriber reads up to it.
    let (status, last) = call_at(
        &lb,
        &format!("/v1/orgs/acme/channels/{CHANNEL}/publish"),
        &key,
        json!({"data": "end"}),
    )
    .await;
    assert_eq!(status, 200, "{last}");
    end_tx.send(last["offset"].as_u64().unwrap()).unwrap();
    let mut seen = Vec::new();
    for s in subscribers {
        seen.push(
            tokio::time::timeout(PATIENCE * 3, s)
                .await
                .expect("subscribers catch up")
                .unwrap(),
        );
    }

    // Every acknowledged message, once, at its offset, at every subscriber.
    let acked: usize = published.iter().map(|p| p.acked.len()).sum();
    assert!(
        acked as u64 > plan.rate,
        "publishing went on ({acked} acknowledged)"
    );
    for (i, s) in seen.iter().enumerate() {
        assert!(
            s.duplicates.is_empty(),
            "subscriber {i} got offsets again: {:?}",
            s.duplicates
        );
        assert!(
            s.unrecovered.is_empty(),
            "subscriber {i} was told history was lost: {:?}",
            s.unrecovered
        );
        for (p, publisher) in published.iter().enumerate() {
            for (n, offset) in &publisher.acked {
                assert_eq!(
                    s.messages.get(&(p as u64, *n)),
                    Some(offset),
                    "subscriber {i}: message {p}/{n}, acknowledged at {offset}"
                );
            }
        }
    }
    // Every finished turn, whole, at every subscriber; no session lost.
    let finished: usize = streamed.iter().map(|a| a.finished.len()).sum();
    assert!(finished > 0, "agents streamed turns");
    for (a, agent) in streamed.iter().enumerate() {
        assert_eq!(agent.session_lost, None, "agent {a}'s session");
        assert!(
            agent.cut_short.is_empty(),
            "agent {a}'s turns cut short: {:?}",
            agent.cut_short
        );
        for (turn, text) in &agent.finished {
            for (i, s) in seen.iter().enumerate() {
                assert_eq!(
                    s.turns.get(turn),
                    Some(&(text.clone(), true)),
                    "subscriber {i}: turn {turn}"
                );
            }
        }
    }
    let (steady_n, steady_p50, steady_p99) = percentiles(&seen, started, roll_start);
    let (roll_n, roll_p50, roll_p99) = percentiles(&seen, roll_start, roll_end);
    let failed: u64 = published.iter().map(|p| p.failed).sum();
    let reconnects: u32 = seen.iter().map(|s| s.reconnects).sum();
    let agent_reconnects: u32 = streamed.iter().map(|a| a.reconnects).sum();
    println!(
        "rollout: {PODS} pods replaced in {:.1} s; {acked} messages acknowledged ({failed} refused or cut, none of them counted), \
         {finished} turns finished, 0 lost, 0 duplicated; subscriber reconnects {reconnects}, agent reconnects {agent_reconnects}",
        roll_took.as_secs_f64()
    );
    println!(
        "delivery latency: steady p50 {steady_p50:.2} ms p99 {steady_p99:.2} ms ({steady_n} deliveries); \
         during the roll p50 {roll_p50:.2} ms p99 {roll_p99:.2} ms ({roll_n} deliveries); p99 ratio {:.2}",
        if steady_p99 > 0.0 {
            roll_p99 / steady_p99
        } else {
            0.0
        }
    );
}

/// Short in the test suite; `benches/rollout.sh` sets `ROLLOUT_STEADY_SECS`
/// for the long run it reports (20 subscribers, 4 publishers, 4 agents).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_behind_a_load_balancer_loses_nothing() {
    let bench = std::env::var("ROLLOUT_STEADY_SECS")
        .ok()
        .and_then(|s| s.parse().ok());
    let plan = match bench {
        Some(steady) => Plan {
            steady: Duration::from_secs(steady),
            tail: Duration::from_secs(5),
            subscribers: 20,
            publishers: 4,
            rate: 50,
            agents: 4,
            drain_delay_secs: 2,
        },
        None => Plan {
            steady: Duration::from_secs(2),
            tail: Duration::from_secs(1),
            subscribers: 3,
            publishers: 2,
            rate: 20,
            agents: 2,
            drain_delay_secs: 1,
        },
    };
    roll(plan).await;
}
