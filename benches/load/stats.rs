//! What a run records: per-delivery latency in an HDR histogram, and a
//! per-connection, per-channel sequence check that counts every lost and
//! every duplicated delivery.

use hdrhistogram::Histogram;

use crate::payload::Stamp;

/// Latencies above this are clamped (a run is far shorter).
const MAX_LATENCY_US: u64 = 120_000_000;

/// One connection's view of its channels' sequences (they start at 1).
#[derive(Clone, Debug)]
pub struct ConnSeq {
    channels: Vec<u32>,
    last: Vec<u64>,
}

impl ConnSeq {
    pub fn new(channels: Vec<u32>) -> Self {
        let last = vec![0; channels.len()];
        Self { channels, last }
    }

    /// Lost deliveries at the end: what was published after the last seen.
    pub fn tail_lost(&self, published: &[u64]) -> u64 {
        self.channels
            .iter()
            .zip(&self.last)
            .map(|(c, last)| {
                published
                    .get(*c as usize)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(*last)
            })
            .sum()
    }
}

pub struct Recorder {
    pub latency: Histogram<u64>,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    /// Deliveries for a channel the connection did not subscribe to.
    pub foreign: u64,
    /// When the latest delivery arrived (µs since the Unix epoch).
    pub last_us: u64,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    pub fn new() -> Self {
        Self {
            // 3 significant digits from 1 µs to 2 minutes.
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("constant, valid bounds"),
            delivered: 0,
            lost: 0,
            duplicated: 0,
            foreign: 0,
            last_us: 0,
        }
    }

    /// Records one delivery received at `now_us` by the connection `seq`.
    pub fn record(&mut self, seq: &mut ConnSeq, stamp: Stamp, now_us: u64) {
        let Some(slot) = seq.channels.iter().position(|c| *c == stamp.channel) else {
            self.foreign += 1;
            return;
        };
        let last = &mut seq.last[slot];
        if stamp.seq <= *last {
            self.duplicated += 1;
            return;
        }
        self.lost += stamp.seq - *last - 1;
        *last = stamp.seq;
        self.delivered += 1;
        self.last_us = self.last_us.max(now_us);
        let latency = now_us.saturating_sub(stamp.scheduled_us).clamp(1, MAX_LATENCY_US);
        let _ = self.latency.record(latency);
    }

    pub fn merge(&mut self, other: &Recorder) {
        let _ = self.latency.add(&other.latency);
        self.delivered += other.delivered;
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.foreign += other.foreign;
        self.last_us = self.last_us.max(other.last_us);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(channel: u32, seq: u64) -> Stamp {
        Stamp {
            channel,
            seq,
            scheduled_us: 1_000,
        }
    }

    #[test]
    fn counts_gaps_duplicates_and_strangers() {
        let mut r = Recorder::new();
        let mut s = ConnSeq::new(vec![3, 8]);
        for (ch, seq) in [(3, 1), (3, 2), (8, 1), (3, 2), (3, 5), (8, 2), (9, 1), (3, 4)] {
            r.record(&mut s, stamp(ch, seq), 1_500);
        }
        assert_eq!((r.delivered, r.duplicated, r.lost, r.foreign), (5, 2, 2, 1));
        // Channel 3 had 6 published (one never arrived), channel 8 had 2.
        let mut published = vec![0; 10];
        published[3] = 6;
        published[8] = 2;
        assert_eq!(s.tail_lost(&published), 1);
        assert_eq!(r.latency.value_at_quantile(0.5), 500);
    }

    #[test]
    fn merging_adds_up() {
        let mut a = Recorder::new();
        let mut b = Recorder::new();
        let mut s = ConnSeq::new(vec![0]);
        a.record(&mut s, stamp(0, 1), 2_000);
        let mut s = ConnSeq::new(vec![0]);
        b.record(&mut s, stamp(0, 2), 3_000);
        a.merge(&b);
        assert_eq!((a.delivered, a.lost, a.latency.len()), (2, 1, 2));
        assert_eq!(a.last_us, 3_000);
    }
}
