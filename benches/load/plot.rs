//! SVG plots of a session's runs: latency CDFs, p99 and CPU per delivery
//! against the number of subscribers, and against the publish rate.

use std::collections::BTreeMap;
use std::path::Path;

use crate::report::{Latency, RunResult, by_scenario_and_target, median};

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
    let fanout = results.iter().filter(|r| r.scenario.starts_with("fanout"));
    plot_against(fanout, path, "subscribers", |r| r.connections as f64)
}

/// p99 latency and CPU per delivery against the publish rate, from the
/// rate sweep (1,000 subscribers at 100 to 800 messages per second).
pub fn plot_rates(results: &[RunResult], path: &Path) -> anyhow::Result<()> {
    let sweep = results.iter().filter(|r| r.scenario.starts_with("rate-"));
    plot_against(sweep, path, "messages per second (1,000 subscribers)", |r| r.rate)
}

/// Two panels, p99 latency and CPU per delivery, against `x` (log scale),
/// one line per target, one point per x (medians of its runs).
fn plot_against<'a>(
    results: impl Iterator<Item = &'a RunResult>,
    path: &Path,
    x_desc: &str,
    x: impl Fn(&RunResult) -> f64,
) -> anyhow::Result<()> {
    use plotters::prelude::*;
    // Per (target, x in thousandths): every run's [p99 ms, CPU-s per 1M].
    let mut runs: BTreeMap<(String, u64), [Vec<f64>; 2]> = BTreeMap::new();
    for r in results {
        let e = runs.entry((r.target.clone(), (x(r) * 1e3) as u64)).or_default();
        if let Some(l) = &r.latency_us {
            e[0].push(l.p99 as f64 / 1e3);
        }
        if let Some(c) = r.cpu_s_per_1m {
            e[1].push(c);
        }
    }
    let points: BTreeMap<(String, u64), [Option<f64>; 2]> = runs
        .into_iter()
        .map(|(key, [l, c])| (key, [median(l), median(c)]))
        .collect();
    if points.is_empty() {
        return Ok(());
    }
    let root = SVGBackend::new(path, (900, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(450);
    let xs = || points.keys().map(|(_, x)| *x as f64 / 1e3);
    let (min_x, max_x) = (
        xs().fold(f64::MAX, f64::min).min(1e9),
        xs().fold(1.0f64, f64::max),
    );
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
            .build_cartesian_2d((min_x / 2.0..max_x * 1.5).log_scale(), 0f64..max_y)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .draw()?;
        for (i, target) in targets.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let series: Vec<(f64, f64)> = points
                .iter()
                .filter(|((t, _), _)| t == target)
                .filter_map(|((_, x), m)| Some((*x as f64 / 1e3, m[pick]?)))
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

    use crate::report::sample_run as run;

    #[test]
    fn plots_render() {
        let dir = tempfile::tempdir().unwrap();
        let results = vec![
            run("fanout-1k", "switchboard", 100.0, 4.0, 2000),
            run("fanout-1k", "nats", 100.0, 8.0, 10_000),
            run("rate-100", "switchboard", 100.0, 4.0, 2000),
            run("rate-800", "switchboard", 800.0, 1.0, 9000),
            run("rate-100", "nats", 100.0, 8.0, 10_000),
        ];
        plot_cdf(&results, &dir.path().join("cdf.svg")).unwrap();
        plot_scaling(&results, &dir.path().join("scaling.svg")).unwrap();
        plot_rates(&results, &dir.path().join("rates.svg")).unwrap();
        for f in ["cdf.svg", "scaling.svg", "rates.svg"] {
            assert!(
                std::fs::read_to_string(dir.path().join(f))
                    .unwrap()
                    .contains("<svg")
            );
        }
    }
}
