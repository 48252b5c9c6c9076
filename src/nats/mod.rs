//! NATS operator mode: the JWTs ([`jwt`]) and `switchboard nats init`
//! ([`init`]), which makes the operator, the system and broker accounts,
//! their users' credentials and a ready nats-server configuration.

pub mod init;
pub mod jwt;
