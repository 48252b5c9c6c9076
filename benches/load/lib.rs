//! `switchboard-load`: the load generator behind the README's benchmark
//! table. It drives Switchboard and, as the baseline in the same run,
//! nats-server's own WebSocket listener, with the same clients and the same
//! open-loop publisher.
//!
//! # Layout
//! - [`scenario`]: the named presets (`fanout-1k`, `idle`, ...) as plans.
//! - [`payload`]: stamped payloads (channel, sequence, scheduled time) and their scanner.
//! - [`net`]: client sockets spread over 127.0.0.x source addresses.
//! - [`rawws`]: the subscribers' lean WebSocket client (no allocation per message).
//! - [`target`]: the two protocol adapters (Switchboard, NATS over WebSocket).
//! - [`publish`]: open-loop publishers over HTTP, WebSocket or NATS.
//! - [`hostile`]: the `abuse` scenario's slow readers, churners and announcers.
//! - [`stats`]: latency histograms and the loss/duplicate accounting.
//! - [`procfs`]: the server's CPU time and RSS from `/proc`.
//! - [`run`]: one run of a plan against a target.
//! - [`report`]: JSON lines, medians, ratios and the table; [`plot`]: the SVG plots.

pub mod hostile;
pub mod net;
pub mod payload;
pub mod plot;
pub mod procfs;
pub mod publish;
pub mod rawws;
pub mod report;
pub mod run;
pub mod scenario;
pub mod stats;
pub mod target;
