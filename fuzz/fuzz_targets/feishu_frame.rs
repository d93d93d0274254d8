//! A Feishu long-connection `pbbp2` frame as the connector reads it, and its response
//! (`gateway::fuzzing::feishu_frame`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::feishu_frame(data));
