//! What the `im_frames` fuzz target in `fuzz/` runs on the emulator's side of the wire: an upstream Stream
//! frame and an OpenAPI request body, read as the emulator reads them. Not an API; hidden from the docs.

use super::openapi::{check_robot_send, parse_spaces};
use super::wire::{
    AckFrame, CardRequest, CardUpdateRequest, GroupSendRequest, OpenConnectionRequest, OtoSendRequest, StreamingRequest,
};
use super::EmulatorConfig;

/// `text` as an ACK frame, as each OpenAPI body the emulator parses, and its `openSpaceId` and robot-send
/// checks; panics only where an invariant breaks (a parse that panics is the bug).
pub fn upstream(text: &str) {
    if let Ok(ack) = serde_json::from_str::<AckFrame>(text) {
        let _ = ack.message_id();
    }
    let _ = serde_json::from_str::<OpenConnectionRequest>(text);
    let _ = serde_json::from_str::<CardUpdateRequest>(text);
    let _ = serde_json::from_str::<StreamingRequest>(text);
    if let Ok(card) = serde_json::from_str::<CardRequest>(text) {
        if let Some(spaces) = &card.open_space_id {
            let _ = parse_spaces(spaces);
        }
    }
    let config = EmulatorConfig::default();
    if let Ok(send) = serde_json::from_str::<OtoSendRequest>(text) {
        let _ = check_robot_send(&config, &send.robot_code, &send.msg_key, &send.msg_param);
    }
    if let Ok(send) = serde_json::from_str::<GroupSendRequest>(text) {
        let _ = check_robot_send(&config, &send.robot_code, &send.msg_key, &send.msg_param);
    }
    let _ = parse_spaces(text);
}
