//! The server's CPU time (user and system, separately) and resident memory,
//! read from `/proc/<pid>`.

use std::time::Duration;

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sample {
    pub user: Duration,
    pub system: Duration,
    pub rss_kib: u64,
}

fn ticks_per_second() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100, |t| t as u64)
}

/// Reads `/proc/<pid>/stat` and `/proc/<pid>/status`.
pub fn sample(pid: u32) -> std::io::Result<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may contain spaces; fields after it are fixed.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // After the name: state is index 0, utime is stat field 14 (index 11), stime 15.
    let tick = ticks_per_second();
    let to_duration = |t: u64| Duration::from_secs_f64(t as f64 / tick as f64);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok(Sample {
        user: to_duration(field(11)),
        system: to_duration(field(12)),
        rss_kib,
    })
}

/// The sum over `pids` (a cluster's processes); what cannot be read counts 0.
pub fn sample_all(pids: &[u32]) -> Sample {
    pids.iter()
        .filter_map(|pid| sample(*pid).ok())
        .fold(Sample::default(), |a, b| Sample {
            user: a.user + b.user,
            system: a.system + b.system,
            rss_kib: a.rss_kib + b.rss_kib,
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_process() {
        let s = super::sample(std::process::id()).unwrap();
        assert!(s.rss_kib > 0);
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert!(x > 0);
        let later = super::sample(std::process::id()).unwrap();
        assert!(later.user >= s.user);
    }
}
