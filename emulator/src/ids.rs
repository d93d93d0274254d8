//! Random ids and timestamps in the shapes the platforms stamp on what they hand out.

use std::time::{SystemTime, UNIX_EPOCH};

use rand::Rng;

/// Epoch milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `len` random lowercase hex digits.
pub fn hex(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from_digit(rng.random_range(0..16), 16).expect("digit below 16"))
        .collect()
}

/// A UUID-shaped random id (`8-4-4-4-12` hex).
pub fn uuid_like() -> String {
    format!("{}-{}-{}-{}-{}", hex(8), hex(4), hex(4), hex(4), hex(12))
}

/// `len` random decimal digits, the first not 0 (Feishu's numeric ids such as card ids).
pub fn digits(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|i| {
            let low = if i == 0 { 1 } else { 0 };
            char::from_digit(rng.random_range(low..10), 10).expect("digit below 10")
        })
        .collect()
}
