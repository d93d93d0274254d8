//! [`export`]: a GGUF model written back out as a Hugging Face checkpoint — f16 `model.safetensors`,
//! `config.json`, `tokenizer.json`, `tokenizer_config.json` — with llama.cpp's Q/K permutation undone, so
//! that [`crate::quantize`] (or llama.cpp's `convert_hf_to_gguf.py`) turns it back into an equivalent GGUF.

use std::borrow::Cow;
use std::cell::RefCell;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, View};

use crate::gguf_reader::GgufFile;
use crate::hparams::{hf_name, unpermute_rows, Hyperparams};
use crate::{checkpoint, progress, vocab, QuantizeError};

/// What to export and where.
#[derive(Debug, Clone)]
pub struct ExportConfig {
    /// The GGUF model.
    pub model: PathBuf,
    /// The directory to write (created if missing).
    pub output_dir: PathBuf,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct ExportReport {
    /// Tensors written to `model.safetensors`.
    pub tensors: usize,
    /// Size of `model.safetensors`.
    pub bytes: u64,
}

/// One tensor, dequantized to f16 only when the safetensors writer asks for its bytes.
struct LazyTensor<'a> {
    gguf_name: String,
    shape: Vec<usize>,
    permute: Option<usize>,
    hp: &'a Hyperparams,
    file: &'a RefCell<GgufFile>,
    failure: &'a RefCell<Option<QuantizeError>>,
    bar: &'a indicatif::ProgressBar,
}

impl LazyTensor<'_> {
    fn bytes(&self) -> Result<Vec<u8>, QuantizeError> {
        let rows = if self.shape.len() == 1 { 1 } else { self.shape[0] };
        let mut data = self.file.borrow_mut().read_rows(&self.gguf_name, 0..rows)?;
        if self.permute.is_some() {
            let hd = self.hp.head_dim;
            data = unpermute_rows(&data, rows / hd, hd, self.shape[1]);
        }
        self.bar.inc(data.len() as u64);
        Ok(data
            .iter()
            .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
            .collect())
    }
}

impl View for LazyTensor<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F16
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        // `View::data` cannot fail: keep the first error and write zeros; `export` reports it and deletes the file.
        match self.bytes() {
            Ok(b) => Cow::Owned(b),
            Err(e) => {
                self.failure.borrow_mut().get_or_insert(e);
                Cow::Owned(vec![0u8; self.data_len()])
            }
        }
    }

    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * 2
    }
}

/// Export `config.model` to `config.output_dir`.
pub fn export(config: &ExportConfig) -> Result<ExportReport, QuantizeError> {
    let gguf = GgufFile::open(&config.model)?;
    let hp = gguf.hparams()?;
    let (tokenizer, tokenizer_config, bos, eos) = vocab::hf_from_gguf(&config.model, gguf.metadata())?;
    let dir = &config.output_dir;
    std::fs::create_dir_all(dir).map_err(QuantizeError::io(dir))?;
    write_json(&dir.join("config.json"), &checkpoint::config_json(&hp, bos, eos))?;
    write_json(&dir.join("tokenizer.json"), &tokenizer)?;
    write_json(&dir.join("tokenizer_config.json"), &tokenizer_config)?;

    let infos = gguf.tensor_infos();
    let mut named = Vec::with_capacity(infos.len());
    for info in &infos {
        let hf = hf_name(&info.name).ok_or_else(|| QuantizeError::UnexpectedTensor {
            path: config.model.clone(),
            tensor: info.name.clone(),
            architecture: hp.gguf_arch().into(),
        })?;
        named.push((hf, info));
    }
    let total: u64 = infos.iter().map(|i| i.shape.iter().product::<usize>() as u64).sum();
    let bar = progress::bar(total, config.progress);
    let file = RefCell::new(gguf);
    let failure = RefCell::new(None);
    let tensors: Vec<(String, LazyTensor<'_>)> = named
        .into_iter()
        .map(|(hf, info)| {
            let lazy = LazyTensor {
                gguf_name: info.name.clone(),
                shape: info.shape.clone(),
                permute: hp.permutation(&info.name),
                hp: &hp,
                file: &file,
                failure: &failure,
                bar: &bar,
            };
            (hf, lazy)
        })
        .collect();
    let n = tensors.len();
    let out = dir.join("model.safetensors");
    let metadata = Some([("format".to_string(), "pt".to_string())].into_iter().collect());
    safetensors::serialize_to_file(tensors, metadata, &out).map_err(|e| QuantizeError::InvalidSafetensors {
        path: out.clone(),
        reason: e.to_string(),
    })?;
    bar.finish_and_clear();
    if let Some(e) = failure.into_inner() {
        let _ = std::fs::remove_file(&out);
        return Err(e);
    }
    let bytes = std::fs::metadata(&out).map_err(QuantizeError::io(&out))?.len();
    tracing::info!(model = %config.model.display(), dir = %dir.display(), tensors = n, bytes, "exported");
    Ok(ExportReport { tensors: n, bytes })
}

fn write_json(path: &Path, json: &serde_json::Value) -> Result<(), QuantizeError> {
    let text = serde_json::to_string_pretty(json).map_err(|source| QuantizeError::Json {
        path: path.into(),
        source,
    })?;
    std::fs::write(path, text).map_err(QuantizeError::io(path))
}
