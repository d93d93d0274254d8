//! `hearth pull`: fetch a model preset (checked against its SHA-256), list the presets, or download a file
//! from a Hugging Face repository. The file's path goes to stdout, so scripts can capture it.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use gateway::model_path::{self, Check};
use gateway::presets::{Preset, PRESETS};

use crate::cli::PullArgs;

/// `hearth pull`.
pub fn pull(args: PullArgs) -> anyhow::Result<ExitCode> {
    if args.list {
        return list();
    }
    if let (Some(repo), Some(file)) = (&args.repo, &args.file) {
        return pull_hf(repo, file, &args.revision);
    }
    let preset = match &args.preset {
        Some(name) => Preset::find(name)
            .with_context(|| format!("no preset is called {name:?}; the presets are {}", Preset::names()))?,
        None => Preset::default_preset(),
    };
    // An explicit pull always hashes the whole file: a damaged one is refused and fetched again.
    let path = model_path::ensure(preset, Check::Full)?;
    engine::inspect_model(&path)
        .with_context(|| format!("fetched {}, but it is not a model hearth runs", path.display()))?;
    println!("{}", path.display());
    Ok(ExitCode::SUCCESS)
}

/// `hearth pull --list`: one block per preset. Needs no network.
fn list() -> anyhow::Result<ExitCode> {
    let dir = model_path::models_dir()?;
    println!("Model presets (fetched into {}):", dir.display());
    for preset in PRESETS {
        let path = dir.join(preset.file);
        let here = if path.is_file() {
            format!("fetched: {}", path.display())
        } else {
            format!("not fetched (hearth pull --preset {})", preset.name)
        };
        let default = if preset.is_default() { " (default)" } else { "" };
        println!();
        println!("{}{default}", preset.name);
        println!("  model:     {}", preset.title);
        println!("  size:      {:.2} GB", preset.size_bytes as f64 / 1e9);
        println!("  languages: {}", preset.languages);
        println!("  license:   {}", preset.license);
        println!("  sha256:    {}", preset.sha256);
        println!("  file:      {here}");
    }
    Ok(ExitCode::SUCCESS)
}

/// hf-hub's cache (`$HF_HOME`, else ~/.cache/huggingface) keeps the file. `HF_TOKEN` authenticates for gated
/// repositories.
fn pull_hf(repo: &str, file: &str, revision: &str) -> anyhow::Result<ExitCode> {
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(std::io::stderr().is_terminal())
        .build()?;
    let hf_repo = hf_hub::Repo::with_revision(repo.to_owned(), hf_hub::RepoType::Model, revision.to_owned());
    let path: PathBuf = api
        .repo(hf_repo)
        .get(file)
        .with_context(|| format!("cannot download {file} from the Hugging Face repository {repo} ({revision})"))?;
    engine::inspect_model(&path)
        .with_context(|| format!("downloaded {}, but it is not a model hearth runs", path.display()))?;
    println!("{}", path.display());
    Ok(ExitCode::SUCCESS)
}
