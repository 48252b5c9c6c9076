#![no_main]
//! `cargo +nightly fuzz run handshake`: see switchboard::fuzzing::handshake.

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchboard::fuzzing::handshake(data));
