#![no_main]
//! `cargo +nightly fuzz run operator_frame`: see switchboard::fuzzing::operator_frame.

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchboard::fuzzing::operator_frame(data));
