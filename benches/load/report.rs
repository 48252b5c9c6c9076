//! Results: one JSON line per run, then medians per scenario and target,
//! ratios against the baseline measured in the same session, a table, and
//! SVG plots (latency CDF; latency and CPU per delivery against subscribers).

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
            rate: cfg.plan.rate,
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

fn median(mut v: Vec<f64>) -> Option<f64> {
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

fn by_scenario_and_target<'a>(
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
pub fn table(results: &[RunResult]) -> String {
    let m = medians(results);
    let mut out = String::from(
        "| scenario | metric | switchboard | nats | ratio | runs |\n|---|---|---|---|---|---|\n",
    );
    let scenarios: Vec<String> = {
        let mut s: Vec<String> = m.keys().map(|(s, _)| s.clone()).collect();
        s.dedup();
        s
    };
    for scenario in scenarios {
        let get = |target: &str| m.get(&(scenario.clone(), target.to_owned()));
        let (sb, nats) = (get("switchboard"), get("nats"));
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

/// Latency CDFs (median run of each scenario and target) as an SVG.
pub fn plot_cdf(results: &[RunResult], path: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let series = representative_runs(results);
    let max_ms = series
        .iter()
        .flat_map(|(_, l)| l.cdf.iter().map(|(_, us)| *us as f64 / 1e3))
        .fold(1.0f64, f64::max);
    // x: the tail as "nines": 0 → p0, 1 → p90, 2 → p99, 3 → p99.9, 4 → p99.99.
    let nines = |q: f64| {
        if q >= 1.0 {
            4.5
        } else {
            (-(1.0 - q).log10()).min(4.5)
        }
    };
    let mut chart = ChartBuilder::on(&root)
        .caption("delivery latency by percentile", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0f64..4.5, (0.01f64..max_ms * 1.2).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms, log)")
        .x_labels(10)
        .x_label_formatter(&|x| {
            // Only whole "nines" get a label.
            if (x - x.round()).abs() > 1e-6 {
                return String::new();
            }
            match x.round() as i32 {
                0 => "p0".into(),
                1 => "p90".into(),
                2 => "p99".into(),
                3 => "p99.9".into(),
                4 => "p99.99".into(),
                _ => String::new(),
            }
        })
        .draw()?;
    for (i, (name, lat)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                lat.cdf
                    .iter()
                    .map(|(q, us)| (nines(*q), (*us as f64 / 1e3).max(0.01))),
                color.stroke_width(2),
            ))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// For each (scenario, target) with latencies, the run with the median p99.
fn representative_runs(results: &[RunResult]) -> Vec<(String, Latency)> {
    by_scenario_and_target(results.iter().filter(|r| r.latency_us.is_some()))
        .into_iter()
        .filter_map(|((s, t), mut runs)| {
            runs.sort_by_key(|r| r.latency_us.as_ref().map_or(0, |l| l.p99));
            let mid = runs.get(runs.len() / 2)?;
            Some((format!("{s} · {t}"), mid.latency_us.clone()?))
        })
        .collect()
}

/// p99 latency and CPU per delivery against the number of subscribers, from
/// every fan-out run (one point per (target, connections), medians).
pub fn plot_scaling(results: &[RunResult], path: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    // Per (target, connections): every run's [p99 ms, CPU-s per 1M].
    let mut runs: BTreeMap<(String, usize), [Vec<f64>; 2]> = BTreeMap::new();
    for r in results.iter().filter(|r| r.scenario.starts_with("fanout")) {
        let e = runs.entry((r.target.clone(), r.connections)).or_default();
        if let Some(l) = &r.latency_us {
            e[0].push(l.p99 as f64 / 1e3);
        }
        if let Some(c) = r.cpu_s_per_1m {
            e[1].push(c);
        }
    }
    let points: BTreeMap<(String, usize), [Option<f64>; 2]> = runs
        .into_iter()
        .map(|(key, [l, c])| (key, [median(l), median(c)]))
        .collect();
    let root = SVGBackend::new(path, (900, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(450);
    let max_n = points.keys().map(|(_, n)| *n).max().unwrap_or(1) as f64;
    let targets: Vec<String> = {
        let mut t: Vec<String> = points.keys().map(|(t, _)| t.clone()).collect();
        t.dedup();
        t
    };
    for (area, title, pick) in [
        (&left, "p99 latency (ms)", 0),
        (&right, "server CPU-s per 1M deliveries", 1),
    ] {
        let max_y = points.values().filter_map(|m| m[pick]).fold(1.0f64, f64::max) * 1.2;
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d((50f64..max_n * 1.5).log_scale(), 0f64..max_y)?;
        chart
            .configure_mesh()
            .x_desc("subscribers")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .draw()?;
        for (i, target) in targets.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let series: Vec<(f64, f64)> = points
                .iter()
                .filter(|((t, _), _)| t == target)
                .filter_map(|((_, n), m)| Some((*n as f64, m[pick]?)))
                .collect();
            chart
                .draw_series(LineSeries::new(series.clone(), color.stroke_width(2)))?
                .label(target.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
            chart.draw_series(series.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(target: &str, cpu: f64, p99_us: u64) -> RunResult {
        RunResult {
            scenario: "fanout-1k".into(),
            target: target.into(),
            connections: 1000,
            cpu_s_per_1m: Some(cpu),
            latency_us: Some(Latency {
                p99: p99_us,
                cdf: vec![(0.5, 100), (0.99, p99_us), (1.0, p99_us)],
                ..Latency::default()
            }),
            ..RunResult::default()
        }
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
        let t = table(&results);
        assert!(
            t.contains("| fanout-1k | cpu_s_per_1m | 5.00 | 8.00 | 0.62× | 3/1 |"),
            "{t}"
        );
        assert!(t.contains("| fanout-1k | p99_ms | 2.00 | 10.00 | 0.20× |"), "{t}");
    }

    #[test]
    fn plots_render() {
        let dir = tempfile::tempdir().unwrap();
        let results = vec![run("switchboard", 4.0, 2000), run("nats", 8.0, 10_000)];
        plot_cdf(&results, &dir.path().join("cdf.svg")).unwrap();
        plot_scaling(&results, &dir.path().join("scaling.svg")).unwrap();
        assert!(
            std::fs::read_to_string(dir.path().join("cdf.svg"))
                .unwrap()
                .contains("<svg")
        );
    }
}
