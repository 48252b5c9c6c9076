//! Results: one JSON line per run, then medians per scenario and target,
//! ratios against the baseline measured in the same session, and a table
//! (the plots are in [`crate::plot`]).

use std::collections::BTreeMap;
use std::path::Path;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::publish::Via;
use crate::run::RunConfig;

/// Latency quantiles in µs; `cdf` holds (quantile, µs) points for plotting.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub cdf: Vec<(f64, u64)>,
}

const CDF_POINTS: [f64; 14] = [
    0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9995, 0.9999, 1.0,
];

impl From<&Histogram<u64>> for Latency {
    fn from(h: &Histogram<u64>) -> Self {
        Latency {
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            cdf: CDF_POINTS.iter().map(|q| (*q, h.value_at_quantile(*q))).collect(),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunResult {
    pub scenario: String,
    pub target: String,
    pub label: String,
    pub via: Option<Via>,
    pub connections: usize,
    /// Messages per second; 0 for a burst (unpaced: JSON has no infinity).
    pub rate: f64,
    pub payload: usize,
    pub duration_s: f64,
    pub connect_per_s: f64,
    pub connect_p99_ms: u64,
    pub connect_errors: u64,
    pub published: u64,
    pub publish_errors: u64,
    pub publisher_max_lag_ms: u64,
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub delivered_per_s: f64,
    pub latency_us: Option<Latency>,
    pub server_user_s: f64,
    pub server_sys_s: f64,
    pub cpu_s_per_1m: Option<f64>,
    pub user_us_per_delivery: Option<f64>,
    pub sys_us_per_delivery: Option<f64>,
    pub rss_kib_before: u64,
    pub rss_kib_after: u64,
    /// The largest resident size sampled while publishing.
    #[serde(default)]
    pub rss_kib_peak: u64,
    pub rss_kib_per_conn: Option<f64>,
    /// The abuse scenario's hostile connections: connects, churned
    /// subscribe/unsubscribe requests, bulk messages published.
    #[serde(default)]
    pub hostile_connects: u64,
    #[serde(default)]
    pub hostile_churned: u64,
    #[serde(default)]
    pub hostile_bulk: u64,
}

impl RunResult {
    pub fn new(cfg: &RunConfig) -> Self {
        RunResult {
            scenario: cfg.plan.scenario.clone(),
            target: cfg.target.name().into(),
            label: cfg.label.clone(),
            via: Some(cfg.via),
            connections: cfg.plan.connections,
            rate: if cfg.plan.rate.is_finite() {
                cfg.plan.rate
            } else {
                0.0
            },
            payload: cfg.plan.payload,
            duration_s: cfg.plan.duration.as_secs_f64(),
            ..RunResult::default()
        }
    }

    /// One line for a person watching the run.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{:<14} {:<12} conns {:>6}",
            self.scenario, self.target, self.connections
        );
        if let Some(l) = &self.latency_us {
            s += &format!(
                "  delivered {}/{} lost {} dup {}  p50 {:.2} ms p99 {:.2} ms",
                self.delivered,
                self.expected,
                self.lost,
                self.duplicated,
                l.p50 as f64 / 1e3,
                l.p99 as f64 / 1e3
            );
        }
        if let Some(c) = self.cpu_s_per_1m {
            s += &format!(
                "  {c:.2} CPU-s/1M (user {:.2} sys {:.2} µs)",
                self.user_us_per_delivery.unwrap_or(0.0),
                self.sys_us_per_delivery.unwrap_or(0.0)
            );
        }
        if let Some(k) = self.rss_kib_per_conn {
            s += &format!("  {k:.2} KiB/conn");
        }
        if self.latency_us.is_some() {
            s += &format!(
                "  RSS +{:.1} MiB (peak +{:.1})",
                self.rss_kib_after.saturating_sub(self.rss_kib_before) as f64 / 1024.0,
                self.rss_kib_peak.saturating_sub(self.rss_kib_before) as f64 / 1024.0
            );
        }
        if self.hostile_connects > 0 {
            s += &format!(
                "  hostile: {} connects, {} churned, {} bulk",
                self.hostile_connects, self.hostile_churned, self.hostile_bulk
            );
        }
        if self.latency_us.is_none() && self.rss_kib_per_conn.is_none() {
            s += &format!(
                "  {:.0} conn/s (p99 {} ms, {} errors)",
                self.connect_per_s, self.connect_p99_ms, self.connect_errors
            );
        }
        s
    }
}

pub(crate) fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The metrics the table reports, and whether lower is better.
const METRICS: &[(&str, bool)] = &[
    ("delivered_per_s", false),
    ("cpu_s_per_1m", true),
    ("user_us_per_delivery", true),
    ("sys_us_per_delivery", true),
    ("p50_ms", true),
    ("p99_ms", true),
    ("rss_kib_per_conn", true),
    ("rss_growth_mib", true),
    ("rss_peak_growth_mib", true),
    ("connect_per_s", false),
    ("lost", true),
    ("duplicated", true),
];

fn metric(r: &RunResult, name: &str) -> Option<f64> {
    let ms = |us: u64| us as f64 / 1e3;
    match name {
        // What a burst measures; a paced run delivers at the rate it is fed.
        "delivered_per_s" => r.scenario.starts_with("burst").then_some(r.delivered_per_s),
        "cpu_s_per_1m" => r.cpu_s_per_1m,
        "user_us_per_delivery" => r.user_us_per_delivery,
        "sys_us_per_delivery" => r.sys_us_per_delivery,
        "p50_ms" => r.latency_us.as_ref().map(|l| ms(l.p50)),
        "p99_ms" => r.latency_us.as_ref().map(|l| ms(l.p99)),
        "rss_kib_per_conn" => r.rss_kib_per_conn,
        "rss_growth_mib" => r
            .latency_us
            .is_some()
            .then(|| r.rss_kib_after.saturating_sub(r.rss_kib_before) as f64 / 1024.0),
        "rss_peak_growth_mib" => (r.latency_us.is_some() && r.rss_kib_peak > 0)
            .then(|| r.rss_kib_peak.saturating_sub(r.rss_kib_before) as f64 / 1024.0),
        "connect_per_s" => (r.scenario == "connect-storm").then_some(r.connect_per_s),
        "lost" => r.latency_us.is_some().then_some(r.lost as f64),
        "duplicated" => r.latency_us.is_some().then_some(r.duplicated as f64),
        _ => None,
    }
}

pub(crate) fn by_scenario_and_target<'a>(
    runs: impl Iterator<Item = &'a RunResult>,
) -> BTreeMap<(String, String), Vec<&'a RunResult>> {
    let mut grouped: BTreeMap<(String, String), Vec<&RunResult>> = BTreeMap::new();
    for r in runs {
        grouped
            .entry((r.scenario.clone(), r.target.clone()))
            .or_default()
            .push(r);
    }
    grouped
}

/// Per (scenario, target): the number of runs and each metric's median.
pub type Medians = BTreeMap<(String, String), (usize, BTreeMap<&'static str, f64>)>;

/// Medians per (scenario, target, metric), with the number of runs.
pub fn medians(results: &[RunResult]) -> Medians {
    by_scenario_and_target(results.iter())
        .into_iter()
        .map(|(key, runs)| {
            let values = METRICS
                .iter()
                .filter_map(|(name, _)| {
                    Some((
                        *name,
                        median(runs.iter().filter_map(|r| metric(r, name)).collect())?,
                    ))
                })
                .collect();
            (key, (runs.len(), values))
        })
        .collect()
}

/// A Markdown table: medians for Switchboard and the NATS baseline, and
/// their ratio (Switchboard / NATS).
/// Medians per scenario of target `a` beside target `b`, and `a / b`.
pub fn table(results: &[RunResult], a: &str, b: &str) -> String {
    let m = medians(results);
    let mut out = format!("| scenario | metric | {a} | {b} | ratio | runs |\n|---|---|---|---|---|---|\n");
    let scenarios: Vec<String> = {
        let mut s: Vec<String> = m.keys().map(|(s, _)| s.clone()).collect();
        s.dedup();
        s
    };
    for scenario in scenarios {
        let get = |target: &str| m.get(&(scenario.clone(), target.to_owned()));
        let (sb, nats) = (get(a), get(b));
        for (name, _) in METRICS {
            let a = sb.and_then(|(_, v)| v.get(name).copied());
            let b = nats.and_then(|(_, v)| v.get(name).copied());
            if a.is_none() && b.is_none() {
                continue;
            }
            let fmt = |x: Option<f64>| x.map_or("–".into(), |x| format!("{x:.2}"));
            let ratio = match (a, b) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
                _ => "–".into(),
            };
            let runs = format!("{}/{}", sb.map_or(0, |(n, _)| *n), nats.map_or(0, |(n, _)| *n));
            out += &format!(
                "| {scenario} | {name} | {} | {} | {ratio} | {runs} |\n",
                fmt(a),
                fmt(b)
            );
        }
    }
    out + &beside_plain(&m)
}

/// The abuse scenario beside the plain fan-out it disturbs, per target:
/// the honest subscribers' p99 and the server's memory growth.
fn beside_plain(m: &Medians) -> String {
    let mut out = String::new();
    for target in ["switchboard", "nats"] {
        let get = |scenario: &str, name: &str| {
            m.get(&(scenario.to_owned(), target.to_owned()))
                .and_then(|(_, v)| v.get(name).copied())
        };
        let (Some(abused), Some(plain)) = (get("abuse", "p99_ms"), get("fanout-1k", "p99_ms")) else {
            continue;
        };
        let growth =
            |scenario| get(scenario, "rss_peak_growth_mib").map_or("–".into(), |g| format!("{g:.1} MiB"));
        out += &format!(
            "\n{target}: abuse beside fanout-1k: p99 {abused:.2} vs {plain:.2} ms ({:.2}×), peak RSS growth {} vs {}\n",
            abused / plain,
            growth("abuse"),
            growth("fanout-1k"),
        );
    }
    out
}

pub fn read_jsonl(path: &Path) -> anyhow::Result<Vec<RunResult>> {
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| Ok(serde_json::from_str(l)?))
        .collect()
}

/// A made-up fan-out run, for tests of the report and the plots.
#[cfg(test)]
pub(crate) fn sample_run(scenario: &str, target: &str, rate: f64, cpu: f64, p99_us: u64) -> RunResult {
    RunResult {
        scenario: scenario.into(),
        target: target.into(),
        connections: 1000,
        rate,
        cpu_s_per_1m: Some(cpu),
        latency_us: Some(Latency {
            p99: p99_us,
            cdf: vec![(0.5, 100), (0.99, p99_us), (1.0, p99_us)],
            ..Latency::default()
        }),
        ..RunResult::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(target: &str, cpu: f64, p99_us: u64) -> RunResult {
        sample_run("fanout-1k", target, 100.0, cpu, p99_us)
    }

    #[test]
    fn medians_and_ratios() {
        let results = vec![
            run("switchboard", 4.0, 2000),
            run("switchboard", 5.0, 3000),
            run("switchboard", 100.0, 1000),
            run("nats", 8.0, 10_000),
        ];
        let m = medians(&results);
        assert_eq!(
            m[&("fanout-1k".into(), "switchboard".into())].1["cpu_s_per_1m"],
            5.0
        );
        let t = table(&results, "switchboard", "nats");
        assert!(
            t.contains("| fanout-1k | cpu_s_per_1m | 5.00 | 8.00 | 0.62× | 3/1 |"),
            "{t}"
        );
        assert!(t.contains("| fanout-1k | p99_ms | 2.00 | 10.00 | 0.20× |"), "{t}");
    }
}
