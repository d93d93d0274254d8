//! Known answers computed outside this crate: the key with Python's `base64.b64decode`, the ciphertext
//! with `openssl enc -aes-256-cbc -nopad` over a plaintext laid out and padded by hand, the signature
//! with Python's `hashlib.sha1`. The SDK-level check against Python's `cryptography` is
//! `tests/python/run-wecom.sh`.

use super::*;

const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const MESSAGE: &str = r#"{"msgid":"m1","msgtype":"text","text":{"content":"你好"}}"#;
const CIPHERTEXT: &str = "QCTqNwyPmqRu4xuyqVsjaz3SjdUvxzBfHVbQKu+ppULfxEMHLCnElkxLgVL2nSE8oT7BDmL1cEzQ3537D81CuBc91oxaIi7JwF1oAqobvPGedFh7LL2HqPbpg78yZ699";

#[test]
fn encrypts_and_signs_as_openssl_and_hashlib_do() {
    let crypt = MsgCrypt::new("tok", KEY).unwrap();
    assert_eq!(
        crypt.encrypt_with(*b"1234567890123456", MESSAGE, "").unwrap(),
        CIPHERTEXT
    );
    assert_eq!(
        crypt.signature("1713000000", "nonce42", CIPHERTEXT),
        "0393ae25d90d4a5775ca3df4433709b94bc5205d"
    );
    let plain = crypt.decrypt(CIPHERTEXT, Padding::Block32).unwrap();
    assert_eq!(plain.message, MESSAGE);
    assert_eq!(plain.receive_id, "");
}

#[test]
fn signature_sorts_its_parts() {
    // Tencent's sample vector (token QDG6eK, timestamp 1409659813, nonce 1372623149).
    let encrypt = "RypEvHKD8QQKFhvQ6QleEB4J58tiPdvo+rtK1I9qca6aM/wvqnLSV5zEPeusUiX5L5X/0lWfrf0QADHHhGd3QczcdCUpj911L3vg3W/sYYvuJTs3TUUkSUXxaccAS0qhxchrRYt66wiSpGLYL42aM6A8dTT+6k4aSknmPj48kzJs8qLjvd4Xgpue06DOdnLxAUHzM6+kDZ+HMZfJYuR+LtwGc2hgf5gsijff0ekUNXZiqATP7PF5mZxZ3Izoun1s4zG4LUMnvw2r+KqCKIw+3IQH03v+BCA9nMELNqbSf6tiWSrXJB3LAVGUcallcrw8V2t9EL4EhzJWrQUax5wLVMNS0+rUPA3k22Ncx4XXZS9o0MBH27Bo6BpNelZpS";
    assert_eq!(
        signature("QDG6eK", "1409659813", "1372623149", encrypt),
        "2ecc5745cc405397f9c1ed24f09bdcc0a6c132ed"
    );
    let crypt = MsgCrypt::new("QDG6eK", KEY).unwrap();
    assert_eq!(
        crypt.verify(
            "2ecc5745cc405397f9c1ed24f09bdcc0a6c132ed",
            "1409659813",
            "1372623149",
            encrypt
        ),
        Ok(())
    );
    assert_eq!(
        crypt.verify(
            "2ecc5745cc405397f9c1ed24f09bdcc0a6c132ee",
            "1409659813",
            "1372623149",
            encrypt
        ),
        Err(CryptoError::Signature)
    );
}

#[test]
fn round_trips_every_padding_length() {
    let crypt = MsgCrypt::new("t", KEY).unwrap();
    for len in 0..70 {
        let message = "x".repeat(len);
        let encrypt = crypt.encrypt(&message, "rid").unwrap();
        let plain = crypt.decrypt(&encrypt, Padding::Block32).unwrap();
        assert_eq!(
            (plain.message.as_str(), plain.receive_id.as_str()),
            (message.as_str(), "rid")
        );
        assert_eq!(
            crypt.decrypt_for(&encrypt, "", Padding::Block32).unwrap_err().code(),
            -40005
        );
    }
}

#[test]
fn refuses_bad_keys_and_ciphertexts_with_the_samples_codes() {
    assert_eq!(MsgCrypt::new("t", "short").unwrap_err().code(), -40004);
    assert_eq!(MsgCrypt::new("t", &"!".repeat(43)).unwrap_err().code(), -40004);
    let crypt = MsgCrypt::new("t", KEY).unwrap();
    assert_eq!(
        crypt.decrypt("not base64!", Padding::Block32).unwrap_err().code(),
        -40010
    );
    assert_eq!(crypt.decrypt("AAAA", Padding::Block32).unwrap_err().code(), -40007);
    // Sixteen-byte PKCS#7 (what a generic AES library produces) is refused unless lenient.
    let sixteen = sixteen_byte_padded(&crypt, "hello");
    assert_eq!(
        crypt.decrypt(&sixteen, Padding::Block32).unwrap_err(),
        CryptoError::Padding { block: 32 }
    );
    assert_eq!(crypt.decrypt(&sixteen, Padding::Lenient).unwrap().message, "hello");
}

/// `random ‖ len ‖ "hello"` (25 bytes) padded with 7 bytes to 32 would be valid either way, so pad a
/// 41-byte plaintext to 48: a multiple of 16, not of 32.
fn sixteen_byte_padded(crypt: &MsgCrypt, message: &str) -> String {
    let mut plain = b"0123456789abcdef".to_vec();
    plain.extend_from_slice(&(message.len() as u32).to_be_bytes());
    plain.extend_from_slice(message.as_bytes());
    plain.extend_from_slice(b"0123456789abcdef");
    let pad = 16 - plain.len() % 16;
    plain.resize(plain.len() + pad, pad as u8);
    assert_eq!(plain.len() % 32, 16);
    let cipher = cbc::Encryptor::<Aes256>::new(&crypt.key.into(), &crypt.iv().into())
        .encrypt_padded_vec_mut::<NoPadding>(&plain);
    STANDARD.encode(cipher)
}
