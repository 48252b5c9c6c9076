#![allow(clippy::unwrap_used)] // tests fail loudly by design

//! The load generator against real servers: both protocol adapters deliver
//! every message of a small plan exactly once, through each publish path,
//! and the result reports what the table needs.

mod harness;

use std::time::Duration;

use switchboard_bench::publish::Via;
use switchboard_bench::run::{RunConfig, run};
use switchboard_bench::scenario::{Layout, Mode, Plan};
use switchboard_bench::target::Target;

fn plan(layout: Layout, connections: usize) -> Plan {
    Plan {
        scenario: "test".into(),
        connections,
        layout,
        mode: Mode::Deliver,
        rate: 200.0,
        payload: 64,
        duration: Duration::from_secs(1),
        hostile: 0,
        burst: None,
        publishers: 1,
    }
}

async fn check(target: Target, plan: Plan, via: Via) -> switchboard_bench::report::RunResult {
    let result = run(RunConfig {
        target,
        plan: plan.clone(),
        via,
        sources: 2,
        handshakes: 8,
        server_pid: vec![std::process::id()],
        label: "test".into(),
    })
    .await
    .unwrap();
    assert_eq!(result.connect_errors, 0);
    assert_eq!(result.published, plan.messages(), "{via:?}");
    assert!(result.expected > 0);
    assert_eq!(
        (result.delivered, result.lost, result.duplicated),
        (result.expected, 0, 0),
        "{via:?}"
    );
    let latency = result.latency_us.as_ref().unwrap();
    assert!(latency.p50 > 0 && latency.p99 >= latency.p50);
    assert!(result.cpu_s_per_1m.is_some());
    result
}

/// A small abuse run: the honest subscribers get everything while each kind
/// of hostile connection does its thing.
fn abuse(
    target: Target,
    via: Via,
) -> impl std::future::Future<Output = switchboard_bench::report::RunResult> {
    let plan = Plan {
        hostile: 6,
        duration: Duration::from_secs(2),
        ..plan(Layout::Fanout { channels: 1 }, 20)
    };
    check(target, plan, via)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_abuse_scenario_runs_against_both_targets() {
    let server = harness::switchboard().await;
    let nats = harness::nats_server();
    for target in [
        Target::Switchboard(server.target.clone()),
        Target::Nats(nats.target.clone()),
    ] {
        let via = if matches!(target, Target::Nats(_)) {
            Via::Nats
        } else {
            Via::Ws
        };
        let result = abuse(target, via).await;
        assert!(result.hostile_connects >= 6, "{}", result.summary());
        assert!(
            result.hostile_churned > 0 && result.hostile_bulk > 0,
            "{}",
            result.summary()
        );
        assert!(result.rss_kib_peak > 0);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchboard_adapter_over_http_and_ws() {
    let server = harness::switchboard().await;
    let target = Target::Switchboard(server.target.clone());
    check(
        target.clone(),
        plan(Layout::Fanout { channels: 3 }, 30),
        Via::Http,
    )
    .await;
    check(
        target.clone(),
        plan(Layout::Personal { group_size: 5 }, 20),
        Via::Ws,
    )
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchboard_turns_streamed_by_an_operator() {
    let server = harness::switchboard().await;
    let target = Target::Switchboard(server.target.clone());
    check(target, plan(Layout::Turns { channels: 4 }, 20), Via::Operator).await;
    server.stop().await;
}

/// Bursts from several publishers: everything is due at once, each channel
/// from one publisher, and the throughput is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_from_several_publishers_against_both_targets() {
    let server = harness::switchboard().await;
    let nats = harness::nats_server();
    let burst = Plan {
        burst: Some(600),
        publishers: 3,
        rate: f64::INFINITY,
        ..plan(Layout::Fanout { channels: 3 }, 30)
    };
    for (target, via) in [
        (Target::Switchboard(server.target.clone()), Via::Ws),
        (Target::Nats(nats.target.clone()), Via::Nats),
    ] {
        let result = check(target, burst.clone(), via).await;
        assert_eq!(result.expected, 600 * 10);
        assert!(result.delivered_per_s > 0.0);
        assert_eq!(result.rate, 0.0, "a burst is recorded as unpaced");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_adapter_over_websocket() {
    let nats = harness::nats_server();
    let target = Target::Nats(nats.target.clone());
    check(
        target.clone(),
        plan(Layout::Fanout { channels: 3 }, 30),
        Via::Nats,
    )
    .await;
    check(target, plan(Layout::Personal { group_size: 5 }, 20), Via::Nats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_connect_storm_report_their_figures() {
    let server = harness::switchboard().await;
    let target = Target::Switchboard(server.target.clone());
    let base = RunConfig {
        target,
        plan: Plan {
            connections: 50,
            mode: Mode::Idle {
                settle: Duration::from_millis(200),
            },
            ..plan(Layout::Fanout { channels: 1 }, 50)
        },
        via: Via::Http,
        sources: 1,
        handshakes: 16,
        server_pid: vec![std::process::id()],
        label: "test".into(),
    };
    let idle = run(base.clone()).await.unwrap();
    assert!(idle.rss_kib_per_conn.is_some());
    let storm = run(RunConfig {
        plan: Plan {
            mode: Mode::ConnectStorm,
            ..base.plan.clone()
        },
        ..base
    })
    .await
    .unwrap();
    assert!(storm.connect_per_s > 0.0);
    assert_eq!(storm.connect_errors, 0);
    server.stop().await;
}

#[tokio::test]
async fn a_wrong_target_is_refused() {
    let nats = harness::nats_server();
    let err = run(RunConfig {
        target: Target::Nats(nats.target.clone()),
        plan: plan(Layout::Fanout { channels: 1 }, 1),
        via: Via::Http,
        sources: 1,
        handshakes: 1,
        server_pid: Vec::new(),
        label: String::new(),
    })
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("cannot be published to via Http"),
        "{err}"
    );
}
