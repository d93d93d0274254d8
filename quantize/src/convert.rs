//! [`quantize`]: a Hugging Face checkpoint or a GGUF file in, a quantized GGUF file out, one tensor (and one
//! chunk of rows) at a time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rayon::prelude::*;

use crate::checkpoint::Checkpoint;
use crate::gguf_reader::GgufFile;
use crate::gguf_writer::{GgufWriter, TensorInfo};
use crate::recipe::{QuantType, Recipe};
use crate::{progress, vocab, QuantizeError};

/// About this many values are converted per chunk: 64 MB of f32, so several chunks in flight stay small.
const CHUNK_VALUES: usize = 16 << 20;

/// What to quantize and where to write it.
#[derive(Debug, Clone)]
pub struct QuantizeConfig {
    /// A Hugging Face checkpoint directory, or a `.gguf` file to requantize.
    pub input: PathBuf,
    /// The GGUF file to write.
    pub output: PathBuf,
    /// The whole-file target type.
    pub quant: QuantType,
    /// Show a progress bar on stderr (when it is a terminal).
    pub progress: bool,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct QuantizeReport {
    /// Tensors written.
    pub tensors: usize,
    /// File size in bytes.
    pub bytes: u64,
    /// How many tensors got each type, e.g. `{"Q4K": 120, "Q6K": 29, "F32": 113}`.
    pub types: BTreeMap<String, usize>,
}

/// Where tensors come from.
enum Source {
    Checkpoint(Checkpoint),
    Gguf(GgufFile),
}

impl Source {
    fn read_rows(&mut self, name: &str, rows: std::ops::Range<usize>) -> Result<Vec<f32>, QuantizeError> {
        match self {
            Self::Checkpoint(c) => c.read_rows(name, rows),
            Self::Gguf(g) => g.read_rows(name, rows),
        }
    }

    fn row_group(&self, name: &str) -> usize {
        match self {
            Self::Checkpoint(c) => c.row_group(name),
            Self::Gguf(_) => 1,
        }
    }
}

/// Quantize `config.input` into `config.output`.
pub fn quantize(config: &QuantizeConfig) -> Result<QuantizeReport, QuantizeError> {
    let input = &config.input;
    let (mut source, hp, metadata, tensors) = if input.is_dir() {
        let ckpt = Checkpoint::open(input)?;
        let hp = ckpt.hparams().clone();
        let name = input
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        let mut md = vec![
            ("general.architecture".to_string(), Value::String(hp.gguf_arch().into())),
            ("general.name".to_string(), Value::String(name)),
        ];
        md.extend(hp.gguf_metadata());
        md.extend(vocab::gguf_from_hf(input, hp.vocab_size)?);
        let tensors = ckpt.tensors();
        (Source::Checkpoint(ckpt), hp, md, tensors)
    } else {
        let gguf = GgufFile::open(input)?;
        let hp = gguf.hparams()?;
        let mut md: Vec<(String, Value)> = gguf
            .metadata()
            .iter()
            .filter(|(k, _)| {
                !matches!(
                    k.as_str(),
                    "general.file_type" | "general.quantization_version" | "general.alignment"
                )
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        md.sort_by(|a, b| a.0.cmp(&b.0));
        let tensors = gguf.tensor_infos().into_iter().map(|t| (t.name, t.shape)).collect();
        (Source::Gguf(gguf), hp, md, tensors)
    };
    let mut metadata = metadata;
    metadata.push(("general.file_type".into(), Value::U32(config.quant.file_type())));
    metadata.push(("general.quantization_version".into(), Value::U32(2)));

    let recipe = Recipe {
        quant: config.quant,
        n_layers: hp.block_count,
        tied_embeddings: hp.tied_embeddings,
    };
    let plan: Vec<TensorInfo> = tensors
        .into_iter()
        .map(|(name, shape)| TensorInfo {
            dtype: recipe.tensor_type(&name, &shape),
            name,
            shape,
        })
        .collect();
    let mut types = BTreeMap::new();
    for t in &plan {
        *types.entry(format!("{:?}", t.dtype)).or_insert(0) += 1;
    }
    tracing::info!(input = %input.display(), output = %config.output.display(), quant = %config.quant, ?types, "quantizing");

    let total: u64 = plan.iter().map(|t| t.shape.iter().product::<usize>() as u64).sum();
    let bar = progress::bar(total, config.progress);
    let mut writer = GgufWriter::create(&config.output, &metadata, plan.clone())?;
    for info in &plan {
        bar.set_message(info.name.clone());
        write_tensor(&mut source, info, &mut writer)?;
        bar.inc(info.shape.iter().product::<usize>() as u64);
        tracing::debug!(tensor = %info.name, dtype = ?info.dtype, shape = ?info.shape, "written");
    }
    writer.finish()?;
    bar.finish_and_clear();
    let bytes = std::fs::metadata(&config.output)
        .map_err(QuantizeError::io(&config.output))?
        .len();
    Ok(QuantizeReport {
        tensors: plan.len(),
        bytes,
        types,
    })
}

/// Stream one tensor from `source` into `writer` in chunks of whole rows, converting chunks in parallel.
fn write_tensor(source: &mut Source, info: &TensorInfo, writer: &mut GgufWriter) -> Result<(), QuantizeError> {
    let cols = *info.shape.last().expect("tensors have at least one dimension");
    let rows: usize = info.shape[..info.shape.len() - 1].iter().product();
    // A GGUF tensor already in the target type is copied as is: requantizing would only lose precision.
    if let Source::Gguf(g) = source {
        let (dtype, raw) = g.read_raw(&info.name, 0..0)?;
        drop(raw);
        if dtype == info.dtype {
            let step = (CHUNK_VALUES / cols).max(1);
            for start in (0..rows).step_by(step) {
                let (_, raw) = g.read_raw(&info.name, start..(start + step).min(rows))?;
                writer.write_data(&info.name, &raw)?;
            }
            return Ok(());
        }
    }
    let group = source.row_group(&info.name);
    let step = ((CHUNK_VALUES / cols) / group * group).max(group);
    let ranges: Vec<std::ops::Range<usize>> = (0..rows).step_by(step).map(|s| s..(s + step).min(rows)).collect();
    for batch in ranges.chunks(rayon::current_num_threads().max(1)) {
        let inputs = batch
            .iter()
            .map(|r| source.read_rows(&info.name, r.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        let outputs = inputs
            .into_par_iter()
            .zip(batch.par_iter())
            .map(|(data, r)| encode(&info.name, data, r.len(), cols, info.dtype))
            .collect::<Result<Vec<_>, _>>()?;
        for out in outputs {
            writer.write_data(&info.name, &out)?;
        }
    }
    Ok(())
}

/// `rows × cols` values in `dtype`'s GGUF byte layout.
pub(crate) fn encode(
    name: &str,
    data: Vec<f32>,
    rows: usize,
    cols: usize,
    dtype: GgmlDType,
) -> Result<Vec<u8>, QuantizeError> {
    Ok(match dtype {
        GgmlDType::F32 => data.iter().flat_map(|x| x.to_le_bytes()).collect(),
        GgmlDType::F16 => data
            .iter()
            .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
            .collect(),
        _ => {
            let candle = |source| QuantizeError::Candle {
                tensor: name.into(),
                source,
            };
            let t = Tensor::from_vec(data, (rows, cols), &Device::Cpu).map_err(candle)?;
            QTensor::quantize(&t, dtype)
                .map_err(candle)?
                .data()
                .map_err(candle)?
                .into_owned()
        }
    })
}

/// Whether `path` names a GGUF file (by extension) rather than a checkpoint directory.
pub fn is_gguf(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}
