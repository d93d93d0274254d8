//! What the fuzz targets in `fuzz/` run, and the tests that replay their committed inputs: each function
//! takes arbitrary bytes, drives one parser the way the connector does, and panics only where an invariant
//! breaks (a panic on input is itself the bug: bad input must get an error). Not an API; hidden from the
//! docs, and public only because the fuzz crate is outside the workspace.

use serde_json::Value;

use crate::dingtalk::message::{ack, Inbound};
use crate::im::split;

/// One text frame from the DingTalk Stream socket, read as the Stream client reads it (`Inbound::parse`,
/// then what the connector asks of a robot message), and the ACK it would send, which must be JSON naming
/// the frame's `messageId` and echoing a ping's data. The emulator's side of the wire (the ACKs and
/// OpenAPI bodies it reads) gets the same bytes.
pub fn stream_frame(data: &[u8]) {
    // WebSocket text frames are UTF-8 (tungstenite refuses others before we see them).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    emulator::dingtalk::fuzzing::upstream(text);
    let (message_id, echoed) = match Inbound::parse(text) {
        Err(_) => return,
        Ok(Inbound::Ping { message_id, data }) => (message_id, Some(data)),
        Ok(Inbound::Disconnect { message_id, data, .. }) => (message_id, Some(data)),
        Ok(Inbound::Bot { message_id, message }) => {
            let _ = (message.addressee(), message.sender(), message.question());
            assert_eq!(
                crate::dingtalk::message::ConversationType::from_wire(message.conversation_type.wire()),
                Some(message.conversation_type)
            );
            (message_id, None)
        }
        Ok(Inbound::BadBot { message_id, .. } | Inbound::Unknown { message_id, .. }) => (message_id, None),
    };
    let data = echoed.clone().unwrap_or_default();
    let frame: Value = serde_json::from_str(&ack(&message_id, 200, "OK", &data)).expect("an ACK is JSON");
    assert_eq!(frame["headers"]["messageId"].as_str(), Some(message_id.as_str()));
    if let Some(echoed) = echoed {
        assert_eq!(
            frame["data"].as_str(),
            Some(echoed.as_str()),
            "a ping's data comes back unchanged"
        );
    }
}

/// One binary message from the Feishu long connection, read as the connector reads it: a `pbbp2` frame
/// (`Frame::decode`), its event payload (`Event::parse`, then what the adapter asks of a message), and the
/// response frame it would send back, which must decode to the same frame with `{"code":200}`.
pub fn feishu_frame(data: &[u8]) {
    use prost::Message;

    use crate::feishu::frame::{response, Frame};
    use crate::feishu::message::Event;

    let Ok(frame) = Frame::decode(data) else {
        return;
    };
    let _ = (frame.header("type"), frame.header("sum"), frame.header("seq"));
    if let Some(Ok(Event::Message(message))) = frame.payload.as_deref().map(Event::parse) {
        assert!(!message.message_id.is_empty(), "a message without an id is refused");
        let _ = (message.text.len(), message.group, message.mentions_bot);
    }
    let answer = Frame::decode(&response(frame.clone(), 200, 1)[..]).expect("a response frame decodes");
    assert_eq!(
        (answer.seq_id, answer.log_id, answer.service),
        (frame.seq_id, frame.log_id, frame.service)
    );
    assert_eq!(answer.payload.as_deref(), Some(&b"{\"code\":200}"[..]));
}

/// One text frame from the WeCom long connection (a `Frame`, then a pushed message as the adapter reads it),
/// and the same bytes as the encrypted field of a URL-mode callback, decrypted as hearth does with the
/// emulator's default key: a frame or ciphertext that cannot be read is an error, never a panic.
pub fn wecom_frame(data: &[u8]) {
    use crate::wecom::message::{Frame, WeComMessage};

    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(frame) = serde_json::from_str::<Frame>(text) {
        if let Some(body) = frame.body {
            if let Ok(message) = serde_json::from_value::<WeComMessage>(body) {
                let _ = (
                    message.is_group(),
                    message.conversation(),
                    message.question(),
                    message.sent_ms(),
                );
            }
        }
    }
    let crypt = emulator::wecom::crypto::MsgCrypt::new("emulatortoken", "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG")
        .expect("the emulator's default key is valid");
    let _ = crypt.decrypt(text, emulator::wecom::crypto::Padding::Lenient);
}

/// The card splitter over one answer, card after card as the connector rolls over (`card_end` then
/// `card_text`). The first two bytes choose the card size: with the high bit set a tiny one (0 to 127
/// bytes, below what the configuration allows, checked only for progress), else 256 (the configured
/// minimum) and up; the rest, read lossily as UTF-8, is the answer, split without a table limit and with
/// one of two tables a card.
///
/// Invariants: every card ends on a character boundary after the one before and before the end of the
/// text; a card shows its share of the answer whole; at a configurable size, a card holds at most that
/// many bytes (fence lines included); and a cut depends only on the text up to one byte past the card's
/// room, so a cut chosen while the answer streams is the cut the whole answer gets.
pub fn card_split(data: &[u8]) {
    let [a, b, rest @ ..] = data else {
        return;
    };
    let tiny = a & 0x80 != 0;
    let max = if tiny {
        usize::from(a & 0x7F)
    } else {
        crate::dingtalk::config::MIN_CARD_BYTES + usize::from(u16::from_le_bytes([*a, *b]) % 2048)
    };
    let text = String::from_utf8_lossy(rest);
    for tables in [None, Some(2)] {
        split_cards(&text, max, tiny, tables);
    }
}

/// [`card_split`] over `text` with cards of `max` bytes and at most `tables` tables.
fn split_cards(text: &str, max: usize, tiny: bool, tables: Option<usize>) {
    let mut start = 0;
    loop {
        let end = split::card_end(text, start, max, tables);
        let card = split::card_text(text, start, end, max);
        let stop = end.unwrap_or(text.len());
        assert!(text.is_char_boundary(stop), "a cut at {stop} splits a character");
        assert!(card.contains(&text[start..stop]), "the card does not show its share");
        if let Some(end) = end {
            assert!(end > start, "no progress at {start}");
            if !tiny {
                assert!(end < text.len(), "a cut at the very end leaves an empty card");
                // The same cut over any longer prefix of the answer, from one byte past start + max on.
                let mut prefix = (start + max + 1).min(text.len());
                while !text.is_char_boundary(prefix) {
                    prefix += 1;
                }
                assert_eq!(
                    split::card_end(&text[..prefix], start, max, tables),
                    Some(end),
                    "the cut moved once more text arrived"
                );
            }
        }
        if !tiny {
            assert!(
                card.len() <= max,
                "a card of {} bytes over the limit of {max}",
                card.len()
            );
        }
        match end {
            Some(end) => start = end,
            None => break,
        }
    }
    let _ = split::closing(text);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file of the committed corpus and regressions of fuzz target `target` (`fuzz/corpus/TARGET`,
    /// `fuzz/regressions/TARGET`), for tests that replay them on stable Rust.
    fn committed_inputs(target: &str) -> Vec<(std::path::PathBuf, Vec<u8>)> {
        let fuzz = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        let mut inputs = Vec::new();
        for dir in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(fuzz.join(dir).join(target)) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_file() {
                    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                    inputs.push((path, bytes));
                }
            }
        }
        inputs.sort();
        inputs
    }

    /// The committed inputs of `target` (each crash a fuzz run found stays there) pass again.
    fn replay(target: &str, run: fn(&[u8])) {
        let inputs = committed_inputs(target);
        assert!(!inputs.is_empty(), "no committed inputs for fuzz target {target}");
        for (path, bytes) in inputs {
            if std::panic::catch_unwind(|| run(&bytes)).is_err() {
                panic!("fuzz input {} fails again", path.display());
            }
        }
    }

    #[test]
    fn im_frames_corpus_replays() {
        replay("im_frames", stream_frame);
    }

    #[test]
    fn feishu_frame_corpus_replays() {
        replay("feishu_frame", feishu_frame);
    }

    #[test]
    fn wecom_frame_corpus_replays() {
        replay("wecom_frame", wecom_frame);
    }

    #[test]
    fn card_split_corpus_replays() {
        replay("card_split", card_split);
    }
}
