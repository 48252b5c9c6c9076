//! Every metric the broker emits, named in one place
//! (`switchboard_<name>_<unit>[_total]`, base units, labels from bounded sets).

use metrics::{counter, gauge, histogram};

pub const CONNECTIONS: &str = "switchboard_connections";
pub const CONNECTIONS_OPENED: &str = "switchboard_connections_opened_total";
pub const CONNECTION_PANICS: &str = "switchboard_connection_panics_total";
pub const SUBSCRIPTIONS: &str = "switchboard_subscriptions";
pub const MESSAGES_IN: &str = "switchboard_messages_in_total";
pub const DELIVERIES: &str = "switchboard_deliveries_total";
pub const DELIVERED_BYTES: &str = "switchboard_delivered_bytes_total";
pub const SLOW_CONSUMERS: &str = "switchboard_slow_consumer_disconnects_total";
pub const QUEUE_BYTES: &str = "switchboard_outbound_queue_bytes";
pub const CONNECTIONS_CLOSED: &str = "switchboard_connections_closed_total";
pub const PUBLISH_ERRORS: &str = "switchboard_publish_errors_total";
pub const HISTORY_CHANNELS: &str = "switchboard_history_channels";
pub const GAP_FRAMES: &str = "switchboard_operator_frames_lost_total";
pub const PUBLISH_FANOUT_SECONDS: &str = "switchboard_publish_to_write_seconds";
pub const CLIENT_ERRORS: &str = "switchboard_client_errors_total";
pub const ORG_ACTORS: &str = "switchboard_org_actors";
pub const ORG_RESTARTS: &str = "switchboard_org_actor_restarts_total";
pub const ATTACHED_CHANNELS: &str = "switchboard_attached_channels";
pub const SESSIONS: &str = "switchboard_operator_sessions";
pub const SESSIONS_CONNECTED: &str = "switchboard_operator_sessions_connected";
pub const SESSION_RESTARTS: &str = "switchboard_operator_session_restarts_total";
pub const FRAMES_ROUTED: &str = "switchboard_frames_routed_total";
pub const FRAMES_REFUSED: &str = "switchboard_frames_refused_total";
pub const TURNS_STARTED: &str = "switchboard_turns_started_total";
pub const TURNS_FINISHED: &str = "switchboard_turns_finished_total";
pub const TOKENS: &str = "switchboard_tokens_total";
pub const ROLLUP_SAVED: &str = "switchboard_rollup_frames_saved_total";
pub const NATS_ORG_CONNECTIONS: &str = "switchboard_nats_org_connections";
pub const NATS_ORG_OPEN_SECONDS: &str = "switchboard_nats_org_open_seconds";
pub const NATS_ACCOUNTS_MADE: &str = "switchboard_nats_accounts_made_total";
pub const PUBLISHER_EVENTS: &str = "switchboard_nats_publisher_events_total";
pub const NATS_CONNECTED: &str = "switchboard_nats_connected";

/// Registers descriptions so `/metrics` documents itself, and puts the
/// unlabelled series at zero so a dashboard shows 0, not "no data", before
/// the first event (deploy/grafana).
pub fn describe() {
    for name in [
        CONNECTIONS_OPENED,
        CONNECTION_PANICS,
        MESSAGES_IN,
        DELIVERIES,
        DELIVERED_BYTES,
        SLOW_CONSUMERS,
        GAP_FRAMES,
        ORG_RESTARTS,
        SESSION_RESTARTS,
        FRAMES_ROUTED,
        FRAMES_REFUSED,
        TURNS_STARTED,
        TOKENS,
        ROLLUP_SAVED,
    ] {
        counter!(name).increment(0);
    }
    for name in [
        CONNECTIONS,
        SUBSCRIPTIONS,
        QUEUE_BYTES,
        HISTORY_CHANNELS,
        ORG_ACTORS,
        ATTACHED_CHANNELS,
        SESSIONS,
        SESSIONS_CONNECTED,
    ] {
        gauge!(name).increment(0.0);
    }
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(CONNECTIONS, "Client WebSocket connections open now");
    describe_counter!(CONNECTIONS_OPENED, "Client WebSocket connections accepted");
    describe_counter!(
        CONNECTION_PANICS,
        "Connections closed because their task panicked"
    );
    describe_gauge!(SUBSCRIPTIONS, "Channel subscriptions held by local connections");
    describe_counter!(MESSAGES_IN, "Messages published through this pod");
    describe_counter!(DELIVERIES, "Messages handed to local subscribers");
    describe_counter!(DELIVERED_BYTES, Unit::Bytes, "Bytes handed to local subscribers");
    describe_counter!(
        SLOW_CONSUMERS,
        "Connections cut off because their outbound queue overflowed"
    );
    describe_histogram!(
        QUEUE_BYTES,
        Unit::Bytes,
        "Bytes queued for a connection when a frame had to wait"
    );
    describe_counter!(
        CONNECTIONS_CLOSED,
        "Connections (client and operator) closed by the server, by reason"
    );
    describe_counter!(PUBLISH_ERRORS, "Publishes refused, by error code");
    describe_gauge!(
        HISTORY_CHANNELS,
        "Channels with history in memory (a channel nobody published on has none)"
    );
    describe_counter!(
        GAP_FRAMES,
        "Frames for an absent operator that could not be kept (reported to it as a gap)"
    );
    describe_histogram!(
        PUBLISH_FANOUT_SECONDS,
        Unit::Seconds,
        "From accepting a publish to the end of its local fan-out pass (direct writes done, the rest queued)"
    );
    describe_counter!(CLIENT_ERRORS, "Error frames sent to clients, by code");
    describe_gauge!(ORG_ACTORS, "Org actors running");
    describe_counter!(ORG_RESTARTS, "Org actors restarted after a failure");
    describe_gauge!(ATTACHED_CHANNELS, "Channels this pod receives from the backplane");
    describe_gauge!(SESSIONS, "Operator sessions alive on this pod");
    describe_gauge!(SESSIONS_CONNECTED, "Operator sessions with a socket attached");
    describe_counter!(SESSION_RESTARTS, "Operator sessions restarted after a failure");
    describe_counter!(
        FRAMES_ROUTED,
        "Client frames delivered or buffered for an operator"
    );
    describe_counter!(
        FRAMES_REFUSED,
        "Client frames refused: the operator was away and its buffer full"
    );
    describe_counter!(TURNS_STARTED, "Turns started");
    describe_counter!(
        TURNS_FINISHED,
        "Turns ended, by status (done, error, operator_gone)"
    );
    describe_counter!(TOKENS, "Tokens streamed by operators");
    describe_counter!(
        ROLLUP_SAVED,
        "Token frames saved by rollup (tokens merged into an earlier frame)"
    );
    describe_gauge!(
        NATS_ORG_CONNECTIONS,
        "Orgs with a NATS connection open on this pod (cluster mode)"
    );
    describe_histogram!(
        NATS_ORG_OPEN_SECONDS,
        Unit::Seconds,
        "Opening an org's NATS connection on this pod, its account made first if new"
    );
    describe_counter!(NATS_ACCOUNTS_MADE, "Org NATS accounts this pod made");
    describe_gauge!(
        NATS_CONNECTED,
        "1 while this pod's connection to NATS is up, 0 while it is not (cluster mode)"
    );
    describe_counter!(
        PUBLISHER_EVENTS,
        "Events from NATS publishers, by result (delivered, malformed, oversized, refused)"
    );
}

pub(crate) fn delivered(n: usize, frame_len: usize) {
    if n > 0 {
        counter!(DELIVERIES).increment(n as u64);
        counter!(DELIVERED_BYTES).increment((n * frame_len) as u64);
    }
}

pub(crate) fn published(started: crate::clock::Instant) {
    counter!(MESSAGES_IN).increment(1);
    histogram!(PUBLISH_FANOUT_SECONDS).record(started.elapsed().as_secs_f64());
}

pub(crate) fn publish_refused(code: switchboard_proto::ErrorCode) {
    counter!(PUBLISH_ERRORS, "code" => code.as_str()).increment(1);
}

/// A connection cut off because its queue (or its pending backlog) overflowed.
pub fn slow_consumer() {
    counter!(SLOW_CONSUMERS).increment(1);
}

/// The server closed a connection for `reason` (a label from a fixed set).
pub fn closed(reason: &'static str) {
    counter!(CONNECTIONS_CLOSED, "reason" => reason).increment(1);
}

pub(crate) fn operator_frames_lost(n: u64) {
    if n > 0 {
        counter!(GAP_FRAMES).increment(n);
    }
}

pub fn client_error(code: switchboard_proto::ErrorCode) {
    counter!(CLIENT_ERRORS, "code" => code.as_str()).increment(1);
}

pub(crate) fn subscriptions(delta: f64) {
    gauge!(SUBSCRIPTIONS).increment(delta);
}
