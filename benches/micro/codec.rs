//! Encode and decode cost of every frame type, per frame.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::value::RawValue;
use switchboard_proto::{
    Ack, ChannelName, ClientFrame, Epoch, ErrorCode, PreparedFrame, RequestId, ServerFrame,
};

fn data() -> Box<RawValue> {
    RawValue::from_string(format!(r#"{{"text":"{}","n":42}}"#, "x".repeat(80))).expect("valid JSON")
}

fn client(c: &mut Criterion) {
    let frames = [
        (
            "subscribe",
            r#"{"type":"subscribe","id":1,"channel":"chat.42","since":1200,"epoch":"9f3a1c0d2b4e5f60"}"#
                .to_owned(),
        ),
        (
            "unsubscribe",
            r#"{"type":"unsubscribe","id":2,"channel":"chat.42"}"#.to_owned(),
        ),
        (
            "publish",
            format!(
                r#"{{"type":"publish","id":3,"channel":"chat.42","data":{}}}"#,
                data().get()
            ),
        ),
        (
            "send",
            format!(
                r#"{{"type":"send","id":4,"to":"role:main-ai","data":{}}}"#,
                data().get()
            ),
        ),
        ("ping", r#"{"type":"ping","id":5}"#.to_owned()),
    ];
    let mut g = c.benchmark_group("client_decode");
    g.throughput(Throughput::Elements(1));
    for (name, text) in &frames {
        g.bench_function(*name, |b| {
            b.iter(|| ClientFrame::decode(std::hint::black_box(text.as_bytes())))
        });
    }
    g.finish();
    let mut g = c.benchmark_group("client_encode");
    g.throughput(Throughput::Elements(1));
    for (name, text) in &frames {
        let frame = ClientFrame::decode(text.as_bytes()).expect("valid frame");
        g.bench_function(*name, |b| b.iter(|| std::hint::black_box(&frame).encode()));
    }
    g.finish();
}

fn server(c: &mut Criterion) {
    let channel = ChannelName::new("chat.42").expect("valid name");
    let data = data();
    let mut g = c.benchmark_group("server_encode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("message_prepared", |b| {
        b.iter(|| PreparedFrame::message(&channel, 1234, std::hint::black_box(&data)))
    });
    let message = ServerFrame::Message {
        channel: channel.clone(),
        offset: 1234,
        data: data.clone(),
    };
    g.bench_function("message_serde", |b| {
        b.iter(|| std::hint::black_box(&message).prepare())
    });
    let ack = ServerFrame::Ack(Ack {
        channel: Some(channel.clone()),
        offset: Some(1234),
        epoch: Some(Epoch::new("9f3a1c0d2b4e5f60")),
        recovered: Some(true),
        ..Ack::new(RequestId::Num(1))
    });
    g.bench_function("ack", |b| b.iter(|| std::hint::black_box(&ack).prepare()));
    let error = ServerFrame::error(
        Some(RequestId::Num(1)),
        ErrorCode::Forbidden,
        "not allowed to subscribe to chat.42",
    );
    g.bench_function("error", |b| b.iter(|| std::hint::black_box(&error).prepare()));
    let pong = ServerFrame::Pong {
        id: RequestId::Num(5),
    };
    g.bench_function("pong", |b| b.iter(|| std::hint::black_box(&pong).prepare()));
    g.finish();

    let mut g = c.benchmark_group("server_decode");
    g.throughput(Throughput::Elements(1));
    for (name, frame) in [
        ("message", message),
        ("ack", ack),
        ("error", error),
        ("pong", pong),
    ] {
        let text = frame.to_json();
        g.bench_function(name, |b| {
            b.iter(|| ServerFrame::decode(std::hint::black_box(text.as_bytes())))
        });
    }
    g.finish();
}

criterion_group!(benches, client, server);
criterion_main!(benches);
