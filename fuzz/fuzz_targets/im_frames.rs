//! A DingTalk Stream frame as the connector reads it, and the emulator's side of the wire
//! (`gateway::fuzzing::stream_frame`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::stream_frame(data));
