//! WeCom's callback crypto ("回调和回复的加解密方案", the official WXBizMsgCrypt / WXBizJsonMsgCrypt samples),
//! as `shared/protocols/wecom.md` §3 describes it. It does not depend on the rest of the emulator, so a
//! connector can use it as it is (`emulator::wecom::crypto`).
//!
//! - key: `base64(EncodingAESKey + "=")`, 32 bytes; AES-256-CBC with IV = the key's first 16 bytes.
//! - plaintext: `random(16) ‖ u32_be(len(msg)) ‖ msg ‖ receiveid`, PKCS#7-padded to a multiple of **32**
//!   bytes (1 to 32 pad bytes, each the pad length); ciphertext in standard base64.
//! - signature: SHA-1 (lower-case hex) of the four strings `[token, timestamp, nonce, encrypt]` sorted
//!   and joined without a separator.
//!
//! ```
//! use emulator::wecom::crypto::{MsgCrypt, Padding};
//! let crypt = MsgCrypt::new("token", "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG").unwrap();
//! let encrypt = crypt.encrypt(r#"{"msgtype":"text"}"#, "").unwrap();
//! let signature = crypt.signature("1713000000", "nonce", &encrypt);
//! crypt.verify(&signature, "1713000000", "nonce", &encrypt).unwrap();
//! let plain = crypt.decrypt(&encrypt, Padding::Block32).unwrap();
//! assert_eq!(plain.message, r#"{"msgtype":"text"}"#);
//! assert_eq!(plain.receive_id, "");
//! ```

use aes::Aes256;
use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::Engine;
use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use rand::Rng;
use sha1::{Digest, Sha1};

/// The block the plaintext is padded to (WeCom's samples use 32, not AES's 16).
pub const PAD_BLOCK: usize = 32;

/// Length of an EncodingAESKey.
pub const ENCODING_AES_KEY_LEN: usize = 43;

/// EncodingAESKeys are 43 characters of `[A-Za-z0-9]`, so the last one usually has trailing bits set that
/// strict base64 refuses; the official samples (Python's `b64decode`, Node's `Buffer`) ignore them.
const KEY_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);

/// What the crypto refuses, with the official sample's error code ([`CryptoError::code`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The signature does not match the token, timestamp, nonce and ciphertext (-40001).
    #[error("the signature does not match")]
    Signature,
    /// The EncodingAESKey is not 43 base64 characters of a 32-byte key (-40004).
    #[error("the EncodingAESKey must be {ENCODING_AES_KEY_LEN} base64 characters of a 32-byte key")]
    AesKey,
    /// The plaintext ends with another receiveid than expected (-40005).
    #[error("the receiveid is {found:?}, expected {expected:?}")]
    ReceiveId { found: String, expected: String },
    /// A message longer than the 32-bit length field (-40006).
    #[error("a message of {0} bytes does not fit the length field")]
    TooLong(usize),
    /// The ciphertext is not a whole number of AES blocks (-40007).
    #[error("the ciphertext is {0} bytes, not a whole number of 16-byte AES blocks")]
    CipherLength(usize),
    /// The padding is not PKCS#7 to a multiple of the expected block (-40007).
    #[error("the plaintext does not end in PKCS#7 padding to a multiple of {block} bytes")]
    Padding { block: usize },
    /// The plaintext is shorter than its header or its length field (-40008).
    #[error("the plaintext is {actual} bytes, too short for its header and {needed} bytes of message")]
    Buffer { needed: usize, actual: usize },
    /// The message or receiveid is not UTF-8 (-40008).
    #[error("the decrypted message is not UTF-8")]
    Utf8,
    /// The ciphertext is not standard base64 (-40010).
    #[error("the ciphertext is not base64: {0}")]
    Base64(String),
}

impl CryptoError {
    /// The error code of Tencent's sample (`ierror.py`) for this refusal.
    pub fn code(&self) -> i64 {
        match self {
            Self::Signature => -40001,
            Self::AesKey => -40004,
            Self::ReceiveId { .. } => -40005,
            Self::TooLong(_) => -40006,
            Self::CipherLength(_) | Self::Padding { .. } => -40007,
            Self::Buffer { .. } | Self::Utf8 => -40008,
            Self::Base64(_) => -40010,
        }
    }
}

/// Which padding [`MsgCrypt::decrypt`] accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// PKCS#7 to a multiple of 32 bytes, as the official samples produce.
    Block32,
    /// Also PKCS#7 to a multiple of 16 (1 to 32 pad bytes): what the official Node SDK accepts.
    Lenient,
}

/// A decrypted message and the receiveid that followed it (`""` for intelligent robots).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decrypted {
    pub message: String,
    pub receive_id: String,
}

/// The Token and key of one robot.
#[derive(Clone)]
pub struct MsgCrypt {
    token: String,
    key: [u8; 32],
}

impl std::fmt::Debug for MsgCrypt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsgCrypt").finish_non_exhaustive()
    }
}

impl MsgCrypt {
    /// The crypto of a robot with this Token and EncodingAESKey.
    pub fn new(token: &str, encoding_aes_key: &str) -> Result<Self, CryptoError> {
        if encoding_aes_key.len() != ENCODING_AES_KEY_LEN {
            return Err(CryptoError::AesKey);
        }
        let key = KEY_BASE64
            .decode(format!("{encoding_aes_key}="))
            .map_err(|_| CryptoError::AesKey)?;
        let key: [u8; 32] = key.try_into().map_err(|_| CryptoError::AesKey)?;
        Ok(Self {
            token: token.to_owned(),
            key,
        })
    }

    /// The signature of `encrypt` at `timestamp` with `nonce`.
    pub fn signature(&self, timestamp: &str, nonce: &str, encrypt: &str) -> String {
        signature(&self.token, timestamp, nonce, encrypt)
    }

    /// Check a signature (in constant time).
    pub fn verify(&self, signature: &str, timestamp: &str, nonce: &str, encrypt: &str) -> Result<(), CryptoError> {
        let expected = self.signature(timestamp, nonce, encrypt);
        let same = expected.len() == signature.len()
            && expected
                .bytes()
                .zip(signature.bytes())
                .fold(0u8, |diff, (a, b)| diff | (a ^ b))
                == 0;
        if same {
            Ok(())
        } else {
            Err(CryptoError::Signature)
        }
    }

    /// Encrypt `message` for `receive_id` with a fresh random prefix (16 ASCII digits, as the official
    /// sample makes it).
    pub fn encrypt(&self, message: &str, receive_id: &str) -> Result<String, CryptoError> {
        let mut rng = rand::rng();
        let random: [u8; 16] = std::array::from_fn(|_| b'0' + rng.random_range(0..10u8));
        self.encrypt_with(random, message, receive_id)
    }

    /// Encrypt with a given random prefix (for known-answer tests).
    pub fn encrypt_with(&self, random: [u8; 16], message: &str, receive_id: &str) -> Result<String, CryptoError> {
        let len = u32::try_from(message.len()).map_err(|_| CryptoError::TooLong(message.len()))?;
        let mut plain = Vec::with_capacity(20 + message.len() + receive_id.len() + PAD_BLOCK);
        plain.extend_from_slice(&random);
        plain.extend_from_slice(&len.to_be_bytes());
        plain.extend_from_slice(message.as_bytes());
        plain.extend_from_slice(receive_id.as_bytes());
        let pad = PAD_BLOCK - plain.len() % PAD_BLOCK;
        plain.resize(plain.len() + pad, pad as u8);
        let cipher = cbc::Encryptor::<Aes256>::new(&self.key.into(), &self.iv().into())
            .encrypt_padded_vec_mut::<NoPadding>(&plain);
        Ok(STANDARD.encode(cipher))
    }

    /// Decrypt a base64 ciphertext into its message and receiveid.
    pub fn decrypt(&self, encrypt: &str, padding: Padding) -> Result<Decrypted, CryptoError> {
        let data = STANDARD
            .decode(encrypt.trim())
            .map_err(|err| CryptoError::Base64(err.to_string()))?;
        if data.is_empty() || data.len() % 16 != 0 {
            return Err(CryptoError::CipherLength(data.len()));
        }
        let plain = cbc::Decryptor::<Aes256>::new(&self.key.into(), &self.iv().into())
            .decrypt_padded_vec_mut::<NoPadding>(&data)
            .map_err(|_| CryptoError::CipherLength(data.len()))?;
        let block = match padding {
            Padding::Block32 => PAD_BLOCK,
            Padding::Lenient => 16,
        };
        let pad = usize::from(*plain.last().expect("a whole block or more"));
        let padded = (1..=PAD_BLOCK).contains(&pad)
            && pad <= plain.len()
            && plain.len() % block == 0
            && plain[plain.len() - pad..].iter().all(|b| usize::from(*b) == pad);
        if !padded {
            return Err(CryptoError::Padding { block });
        }
        let body = &plain[..plain.len() - pad];
        if body.len() < 20 {
            return Err(CryptoError::Buffer {
                needed: 20,
                actual: body.len(),
            });
        }
        let len = u32::from_be_bytes([body[16], body[17], body[18], body[19]]) as usize;
        let needed = 20usize.saturating_add(len);
        if needed > body.len() {
            return Err(CryptoError::Buffer {
                needed,
                actual: body.len(),
            });
        }
        let message = std::str::from_utf8(&body[20..needed]).map_err(|_| CryptoError::Utf8)?;
        let receive_id = std::str::from_utf8(&body[needed..]).map_err(|_| CryptoError::Utf8)?;
        Ok(Decrypted {
            message: message.to_owned(),
            receive_id: receive_id.to_owned(),
        })
    }

    /// Decrypt and require `receive_id` (the empty string for intelligent robots).
    pub fn decrypt_for(&self, encrypt: &str, receive_id: &str, padding: Padding) -> Result<String, CryptoError> {
        let plain = self.decrypt(encrypt, padding)?;
        if plain.receive_id != receive_id {
            return Err(CryptoError::ReceiveId {
                found: plain.receive_id,
                expected: receive_id.to_owned(),
            });
        }
        Ok(plain.message)
    }

    fn iv(&self) -> [u8; 16] {
        let mut iv = [0u8; 16];
        iv.copy_from_slice(&self.key[..16]);
        iv
    }
}

/// `msg_signature`: SHA-1 (lower-case hex) of the four strings sorted and joined.
pub fn signature(token: &str, timestamp: &str, nonce: &str, encrypt: &str) -> String {
    let mut parts = [token, timestamp, nonce, encrypt];
    parts.sort_unstable();
    let mut sha = Sha1::new();
    for part in parts {
        sha.update(part.as_bytes());
    }
    sha.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
