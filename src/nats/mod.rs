//! NATS operator mode: the JWTs ([`jwt`]), `switchboard nats init`
//! ([`init`]), a cluster-mode pod's start-up ([`cluster`]) and its org
//! accounts ([`accounts`]) and NATS publishers ([`publishers`]); the data
//! plane's first pieces: an org's channel stream ([`stream`]) and a
//! channel's gap-repairing live feed ([`live`]).

pub mod accounts;
pub mod cluster;
pub mod init;
pub mod jwt;
pub mod live;
pub mod publishers;
pub mod stream;
