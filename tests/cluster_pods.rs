//! Many pods as one broker (cluster mode, a real nats-server): every
//! publish, from WebSockets, HTTP and a NATS publisher on any pod, reaches
//! every subscriber on every pod once and in one order; a client resumes on
//! another pod; an agent's turn streams to watchers on other pods and a
//! joiner anywhere gets its snapshot; a NATS restart loses no acknowledged
//! message.

use crate::common;

use std::collections::HashMap;

use common::nats::*;
use common::*;
use serde_json::{Value, json};
use switchboard_proto::ServerFrame;

const CHANNEL: &str = "chat.all";

/// Pods whose publishers pipeline (no per-connection publish budget).
async fn pods(nats: &Nats, n: usize) -> Vec<TestServer> {
    cluster(nats, n, |c| c.limits.publish_rate = Some(0)).await
}

/// Publishes `n` events `{"from": from, "n": k}` over one WebSocket, all
/// in flight at once; returns their offsets in publish order.
async fn publish_ws(client: &mut Client, from: &str, n: u64) -> Vec<u64> {
    client
        .pipeline(
            (0..n).map(
                |k| json!({"type": "publish", "id": k, "channel": CHANNEL, "data": {"from": from, "n": k}}),
            ),
        )
        .await;
    let mut offsets = vec![0; n as usize];
    for _ in 0..n {
        match client.next().await {
            ServerFrame::Ack(ack) => {
                let switchboard_proto::RequestId::Num(k) = ack.id else {
                    panic!("numeric ids were sent");
                };
                offsets[k as usize] = ack.offset.unwrap();
            }
            other => panic!("expected an ack, got {}", other.to_json()),
        }
    }
    offsets
}

/// The next `n` channel messages a client gets: (offset, data).
async fn messages(client: &mut Client, n: usize) -> Vec<(u64, Value)> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        got.push(client.message().await);
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_pods_deliver_every_publish_once_in_one_order_and_resume_anywhere() {
    let nats = Nats::start().await;
    let pods = pods(&nats, 3).await;
    let mut subscribers = Vec::new();
    for pod in &pods {
        for _ in 0..2 {
            let mut c = Client::connect_all(pod, "acme").await;
            c.subscribe(1, CHANNEL).await;
            subscribers.push(c);
        }
    }
    let made = create_publisher(&pods[1], "acme", json!({"name": "ingest"})).await;
    let (from_nats, _) = publisher(&nats, &made).await;

    const EACH: u64 = 40;
    let mut ws = Vec::new();
    for (i, pod) in pods.iter().enumerate() {
        let mut c = Client::connect_all(pod, "acme").await;
        ws.push(tokio::spawn(async move {
            (
                format!("ws{i}"),
                publish_ws(&mut c, &format!("ws{i}"), EACH).await,
            )
        }));
    }
    let http_pod = &pods[0];
    let http = async {
        let mut offsets = Vec::new();
        for k in 0..EACH {
            offsets.push(
                http_pod
                    .publish("acme", CHANNEL, json!({"from": "http", "n": k}))
                    .await,
            );
        }
        offsets
    };
    let by_nats = async {
        for k in 0..EACH {
            let event = json!({"from": "nats", "n": k}).to_string();
            from_nats
                .publish(
                    switchboard_proto::subjects::publish(
                        &switchboard_proto::ChannelName::new(CHANNEL).unwrap(),
                    ),
                    event.into(),
                )
                .await
                .unwrap();
        }
        from_nats.flush().await.unwrap();
    };
    let (http_offsets, ()) = tokio::join!(http, by_nats);
    let mut acked: HashMap<String, Vec<u64>> = HashMap::from([("http".to_owned(), http_offsets)]);
    for task in ws {
        let (from, offsets) = task.await.unwrap();
        acked.insert(from, offsets);
    }

    let total = (EACH * 5) as usize;
    let first = messages(&mut subscribers[0], total).await;
    let offsets: Vec<u64> = first.iter().map(|(o, _)| *o).collect();
    assert!(
        offsets.windows(2).all(|w| w[0] < w[1]),
        "offsets grow: {offsets:?}"
    );
    // Each publisher's events in the order it sent them, each once, and at
    // the offset its acknowledgement named.
    for from in ["ws0", "ws1", "ws2", "http", "nats"] {
        let theirs: Vec<(u64, u64)> = first
            .iter()
            .filter(|(_, d)| d["from"] == from)
            .map(|(o, d)| (*o, d["n"].as_u64().unwrap()))
            .collect();
        let ns: Vec<u64> = theirs.iter().map(|(_, n)| *n).collect();
        assert_eq!(
            ns,
            (0..EACH).collect::<Vec<_>>(),
            "{from}'s events, once, in order"
        );
        if let Some(offsets) = acked.get(from) {
            let seen: Vec<u64> = theirs.iter().map(|(o, _)| *o).collect();
            assert_eq!(&seen, offsets, "{from}: delivered at the acknowledged offsets");
        }
    }
    // Every subscriber, on every pod, saw exactly the same.
    for (i, s) in subscribers.iter_mut().enumerate().skip(1) {
        assert_eq!(messages(s, total).await, first, "subscriber {i}");
    }

    // A client that saw half of it on pod 0 resumes on pod 2.
    let epoch = {
        let mut probe = Client::connect_all(&pods[0], "acme").await;
        probe.subscribe(1, CHANNEL).await.epoch.unwrap()
    };
    let half = total / 2;
    let mut resumer = Client::connect_all(&pods[2], "acme").await;
    let ack = resumer
        .resume(1, CHANNEL, first[half - 1].0, epoch.as_str())
        .await;
    assert_eq!(ack.recovered, Some(true));
    let rest = messages(&mut resumer, total - half).await;
    assert_eq!(rest, first[half..].to_vec(), "the rest, exactly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_streams_to_other_pods_and_a_joiner_anywhere_gets_its_snapshot() {
    let nats = Nats::start().await;
    let pods = pods(&nats, 3).await;
    let session = mint_ok(&pods[0], "acme", &["main-ai"]).await;
    let mut op = Client::operator(&pods[0], &session).await;
    let mut watcher = Client::connect_all(&pods[1], "acme").await;
    watcher.subscribe(1, "turns.x").await;

    op.send(json!({"type": "turn_start", "id": 1, "turn": "t1", "channel": "turns.x"}))
        .await;
    let start = op.ack(1).await.offset.unwrap();
    let mut said = String::new();
    for i in 0..100 {
        let word = format!("w{i} ");
        op.send(json!({"type": "token", "turn": "t1", "text": word}))
            .await;
        said.push_str(&word);
    }
    // The watcher has all of it so far once it saw the last token.
    let mut seen = String::new();
    while seen.len() < said.len() {
        apply_turn(&mut seen, &watcher.channel_event().await, "t1");
    }
    assert_eq!(seen, said);
    // A joiner on the third pod: one snapshot of the text so far, then live.
    let mut joiner = Client::connect_all(&pods[2], "acme").await;
    joiner.subscribe(1, "turns.x").await;
    match joiner.channel_event().await {
        ServerFrame::TurnSnapshot {
            text_so_far,
            start_offset,
            ..
        } => assert_eq!((text_so_far.as_str(), start_offset), (said.as_str(), start)),
        other => panic!("expected a snapshot, got {}", other.to_json()),
    }
    op.send(json!({"type": "token", "turn": "t1", "text": "done."}))
        .await;
    op.send(json!({"type": "turn_end", "id": 2, "turn": "t1"})).await;
    let end = op.ack(2).await.offset.unwrap();
    said.push_str("done.");
    let mut joined = String::new();
    loop {
        let frame = joiner.channel_event().await;
        apply_turn(&mut joined, &frame, "t1");
        if let ServerFrame::TurnEnd { offset, .. } = frame {
            assert_eq!(offset, end);
            break;
        }
    }
    assert_eq!(joined, "done.", "after the snapshot, only what came next");
    assert_eq!(seen + &watcher.turn_text("t1").await, said);
    // History, read on another pod, keeps it as one message.
    let (status, body) = get(
        &pods[2].url("/v1/orgs/acme/channels/turns.x/history"),
        Some(pods[2].api_key("acme")),
    )
    .await;
    assert_eq!(status, 200);
    let kept = body["messages"].as_array().unwrap();
    assert_eq!(kept.len(), 1, "{body}");
    assert_eq!(
        (&kept[0]["type"], &kept[0]["text"]),
        (&json!("turn"), &json!(said))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_mid_stream_loses_no_acknowledged_message() {
    let mut nats = Nats::start().await;
    let pods = pods(&nats, 2).await;
    let mut watcher = Client::connect_all(&pods[1], "acme").await;
    let epoch = watcher.subscribe(1, CHANNEL).await.epoch.unwrap();
    let mut publisher = Client::connect_all(&pods[0], "acme").await;
    let mut acked = Vec::new();
    let mut refused = 0;
    let mut k = 0u64;
    let started = std::time::Instant::now();
    while acked.len() < 60 {
        assert!(
            started.elapsed() < PATIENCE * 6,
            "publishing resumes once NATS is back"
        );
        if acked.len() == 20 && refused == 0 {
            nats.kill();
        }
        publisher
            .send(json!({"type": "publish", "id": k, "channel": CHANNEL, "data": {"n": acked.len()}}))
            .await;
        match publisher.next().await {
            ServerFrame::Ack(ack) => acked.push(ack.offset.unwrap()),
            ServerFrame::Error { code, .. } => {
                // Refused while NATS is away: never a silent drop. Retried.
                assert_eq!(code, switchboard_proto::ErrorCode::Unavailable);
                refused += 1;
                if refused == 1 {
                    nats.revive(false).await;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            other => panic!("{}", other.to_json()),
        }
        k += 1;
    }
    assert!(refused > 0, "publishes were refused while NATS was down");
    // The watcher's socket stayed open; what it missed live it gets by
    // resuming from its last offset, and together that is every
    // acknowledged message, once, in order.
    let mut seen: Vec<(u64, Value)> = Vec::new();
    while let Ok(frame) = tokio::time::timeout(std::time::Duration::from_secs(2), watcher.next()).await {
        if let ServerFrame::Message { offset, data, .. } = frame {
            seen.push((offset, serde_json::from_str(data.get()).unwrap()));
        }
        if seen.len() == acked.len() {
            break;
        }
    }
    let last = seen.last().map_or(0, |(o, _)| *o);
    let mut resumer = Client::connect_all(&pods[1], "acme").await;
    let ack = resumer.resume(1, CHANNEL, last, epoch.as_str()).await;
    assert_eq!(ack.recovered, Some(true), "the stream outlived the restart");
    let after: Vec<u64> = acked.iter().copied().filter(|o| *o > last).collect();
    for (offset, data) in messages(&mut resumer, after.len()).await {
        seen.push((offset, data));
    }
    // Every acknowledged message once, in order; besides them at most a
    // publish that was refused while its store was in doubt (the client
    // was told to retry, and did).
    let offsets: Vec<u64> = seen.iter().map(|(o, _)| *o).collect();
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");
    let acked_seen: Vec<u64> = offsets.iter().copied().filter(|o| acked.contains(o)).collect();
    assert_eq!(acked_seen, acked, "every acknowledged message, once, in order");
    let extra = seen.len() - acked.len();
    assert!(
        extra <= refused,
        "{extra} unacknowledged messages stored, {refused} refused"
    );
}

/// A channel message or the end of the connection (a killed pod).
async fn message_or_end(client: &mut Client) -> Option<(u64, Value)> {
    use futures_util::StreamExt;
    loop {
        let msg = tokio::time::timeout(PATIENCE, client.ws.next())
            .await
            .expect("a frame or the end in time");
        let Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text))) = msg else {
            return None;
        };
        if let Ok(ServerFrame::Message { offset, data, .. }) = ServerFrame::decode(text.as_bytes()) {
            return Some((offset, serde_json::from_str(data.get()).unwrap()));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_pod_killed_mid_stream_resume_on_another_with_no_gap() {
    let nats = Nats::start().await;
    let processes = ProcessPods::new(&nats, |c| c.limits.publish_rate = Some(0));
    let mut pods: Vec<_> = (0..3).map(|_| processes.serve()).collect();
    let ws_url = |pod: &common::process::Serve| {
        format!(
            "ws://{}/v1/ws?token={}",
            pod.addr,
            token("acme", "t", &[">"], &[">"])
        )
    };
    let mut doomed = Client::connect_url(&ws_url(&pods[0])).await;
    let epoch = doomed.subscribe(1, CHANNEL).await.epoch.unwrap();
    let mut steady = Client::connect_url(&ws_url(&pods[1])).await;
    steady.subscribe(1, CHANNEL).await;

    const TOTAL: u64 = 150;
    let mut publisher = Client::connect_url(&ws_url(&pods[1])).await;
    let publishing = tokio::spawn(async move {
        let mut acked = Vec::new();
        for k in 0..TOTAL {
            publisher
                .send(json!({"type": "publish", "id": k, "channel": CHANNEL, "data": {"n": k}}))
                .await;
            acked.push(publisher.ack(k).await.offset.unwrap());
            tokio::time::sleep(std::time::Duration::from_millis(3)).await;
        }
        acked
    });
    let mut seen = Vec::new();
    while seen.len() < 40 {
        seen.push(message_or_end(&mut doomed).await.expect("the pod is alive"));
    }
    pods[0].child.kill().unwrap();
    while let Some(m) = message_or_end(&mut doomed).await {
        seen.push(m);
    }
    // Its client comes back on another pod and resumes where it was.
    let mut back = Client::connect_url(&ws_url(&pods[2])).await;
    let last = seen.last().unwrap().0;
    let ack = back.resume(1, CHANNEL, last, epoch.as_str()).await;
    assert_eq!(ack.recovered, Some(true));
    let acked = publishing.await.unwrap();
    let missing = acked.iter().filter(|o| **o > last).count();
    seen.extend(messages(&mut back, missing).await);
    let offsets: Vec<u64> = seen.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, acked, "no gap, no duplicate across the pod's death");
    let ns: Vec<u64> = seen.iter().map(|(_, d)| d["n"].as_u64().unwrap()).collect();
    assert_eq!(ns, (0..TOTAL).collect::<Vec<_>>());
    let on_steady: Vec<u64> = messages(&mut steady, TOTAL as usize)
        .await
        .iter()
        .map(|(o, _)| *o)
        .collect();
    assert_eq!(on_steady, acked);
}

/// How many connections named `name` nats-server holds.
async fn nats_connections(nats: &Nats, name: &str) -> usize {
    let sys = nats.connect("sys.creds").await;
    let reply = tokio::time::timeout(
        PATIENCE,
        sys.request("$SYS.REQ.SERVER.PING.CONNZ", r#"{"limit":4096}"#.into()),
    )
    .await
    .unwrap()
    .unwrap();
    let body: Value = serde_json::from_slice(&reply.payload).unwrap();
    body["data"]["connections"]
        .as_array()
        .unwrap_or_else(|| panic!("a connection list: {body}"))
        .iter()
        .filter(|c| c["name"] == name)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_org_gives_its_nats_connection_back_and_serves_again_on_next_use() {
    let nats = Nats::start().await;
    let pod = TestServer::start_cluster(&nats, |c| c.nats.org_idle_secs = Some(1)).await;
    let mut client = Client::connect_all(&pod, "acme").await;
    client.subscribe(1, CHANNEL).await;
    pod.publish("acme", CHANNEL, json!(1)).await;
    client.message().await;
    assert_eq!(nats_connections(&nats, "switchboard acme").await, 1);
    drop(client);
    // Closed on nats-server, not only forgotten by the pool: nothing else
    // of the pod (streams, feeds) holds it open.
    eventually("the org's connection closes", async || {
        nats_connections(&nats, "switchboard acme").await == 0
    })
    .await;
    let mut client = Client::connect_all(&pod, "acme").await;
    client.subscribe(1, CHANNEL).await;
    pod.publish("acme", CHANNEL, json!(2)).await;
    assert_eq!(client.message().await.1, json!(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollup_window_sends_a_fast_turn_through_the_stream_in_few_publishes() {
    let nats = Nats::start().await;
    let pods = pods(&nats, 2).await;
    let session = mint_ok(&pods[0], "acme", &["main-ai"]).await;
    let mut op = Client::operator(&pods[0], &session).await;
    let mut watcher = Client::connect_all(&pods[1], "acme").await;
    watcher.subscribe(1, "turns.fast").await;
    op.send(json!({"type": "turn_start", "id": 1, "turn": "t1", "channel": "turns.fast", "rollup_ms": 200}))
        .await;
    op.ack(1).await;
    let mut said = String::new();
    for i in 0..200 {
        let word = format!("w{i} ");
        op.send(json!({"type": "token", "turn": "t1", "text": word}))
            .await;
        said.push_str(&word);
    }
    op.send(json!({"type": "turn_end", "id": 2, "turn": "t1"})).await;
    op.ack(2).await;
    // Every frame on the other pod came through the stream: one JetStream
    // publish each.
    let (mut text, mut frames) = (String::new(), 0);
    loop {
        let frame = watcher.channel_event().await;
        if matches!(frame, ServerFrame::Token { .. }) {
            frames += 1;
        }
        apply_turn(&mut text, &frame, "t1");
        if matches!(frame, ServerFrame::TurnEnd { .. }) {
            break;
        }
    }
    assert_eq!(text, said);
    assert!(frames < 20, "200 tokens in {frames} token frames");
}
