//! Clock readings and random ids shared by the emulators.

use std::time::{SystemTime, UNIX_EPOCH};

use rand::Rng;

/// Epoch milliseconds now.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `len` random lowercase hex digits.
pub(crate) fn hex(len: usize) -> String {
    random_chars(len, 16)
}

/// `len` random decimal digits.
pub(crate) fn digits(len: usize) -> String {
    random_chars(len, 10)
}

fn random_chars(len: usize, radix: u32) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from_digit(rng.random_range(0..radix), radix).expect("digit below the radix"))
        .collect()
}
