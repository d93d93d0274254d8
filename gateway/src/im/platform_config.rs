//! What every platform's config section shares: its error, which names the platform and the key, reading the
//! section from a TOML file of its own, and a secret read from a file (`*_file` keys, as systemd and
//! Kubernetes credentials provide them).

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::secret::Secret;

/// A platform configuration that cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid {platform} config: {source}")]
    Parse {
        platform: &'static str,
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("{platform} `{field}` is required")]
    Missing {
        platform: &'static str,
        field: &'static str,
    },
    #[error("{platform} `{field}` must be {rule}")]
    Invalid {
        platform: &'static str,
        field: &'static str,
        rule: &'static str,
    },
    #[error("{platform} `{file_field}` must be set without `{field}`: keep one")]
    SecretTwice {
        platform: &'static str,
        field: &'static str,
        file_field: &'static str,
    },
    #[error("{platform} `{field}`: cannot read {path}: {source}")]
    SecretFile {
        platform: &'static str,
        field: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// `platform`'s section read from the TOML file `path` (unknown keys are an error naming them).
pub fn read_file<T: DeserializeOwned>(platform: &'static str, path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        platform,
        path: path.to_owned(),
        source: Box::new(source),
    })
}

/// Set `secret` from the file `file` names (trimmed), when it names one; `secret` set as well is an error.
/// `fields` are the two keys' names (`app_secret`, `app_secret_file`), for the messages.
pub fn secret_from_file(
    platform: &'static str,
    fields: (&'static str, &'static str),
    secret: &mut Secret,
    file: Option<&Path>,
) -> Result<(), ConfigError> {
    let Some(path) = file else {
        return Ok(());
    };
    let (key, file_key) = fields;
    if !secret.expose().is_empty() {
        return Err(ConfigError::SecretTwice {
            platform,
            field: key,
            file_field: file_key,
        });
    }
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::SecretFile {
        platform,
        field: file_key,
        path: path.to_owned(),
        source,
    })?;
    *secret = Secret(text.trim().to_owned());
    Ok(())
}
