//! The hub's fan-out loop alone (no network): one prepared message handed to
//! 1, 100 and 10,000 in-memory subscribers. Throughput is in deliveries, so
//! criterion reports time per delivery.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::value::RawValue;
use switchboard_actors::backplane::BoxFuture;
use switchboard_actors::{ChannelKey, CloseReason, Hub, Refused, Sink};
use switchboard_proto::{ChannelName, ConnId, OrgId, PreparedFrame};

/// Takes every frame and only counts it, like a socket that always has room:
/// what is measured is the hub, not a queue.
#[derive(Default)]
struct Counting(AtomicU64);

impl Sink for Counting {
    fn offer(&self, frame: &PreparedFrame) -> Result<(), Refused> {
        self.0.fetch_add(frame.len() as u64, Ordering::Relaxed);
        Ok(())
    }
    fn close(&self, _: CloseReason) {}
    fn abort(&self, _: CloseReason) {}
    fn queued(&self) -> usize {
        0
    }
    fn capacity(&self) -> usize {
        usize::MAX
    }
    fn drained(&self, _: usize) -> BoxFuture<'_, Result<(), Refused>> {
        Box::pin(std::future::ready(Ok(())))
    }
}

fn fanout(c: &mut Criterion) {
    let key = ChannelKey::new(
        OrgId::new("bench").expect("valid"),
        ChannelName::new("room").expect("valid"),
    );
    let data = RawValue::from_string(format!(r#"{{"text":"{}"}}"#, "x".repeat(80))).expect("valid JSON");
    let mut g = c.benchmark_group("hub_fanout");
    for n in [1u64, 100, 10_000] {
        let hub = Hub::new();
        for conn in 0..n {
            hub.join(&key, ConnId(conn), Arc::new(Counting::default()))
                .expect("fresh subscriber");
            hub.go_live(&key, ConnId(conn), 0).expect("still there");
        }
        g.throughput(Throughput::Elements(n));
        let mut offset = 0;
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                offset += 1;
                let frame = PreparedFrame::message(&key.channel, offset, &data);
                hub.deliver(&key, offset, &frame)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
