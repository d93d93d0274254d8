//! A WeCom long-connection frame and a URL-mode ciphertext as the connector reads them
//! (`gateway::fuzzing::wecom_frame`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::wecom_frame(data));
