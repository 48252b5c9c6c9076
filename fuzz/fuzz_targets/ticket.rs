#![no_main]
//! `cargo +nightly fuzz run ticket`: see switchboard::fuzzing::ticket.

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchboard::fuzzing::ticket(data));
