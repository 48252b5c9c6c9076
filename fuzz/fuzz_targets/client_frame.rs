#![no_main]
//! `cargo +nightly fuzz run client_frame`: see switchboard::fuzzing::client_frame.

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchboard::fuzzing::client_frame(data));
