//! Switchboard: a multi-tenant, actor-based realtime message broker.
//!
//! # Layout
//! - [`cli`]: the `switchboard` command (`serve`, `init`, `token`).
//! - [`config`]: settings with reasoned defaults; file, env and flags merged.
//! - [`directory`]: orgs and their credentials (the `OrgDirectory` seam).
//! - [`auth`]: client JWTs, API keys, bearer tokens; [`tickets`]: short-lived WS tickets;
//!   [`jwks`]: keys orgs publish at a JWKS URL.
//! - [`nats`]: NATS operator mode and cluster mode: JWTs, `switchboard nats init`,
//!   start-up, org accounts, publishers.
//! - [`registry`]: orgs, users, API keys, ticket keys, audit log; durable, secrets sealed;
//!   [`enforce`]: its changes applied to live connections, whichever pod made them.
//! - [`server`]: accept loop, HTTP/1.1 serving, ordered shutdown.
//! - [`http`]: the routes and the JSON error mapping.
//! - [`ws`]: client WebSockets on the raw socket (handshake, reader, sink, task).
//! - [`telemetry`]: tracing and the Prometheus recorder.
//! - `fuzzing` (tests and `cargo fuzz` only): the fuzz targets' bodies.
//!
//! The wire types are in `switchboard-proto`, the hub and actors in
//! `switchboard-actors`.

pub mod auth;
pub mod cli;
pub mod config;
pub mod directory;
pub mod enforce;
#[cfg(any(test, fuzzing))]
pub mod fuzzing;
pub mod http;
pub mod jwks;
pub mod nats;
pub mod registry;
pub mod server;
pub mod telemetry;
pub mod tickets;
pub mod ws;
