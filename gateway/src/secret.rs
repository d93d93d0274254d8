//! [`Secret`]: a string that never shows in logs, for API keys, tokens and app secrets.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A secret string: deserialized as a plain string, never shown by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl Secret {
    /// The secret itself, for comparing or sending it; never log this.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}
