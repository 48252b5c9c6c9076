//! Integration tests: the real binary and the real server over real
//! WebSockets, HTTP and NATS. One test binary (not one per file) so the suite
//! links once: each file below is a module. Tests that read process-wide
//! metrics exactly (`probes.rs`, `slow_consumer.rs`, `operator_rebuffer.rs`)
//! are binaries of their own, so no other test moves their counters.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

mod admin;
mod burst;
mod cluster;
mod cluster_order;
mod cluster_pods;
mod cluster_registry;
mod cluster_sessions;
mod cluster_stream;
mod deploy;
mod echo_agent;
mod fanout;
mod http_api;
mod limits;
mod memory;
mod nats_init;
mod openapi;
mod operator_bounds;
mod operators;
mod process;
mod protocol;
mod publishers;
mod resume;
mod rollout;
mod tickets;
mod turns;
