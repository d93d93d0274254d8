//! The long connection's `pbbp2` frames (§2) as hearth sends them. The frame type is the emulator's
//! (`emulator::feishu::wire`, a hand-written prost message the gateway already links for `hearth emulate`):
//! one definition of the wire for both sides. Absent required fields decode as 0; all four are encoded.

use prost::Message;

pub use emulator::feishu::wire::{Frame, Header, METHOD_CONTROL as CONTROL, METHOD_DATA as DATA};

/// hearth's ping on service `service`.
pub fn ping(service: i32) -> Vec<u8> {
    Frame::control(service, "ping", None).encode_to_vec()
}

/// The response to the data frame `frame` (§2.4): the same frame with `biz_rt` appended and the payload
/// `{"code": code}`.
pub fn response(mut frame: Frame, code: u16, biz_rt_ms: u128) -> Vec<u8> {
    frame.headers.push(Header {
        key: "biz_rt".to_owned(),
        value: biz_rt_ms.to_string(),
    });
    frame.payload = Some(format!("{{\"code\":{code}}}").into_bytes());
    frame.encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ping_is_the_reference_bytes() {
        // §2: a client ping with service_id 1.
        let expected = [
            0x08, 0x00, 0x10, 0x00, 0x18, 0x01, 0x20, 0x00, 0x2a, 0x0c, 0x0a, 0x04, b't', b'y', b'p', b'e', 0x12, 0x04,
            b'p', b'i', b'n', b'g',
        ];
        assert_eq!(ping(1), expected);
        let decoded = Frame::decode(&expected[..]).unwrap();
        assert_eq!(decoded.header("type"), Some("ping"));
        assert!(Frame::decode(&[0xff, 0xff][..]).is_err());
    }
}
