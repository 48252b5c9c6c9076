//! The benchmark scenarios as plans: who subscribes to what, and what is
//! published how fast.

use std::time::Duration;

/// How connections map to channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Connection `i` subscribes to channel `i % channels`.
    Fanout { channels: usize },
    /// Connection `i` subscribes to its own channel and to its group's.
    Personal { group_size: usize },
    /// Agent turns: connection `i` watches turn channel `i % channels`.
    Turns { channels: usize },
}

/// What a run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Publish open-loop and measure deliveries.
    Deliver,
    /// Connect, subscribe, settle, read the server's RSS.
    Idle { settle: Duration },
    /// Connect and subscribe as fast as possible.
    ConnectStorm,
}

#[derive(Clone, Debug)]
pub struct Plan {
    pub scenario: String,
    pub connections: usize,
    pub layout: Layout,
    pub mode: Mode,
    /// Messages per second, all channels together.
    pub rate: f64,
    pub payload: usize,
    pub duration: Duration,
    /// Hostile connections running beside the honest ones (see [`crate::hostile`]).
    pub hostile: usize,
    /// A burst: this many messages, all due at once (the rate is then infinite).
    pub burst: Option<u64>,
    /// Publisher connections, each owning the channels `c % publishers`.
    pub publishers: usize,
}

/// The paced rates of the `rate-sweep` (messages per second to 1,000 subscribers).
pub const SWEEP_RATES: &[u32] = &[100, 200, 400, 800];

pub const SCENARIOS: &[&str] = &[
    "fanout-1k",
    "burst",
    "burst-10",
    "rate-100",
    "rate-200",
    "rate-400",
    "rate-800",
    "abuse",
    "fanout-10k",
    "personal",
    "turns",
    "idle",
    "connect-storm",
];

impl Plan {
    pub fn preset(name: &str) -> Option<Plan> {
        let plan = |connections, layout, mode, rate, secs| Plan {
            scenario: name.to_owned(),
            connections,
            layout,
            mode,
            rate,
            payload: 100,
            duration: Duration::from_secs(secs),
            hostile: 0,
            burst: None,
            publishers: 1,
        };
        let fanout_1k = |rate, secs| plan(1_000, Layout::Fanout { channels: 1 }, Mode::Deliver, rate, secs);
        Some(match name {
            "fanout-1k" => fanout_1k(100.0, 60),
            // 3,000 messages as fast as one publisher socket sends them.
            "burst" => Plan {
                burst: Some(3_000),
                ..fanout_1k(f64::INFINITY, 0)
            },
            // 10 publishers, each bursting 3,000 messages on its channel of 100.
            "burst-10" => Plan {
                burst: Some(30_000),
                publishers: 10,
                ..plan(
                    1_000,
                    Layout::Fanout { channels: 10 },
                    Mode::Deliver,
                    f64::INFINITY,
                    0,
                )
            },
            _ if name.starts_with("rate-") => {
                let rate: u32 = name["rate-".len()..].parse().ok()?;
                SWEEP_RATES
                    .contains(&rate)
                    .then(|| fanout_1k(f64::from(rate), 20))?
            }
            // fanout-1k, with 100 hostile connections beside it.
            "abuse" => Plan {
                hostile: 100,
                ..fanout_1k(100.0, 60)
            },
            "fanout-10k" => plan(10_000, Layout::Fanout { channels: 1 }, Mode::Deliver, 10.0, 60),
            "personal" => plan(
                5_000,
                Layout::Personal { group_size: 10 },
                Mode::Deliver,
                1_000.0,
                60,
            ),
            // 100 turns at 50 tokens/s each, 10 watchers per turn, 40-byte tokens.
            "turns" => Plan {
                payload: 40,
                ..plan(1_000, Layout::Turns { channels: 100 }, Mode::Deliver, 5_000.0, 60)
            },
            "idle" => plan(
                10_000,
                Layout::Fanout { channels: 1 },
                Mode::Idle {
                    settle: Duration::from_secs(10),
                },
                0.0,
                0,
            ),
            "connect-storm" => plan(5_000, Layout::Fanout { channels: 1 }, Mode::ConnectStorm, 0.0, 0),
            _ => return None,
        })
    }

    /// Number of distinct channels.
    pub fn channel_count(&self) -> usize {
        match self.layout {
            Layout::Fanout { channels } | Layout::Turns { channels } => channels,
            Layout::Personal { group_size } => self.connections + self.connections.div_ceil(group_size),
        }
    }

    /// The channels connection `conn` subscribes to (ids).
    pub fn channels_of(&self, conn: usize) -> Vec<u32> {
        match self.layout {
            Layout::Fanout { channels } | Layout::Turns { channels } => vec![(conn % channels) as u32],
            Layout::Personal { group_size } => {
                vec![conn as u32, (self.connections + conn / group_size) as u32]
            }
        }
    }

    /// A channel's name, the same for every target.
    pub fn channel_name(&self, id: u32) -> String {
        match self.layout {
            Layout::Fanout { channels: 1 } => "room".into(),
            Layout::Fanout { .. } => format!("room.{id}"),
            Layout::Turns { .. } => format!("turns.{id}"),
            Layout::Personal { .. } if (id as usize) < self.connections => format!("user.{id}"),
            Layout::Personal { .. } => format!("group.{}", id as usize - self.connections),
        }
    }

    /// Subscribers of each channel.
    pub fn subscribers(&self) -> Vec<u64> {
        let mut counts = vec![0u64; self.channel_count()];
        for conn in 0..self.connections {
            for ch in self.channels_of(conn) {
                counts[ch as usize] += 1;
            }
        }
        counts
    }

    /// Messages published in the run.
    pub fn messages(&self) -> u64 {
        self.burst
            .unwrap_or_else(|| (self.rate * self.duration.as_secs_f64()).round() as u64)
    }

    /// The channel message `i` goes to: round robin for fan-out; for the chat
    /// shape, alternately a spread of personal channels and of groups.
    pub fn channel_for(&self, i: u64) -> u32 {
        match self.layout {
            Layout::Fanout { channels } | Layout::Turns { channels } => (i % channels as u64) as u32,
            Layout::Personal { .. } => {
                let users = self.connections as u64;
                let groups = (self.channel_count() as u64) - users;
                let k = i / 2;
                // A multiplicative step spreads consecutive messages over channels.
                if i.is_multiple_of(2) {
                    ((k * 7919) % users) as u32
                } else {
                    (users + (k * 7919) % groups) as u32
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_exists() {
        for name in SCENARIOS {
            assert!(Plan::preset(name).is_some(), "{name}");
        }
        assert!(Plan::preset("nope").is_none());
        assert!(Plan::preset("rate-300").is_none(), "only the sweep's rates");
        assert_eq!(Plan::preset("rate-800").unwrap().messages(), 16_000);
    }

    #[test]
    fn bursts_are_due_at_once() {
        let b = Plan::preset("burst-10").unwrap();
        assert_eq!(b.messages(), 30_000);
        assert_eq!(b.subscribers(), vec![100; 10]);
        assert!(b.rate.is_infinite());
    }

    #[test]
    fn personal_layout() {
        let p = Plan {
            connections: 25,
            ..Plan::preset("personal").unwrap()
        };
        assert_eq!(p.channel_count(), 25 + 3);
        assert_eq!(p.channels_of(12), vec![12, 26]);
        assert_eq!(p.channel_name(12), "user.12");
        assert_eq!(p.channel_name(26), "group.1");
        let subs = p.subscribers();
        assert_eq!(subs[..25].iter().sum::<u64>(), 25);
        assert_eq!(&subs[25..], &[10, 10, 5]);
        for i in 0..100 {
            assert!((p.channel_for(i) as usize) < p.channel_count());
        }
    }
}
