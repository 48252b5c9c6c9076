//! The supervision tree in memory: connection tasks driven by in-memory
//! frames, sinks that record what they receive, and a backplane that fails
//! on cue, to show that a failure stays where it happened.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use switchboard_actors::backplane::BoxFuture;
use switchboard_actors::{
    Backplane, BackplaneError, ChannelKey, CloseReason, Event, FrameHandler, History, HistoryLimits,
    HistoryRead, Hub, Identity, InProcess, Limits, MemorySink, Position, Published, Services, Tree,
};
use switchboard_proto::{ChannelPattern, ErrorCode, Grants, OrgId, ServerFrame, Subject};
use tokio::sync::mpsc;

const PATIENCE: Duration = Duration::from_secs(5);

/// The in-process backplane, except that publishing on `panic-publish` panics
/// and the first attach of `panic-attach` panics.
struct Faulty {
    inner: InProcess,
    attach_armed: AtomicBool,
}

impl Backplane for Faulty {
    fn publish<'a>(
        &'a self,
        key: &'a ChannelKey,
        event: Event<'a>,
    ) -> BoxFuture<'a, Result<Published, BackplaneError>> {
        assert_ne!(key.channel.as_str(), "panic-publish", "injected publish fault");
        self.inner.publish(key, event)
    }

    fn attach<'a>(&'a self, key: &'a ChannelKey) -> BoxFuture<'a, Result<(), BackplaneError>> {
        if key.channel.as_str() == "panic-attach" && self.attach_armed.swap(false, Ordering::SeqCst) {
            panic!("injected attach fault");
        }
        self.inner.attach(key)
    }

    fn detach(&self, key: &ChannelKey) {
        self.inner.detach(key)
    }
}

impl History for Faulty {
    fn read<'a>(
        &'a self,
        key: &'a ChannelKey,
        from: Position,
        limit: usize,
    ) -> BoxFuture<'a, Result<HistoryRead, BackplaneError>> {
        self.inner.read(key, from, limit)
    }
}

async fn start(limits: Limits) -> Tree {
    start_with_faults(limits).await.0
}

async fn start_with_faults(limits: Limits) -> (Tree, Arc<Faulty>) {
    let hub = Arc::new(Hub::new());
    let history = HistoryLimits {
        max_messages: 100,
        ..HistoryLimits::default()
    };
    let faulty = Arc::new(Faulty {
        inner: InProcess::new(hub.clone(), history),
        attach_armed: AtomicBool::new(true),
    });
    let tree = Tree::start(hub, faulty.clone(), faulty.clone(), limits)
        .await
        .unwrap();
    (tree, faulty)
}

/// A connection driven by the test: frames in through a channel, frames out
/// through a memory sink.
struct Client {
    inbound: mpsc::Sender<String>,
    sink: Arc<MemorySink>,
}

impl Client {
    async fn open(services: &Arc<Services>, org: &str) -> Client {
        let sink = Arc::new(MemorySink::new(1 << 20));
        let identity = Identity {
            org: OrgId::new(org).unwrap(),
            subject: Subject::new("tester").unwrap(),
            grants: Grants {
                subscribe: vec![ChannelPattern::new(">").unwrap()],
                publish: vec![ChannelPattern::new(">").unwrap()],
                send: vec![switchboard_proto::TargetPattern::Any],
            },
            publish_rate: None,
            credential: None,
        };
        let conn = services.open(identity, sink.clone()).await.unwrap();
        let (inbound, mut rx) = mpsc::channel::<String>(1);
        services.run(conn, |mut conn| async move {
            while let Some(text) = rx.recv().await {
                conn.on_text(text.as_bytes()).await;
            }
        });
        Client { inbound, sink }
    }

    async fn send(&self, text: String) {
        self.inbound.send(text).await.unwrap();
    }

    async fn next(&self) -> Option<ServerFrame> {
        let frame = tokio::time::timeout(PATIENCE, self.sink.next())
            .await
            .expect("a frame in time")?;
        Some(ServerFrame::decode(&frame.payload()).unwrap())
    }

    async fn subscribe(&self, id: u64, channel: &str) -> ServerFrame {
        self.send(format!(
            r#"{{"type":"subscribe","id":{id},"channel":"{channel}"}}"#
        ))
        .await;
        self.next().await.expect("an ack")
    }

    async fn publish(&self, id: u64, channel: &str, data: &str) {
        self.send(format!(
            r#"{{"type":"publish","id":{id},"channel":"{channel}","data":{data}}}"#
        ))
        .await;
    }
}

fn is_ack(frame: &ServerFrame, want: u64) -> bool {
    matches!(frame, ServerFrame::Ack(a) if a.id == switchboard_proto::RequestId::Num(want))
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "not in time: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_panicking_connection_closes_alone() {
    let tree = start(Limits::default()).await;
    let services = tree.services().clone();
    let bystander = Client::open(&services, "acme").await;
    assert!(is_ack(&bystander.subscribe(1, "news").await, 1));
    let doomed = Client::open(&services, "acme").await;
    assert!(is_ack(&doomed.subscribe(1, "news").await, 1));
    assert_eq!(services.channels.hub().subscriber_count(&key("acme", "news")), 2);

    doomed.publish(2, "panic-publish", "1").await;
    assert_eq!(
        doomed.next().await.map(|f| f.to_json()),
        None,
        "closed without a reply"
    );
    assert_eq!(doomed.sink.closed(), Some(CloseReason::Internal));
    eventually("its subscription released", async || {
        services.channels.hub().subscriber_count(&key("acme", "news")) == 1
    })
    .await;
    eventually("one connection left", async || {
        services.connection_count().await == 1
    })
    .await;

    bystander.publish(3, "news", r#""still here""#).await;
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(bystander.next().await.unwrap().to_json());
    }
    assert!(got.iter().any(|f| f.contains("still here")), "{got:?}");
    tree.stop().await;
}

fn key(org: &str, channel: &str) -> ChannelKey {
    ChannelKey::new(
        OrgId::new(org).unwrap(),
        switchboard_proto::ChannelName::new(channel).unwrap(),
    )
}

#[tokio::test]
async fn a_panicking_org_actor_is_restarted_and_its_connections_keep_working() {
    let (tree, faults) = start_with_faults(Limits::default()).await;
    let services = tree.services().clone();
    let acme = OrgId::new("acme").unwrap();
    let a = Client::open(&services, "acme").await;
    assert!(is_ack(&a.subscribe(1, "chat").await, 1));
    let other_org = Client::open(&services, "globex").await;
    assert!(is_ack(&other_org.subscribe(1, "chat").await, 1));
    let first = services.org_actor(&acme).await.unwrap();

    // The org actor panics attaching this channel; its successor attaches it.
    let b = Client::open(&services, "acme").await;
    assert!(
        is_ack(&b.subscribe(1, "panic-attach").await, 1),
        "subscribe succeeds after the restart"
    );
    assert!(!faults.attach_armed.load(Ordering::SeqCst), "the fault fired");
    let second = services.org_actor(&acme).await.unwrap();
    assert_ne!(first, second, "a new actor serves the org");
    assert_eq!(services.org_count().await, 2);

    a.publish(2, "chat", "42").await;
    let frames = [a.next().await.unwrap(), a.next().await.unwrap()];
    assert!(
        frames
            .iter()
            .any(|f| matches!(f, ServerFrame::Message { offset: 1, .. })),
        "{frames:?}"
    );
    b.publish(2, "panic-attach", "7").await;
    let frames = [b.next().await.unwrap(), b.next().await.unwrap()];
    assert!(
        frames.iter().any(|f| matches!(f, ServerFrame::Message { .. })),
        "{frames:?}"
    );
    assert!(other_org.sink.is_empty(), "nothing crossed orgs");
    tree.stop().await;
}

/// Paused time: the minute of idleness takes none.
#[tokio::test(start_paused = true)]
async fn idle_orgs_stop_and_come_back() {
    let tree = start(Limits::default()).await; // an org idles out after 60 s
    let services = tree.services().clone();
    let c = Client::open(&services, "acme").await;
    assert!(is_ack(&c.subscribe(1, "chat").await, 1));
    assert_eq!(services.org_count().await, 1);
    drop(c); // ends the task: subscriptions and the org hold are released
    let released = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(59)).await;
    assert_eq!(services.org_count().await, 1, "still warm after 59 s");
    eventually("org actor idles out", async || services.org_count().await == 0).await;
    assert!(released.elapsed() >= Duration::from_secs(60));
    assert!(!services.channels.hub().has_subscribers(&key("acme", "chat")));
    let c = Client::open(&services, "acme").await;
    assert!(is_ack(&c.subscribe(1, "chat").await, 1));
    assert_eq!(services.org_count().await, 1);
    tree.stop().await;
}

/// Paused time: the grace period below passes at once.
#[tokio::test(start_paused = true)]
async fn closing_all_connections_sends_the_reason_to_each() {
    let tree = start(Limits::default()).await;
    let services = tree.services().clone();
    let clients = [
        Client::open(&services, "acme").await,
        Client::open(&services, "globex").await,
    ];
    for c in &clients {
        assert!(is_ack(&c.subscribe(1, "x").await, 1));
    }
    // The test tasks end when their inbound channel closes; the sinks record the reason.
    let closing = tree.close_connections(CloseReason::GoingAway, Duration::from_secs(10));
    let all_ended = closing.await;
    for c in &clients {
        assert_eq!(c.sink.closed(), Some(CloseReason::GoingAway));
    }
    assert!(!all_ended, "these tasks only end when their client goes");
    drop(clients);
    tree.stop().await;
}

/// Paused time: the rate-limited publish makes the connection wait a second
/// before its next frame; the test does not.
#[tokio::test(start_paused = true)]
async fn bad_frames_get_errors_and_the_connection_keeps_working() {
    let tree = start(Limits {
        max_subscriptions: 1,
        publish_rate: 1,
        publish_burst: 1,
        ..Limits::default()
    })
    .await;
    let services = tree.services().clone();
    let c = Client::open(&services, "acme").await;
    let expect_error = async |c: &Client, text: &str, code: ErrorCode| {
        c.send(text.to_owned()).await;
        match c.next().await {
            Some(ServerFrame::Error { code: got, .. }) => assert_eq!(got, code, "{text}"),
            other => panic!("{text}: {other:?}"),
        }
    };
    expect_error(&c, "{", ErrorCode::ValidationError).await;
    expect_error(&c, r#"{"type":"nope","id":1}"#, ErrorCode::ValidationError).await;
    expect_error(
        &c,
        r#"{"type":"subscribe","id":1,"channel":"bad name"}"#,
        ErrorCode::ValidationError,
    )
    .await;
    expect_error(
        &c,
        r#"{"type":"unsubscribe","id":1,"channel":"x"}"#,
        ErrorCode::NotFound,
    )
    .await;
    assert!(is_ack(&c.subscribe(2, "x").await, 2));
    expect_error(
        &c,
        r#"{"type":"subscribe","id":3,"channel":"x"}"#,
        ErrorCode::AlreadySubscribed,
    )
    .await;
    expect_error(
        &c,
        r#"{"type":"subscribe","id":4,"channel":"y"}"#,
        ErrorCode::LimitExceeded,
    )
    .await;
    expect_error(
        &c,
        r#"{"type":"send","id":5,"to":"role:main-ai","data":1}"#,
        ErrorCode::NotFound,
    )
    .await;
    expect_error(
        &c,
        r#"{"type":"publish","id":6,"channel":"z","data":1}"#,
        ErrorCode::RateLimited,
    )
    .await;
    c.send(r#"{"type":"ping","id":7}"#.into()).await;
    assert!(matches!(c.next().await, Some(ServerFrame::Pong { .. })));
    tree.stop().await;
}
