//! NATS operator mode: the JWTs ([`jwt`]), `switchboard nats init`
//! ([`init`]), a cluster-mode pod's start-up ([`cluster`]) and its org
//! accounts ([`accounts`]) and NATS publishers ([`publishers`]); the data
//! plane in progress: an org's channel stream ([`stream`]), a channel's
//! gap-repairing live feed ([`live`]) and the backplane over them
//! ([`backplane`]).

pub mod accounts;
pub mod backplane;
pub mod cluster;
pub mod ingest;
pub mod init;
pub mod jwt;
pub mod kube;
pub mod live;
pub mod parking;
pub mod presence;
pub mod publishers;
pub mod roles;
pub mod stream;
pub mod turns;
