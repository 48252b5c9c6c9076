use super::*;
use serde_json::value::RawValue;
use switchboard_proto::{ChannelName, OrgId, ServerFrame, TurnFailure};

fn key(ch: &str) -> ChannelKey {
    ChannelKey::new(OrgId::new("o").unwrap(), ChannelName::new(ch).unwrap())
}

fn backplane(max_messages: usize, max_age: Duration) -> InProcess {
    InProcess::new(
        Arc::new(Hub::new()),
        HistoryLimits {
            max_messages,
            max_age,
            max_live_turns: 2,
        },
    )
}

fn block_on<T>(f: BoxFuture<'_, T>) -> T {
    futures_util::FutureExt::now_or_never(f).expect("in-process futures are ready")
}

fn publish(bp: &InProcess, k: &ChannelKey, n: u64) -> Published {
    let data = RawValue::from_string(n.to_string()).unwrap();
    block_on(bp.publish(k, Event::Message(&data))).unwrap()
}

fn event(bp: &InProcess, k: &ChannelKey, e: Event<'_>) -> Result<Published, BackplaneError> {
    block_on(bp.publish(k, e))
}

fn read(bp: &InProcess, k: &ChannelKey, from: Position, limit: usize) -> HistoryRead {
    block_on(bp.read(k, from, limit)).unwrap()
}

fn after(bp: &InProcess, k: &ChannelKey, since: u64) -> HistoryRead {
    read(bp, k, Position::After(since), 100)
}

fn read_offsets(r: &HistoryRead) -> Vec<u64> {
    r.messages.iter().map(|(o, _)| *o).collect()
}

fn frames(r: &HistoryRead) -> Vec<ServerFrame> {
    r.messages
        .iter()
        .map(|(_, f)| ServerFrame::decode(&f.payload()).unwrap())
        .collect()
}

const MINUTE: Duration = Duration::from_secs(60);

#[test]
fn offsets_are_monotonic_per_channel_and_epochs_stable() {
    let bp = backplane(10, MINUTE);
    let (a, b) = (key("a"), key("b"));
    let epoch = read(&bp, &a, Position::Live, 0).epoch;
    for i in 1..=5 {
        let p = publish(&bp, &a, i);
        assert_eq!(
            (p.offset, &p.epoch),
            (i, &epoch),
            "the epoch read before the first publish holds"
        );
    }
    assert_eq!(publish(&bp, &b, 1).offset, 1);
    assert_ne!(read(&bp, &b, Position::Live, 0).epoch, epoch);
    let restarted = backplane(10, MINUTE);
    assert_ne!(
        read(&restarted, &a, Position::Live, 0).epoch,
        epoch,
        "another incarnation, another epoch"
    );
}

#[test]
fn reading_a_channel_nobody_published_on_creates_nothing() {
    let bp = backplane(10, MINUTE);
    for n in 0..1000 {
        let k = key(&format!("fresh.{n}"));
        let r = read(&bp, &k, Position::Live, 10);
        assert_eq!((r.top, r.complete, r.messages.len()), (0, true, 0));
        assert!(after(&bp, &k, 0).complete, "nothing was missed");
        assert!(!after(&bp, &k, 3).complete, "an offset it never had");
    }
    assert_eq!(bp.channel_count(), 0);
}

#[test]
fn since_replays_exactly_what_came_after() {
    let bp = backplane(10, MINUTE);
    let k = key("a");
    for i in 1..=5 {
        publish(&bp, &k, i);
    }
    let r = after(&bp, &k, 2);
    assert!(r.complete);
    assert_eq!(
        (read_offsets(&r), r.top, r.more, r.first),
        (vec![3, 4, 5], 5, false, Some(1))
    );
    let r = read(&bp, &k, Position::After(2), 2);
    assert_eq!((read_offsets(&r), r.more), (vec![3, 4], true));
    let r = after(&bp, &k, 5);
    assert!(r.complete && r.messages.is_empty());
    assert!(!after(&bp, &k, 6).complete, "a future offset cannot be recovered");
    let r = read(&bp, &k, Position::Live, 100);
    assert!(r.complete && r.messages.is_empty());
}

#[test]
fn the_tail_is_the_newest_retained() {
    let bp = backplane(5, MINUTE);
    let k = key("a");
    for i in 1..=8 {
        publish(&bp, &k, i);
    }
    let r = read(&bp, &k, Position::Tail, 3);
    assert_eq!(
        (read_offsets(&r), r.first, r.complete),
        (vec![6, 7, 8], Some(4), true)
    );
    assert_eq!(
        read_offsets(&read(&bp, &k, Position::Tail, 100)),
        vec![4, 5, 6, 7, 8]
    );
}

#[test]
fn joiners_without_since_get_live_turns_only() {
    let bp = backplane(10, MINUTE);
    let k = key("c");
    let t = TurnId::new("t").unwrap();
    publish(&bp, &k, 1);
    event(&bp, &k, Event::TurnStart(&t)).unwrap();
    event(&bp, &k, Event::Token(&t, "abc")).unwrap();
    let r = read(&bp, &k, Position::Live, 100);
    assert_eq!((read_offsets(&r), r.top), (vec![3], 3));
    assert!(matches!(&frames(&r)[0], ServerFrame::TurnSnapshot { text_so_far, .. } if text_so_far == "abc"));
}

#[test]
fn trimmed_history_is_incomplete() {
    let bp = backplane(3, MINUTE);
    let k = key("a");
    for i in 1..=10 {
        publish(&bp, &k, i);
    }
    assert!(!after(&bp, &k, 5).complete);
    let r = after(&bp, &k, 7);
    assert!(r.complete);
    assert_eq!(read_offsets(&r), vec![8, 9, 10]);
}

#[tokio::test(start_paused = true)]
async fn old_messages_age_out() {
    let bp = backplane(100, Duration::from_secs(20));
    let k = key("a");
    publish(&bp, &k, 1);
    tokio::time::advance(Duration::from_secs(15)).await;
    publish(&bp, &k, 2);
    assert!(after(&bp, &k, 0).complete, "15 s old is still kept");
    tokio::time::advance(Duration::from_secs(6)).await;
    assert!(!after(&bp, &k, 0).complete, "21 s old is gone");
    assert_eq!(read_offsets(&after(&bp, &k, 1)), vec![2]);
}

#[tokio::test(start_paused = true)]
async fn a_swept_channel_costs_nothing_and_never_reuses_an_offset() {
    let bp = backplane(100, Duration::from_secs(10));
    let k = key("a");
    for i in 1..=3 {
        publish(&bp, &k, i);
    }
    let epoch = read(&bp, &k, Position::Live, 0).epoch;
    assert_eq!(bp.sweep(), 0, "it retains messages");
    tokio::time::advance(Duration::from_secs(11)).await;
    assert_eq!(bp.sweep(), 1);
    assert_eq!(bp.channel_count(), 0);
    // Gone, yet a client that saw everything resumes exactly; one that
    // missed something is told.
    assert!(after(&bp, &k, 3).complete);
    assert!(!after(&bp, &k, 1).complete);
    let again = publish(&bp, &k, 4);
    assert_eq!(
        (again.offset, &again.epoch),
        (4, &epoch),
        "offsets continue above the sweep"
    );
    assert!(!after(&bp, &k, 1).complete, "offset 2 and 3 are gone for good");
    assert_eq!(read_offsets(&after(&bp, &k, 3)), vec![4]);
}

#[test]
fn subscribed_channels_are_not_swept() {
    let bp = backplane(0, MINUTE);
    let k = key("a");
    publish(&bp, &k, 1);
    let sink: Arc<dyn crate::Sink> = Arc::new(crate::MemorySink::new(1 << 20));
    bp.hub.join(&k, switchboard_proto::ConnId(1), sink).unwrap();
    assert_eq!(bp.sweep(), 0);
    bp.hub.leave(&k, switchboard_proto::ConnId(1));
    assert_eq!(bp.sweep(), 1);
}

#[test]
fn zero_history_never_recovers_a_gap() {
    let bp = backplane(0, MINUTE);
    let k = key("a");
    publish(&bp, &k, 1);
    publish(&bp, &k, 2);
    assert!(!after(&bp, &k, 1).complete);
    assert!(after(&bp, &k, 2).complete);
}

#[test]
fn joiners_share_one_snapshot_until_the_turn_advances() {
    let bp = backplane(10, MINUTE);
    let k = key("c");
    let t = TurnId::new("t").unwrap();
    event(&bp, &k, Event::TurnStart(&t)).unwrap();
    event(&bp, &k, Event::Token(&t, "abc")).unwrap();
    let snapshot = |bp: &InProcess| read(bp, &k, Position::Live, 10).messages[0].1.clone();
    let (one, two) = (snapshot(&bp), snapshot(&bp));
    assert_eq!(
        one.wire().as_ptr(),
        two.wire().as_ptr(),
        "the same bytes, not a copy"
    );
    event(&bp, &k, Event::Token(&t, "d")).unwrap();
    let three = snapshot(&bp);
    assert_ne!(one.wire().as_ptr(), three.wire().as_ptr());
    assert!(matches!(
        ServerFrame::decode(&three.payload()).unwrap(),
        ServerFrame::TurnSnapshot { text_so_far, .. } if text_so_far == "abcd"
    ));
}

#[test]
fn live_turns_replay_as_one_snapshot_and_finished_ones_as_one_message() {
    let bp = backplane(100, MINUTE);
    let k = key("turns.c1");
    let t = TurnId::new("t1").unwrap();
    publish(&bp, &k, 1); // offset 1
    assert_eq!(event(&bp, &k, Event::TurnStart(&t)).unwrap().offset, 2);
    assert!(matches!(
        event(&bp, &k, Event::TurnStart(&t)),
        Err(BackplaneError::TurnExists(_))
    ));
    for word in ["Hel", "lo", " there"] {
        event(&bp, &k, Event::Token(&t, word)).unwrap(); // 3, 4, 5
    }
    publish(&bp, &k, 6); // a message in the middle of the turn
    event(&bp, &k, Event::Token(&t, "!")).unwrap(); // 7

    // From the start: message 1, message 6, then the snapshot at 7.
    let r = after(&bp, &k, 0);
    assert!(r.complete);
    assert_eq!(read_offsets(&r), vec![1, 6, 7]);
    match &frames(&r)[2] {
        ServerFrame::TurnSnapshot {
            turn,
            start_offset,
            text_so_far,
            offset,
            ..
        } => {
            assert_eq!(
                (turn.as_str(), *start_offset, text_so_far.as_str(), *offset),
                ("t1", 2, "Hello there!", 7)
            );
        }
        other => panic!("{}", other.to_json()),
    }
    // From inside the turn: still one snapshot; from after its last token: none.
    assert_eq!(read_offsets(&after(&bp, &k, 4)), vec![6, 7]);
    assert!(after(&bp, &k, 7).messages.is_empty());

    assert_eq!(event(&bp, &k, Event::TurnEnd(&t)).unwrap().offset, 8);
    assert!(matches!(
        event(&bp, &k, Event::Token(&t, "late")),
        Err(BackplaneError::NoSuchTurn(_))
    ));
    let r = after(&bp, &k, 3);
    assert_eq!(read_offsets(&r), vec![6, 8]);
    match &frames(&r)[1] {
        ServerFrame::Turn {
            text,
            status,
            start_offset,
            ..
        } => {
            assert_eq!(
                (text.as_str(), *status, *start_offset),
                ("Hello there!", TurnStatus::Done, 2)
            );
        }
        other => panic!("{}", other.to_json()),
    }
}

#[test]
fn failed_turns_keep_their_reason() {
    let bp = backplane(100, MINUTE);
    let k = key("c");
    let t = TurnId::new("t").unwrap();
    event(&bp, &k, Event::TurnStart(&t)).unwrap();
    event(&bp, &k, Event::Token(&t, "par")).unwrap();
    let failed = Event::TurnError {
        turn: &t,
        reason: TurnFailure::OperatorGone,
        message: None,
    };
    event(&bp, &k, failed).unwrap();
    match &frames(&after(&bp, &k, 0))[0] {
        ServerFrame::Turn {
            text, status, reason, ..
        } => {
            assert_eq!(
                (text.as_str(), *status, *reason),
                ("par", TurnStatus::Error, Some(TurnFailure::OperatorGone))
            );
        }
        other => panic!("{}", other.to_json()),
    }
}

#[test]
fn a_channel_streams_a_bounded_number_of_turns() {
    let bp = backplane(100, MINUTE);
    let k = key("c");
    let ids: Vec<TurnId> = (0..3).map(|i| TurnId::new(&format!("t{i}")).unwrap()).collect();
    event(&bp, &k, Event::TurnStart(&ids[0])).unwrap();
    event(&bp, &k, Event::TurnStart(&ids[1])).unwrap();
    let refused = event(&bp, &k, Event::TurnStart(&ids[2])).unwrap_err();
    assert!(matches!(refused, BackplaneError::TooManyTurns(2)), "{refused}");
    assert_eq!(refused.code(), switchboard_proto::ErrorCode::LimitExceeded);
    event(&bp, &k, Event::TurnEnd(&ids[0])).unwrap();
    event(&bp, &k, Event::TurnStart(&ids[2])).unwrap();
}
