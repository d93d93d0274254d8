//! The card splitter over an answer, card by card (`gateway::fuzzing::card_split`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::card_split(data));
