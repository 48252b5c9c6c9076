#![no_main]
//! `cargo +nightly fuzz run ws_reader`: see switchboard::fuzzing::ws_reader.

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchboard::fuzzing::ws_reader(data));
