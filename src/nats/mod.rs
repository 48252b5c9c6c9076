//! NATS operator mode: the JWTs ([`jwt`]), `switchboard nats init`
//! ([`init`]), a cluster-mode pod's start-up ([`cluster`]) and its org
//! accounts ([`accounts`]) and NATS publishers ([`publishers`]).

pub mod accounts;
pub mod cluster;
pub mod init;
pub mod jwt;
pub mod publishers;
