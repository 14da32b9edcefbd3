//! libFuzzer target `rin_config`: the body is `rin_ship::fuzzing::rin_config` (what it checks is
//! documented there and in docs/fuzzing.md). It must stay a one-line call, so the corpus
//! replay in `cargo test` runs exactly what libFuzzer runs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rin_ship::fuzzing::rin_config(data));
