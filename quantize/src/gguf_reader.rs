//! [`GgufFile`]: a GGUF model read tensor by tensor and row range by row range (dequantized to f32), for
//! requantization and export.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::GgmlDType;
use candle_core::Device;
use models::Architecture;

use crate::gguf_writer::TensorInfo;
use crate::hparams::Hyperparams;
use crate::QuantizeError;

/// An open GGUF file whose tensor data has been checked to lie inside the file.
pub struct GgufFile {
    path: PathBuf,
    content: Content,
    file: File,
}

impl GgufFile {
    /// Open and validate `path`.
    pub fn open(path: &Path) -> Result<Self, QuantizeError> {
        let mut file = File::open(path).map_err(QuantizeError::io(path))?;
        let len = file.metadata().map_err(QuantizeError::io(path))?.len();
        let content = Content::read(&mut file).map_err(|e| QuantizeError::Gguf {
            path: path.into(),
            reason: format!("not a valid GGUF file: {e}"),
        })?;
        let this = Self {
            path: path.into(),
            content,
            file,
        };
        for info in this.tensor_infos() {
            let end = this.content.tensor_data_offset + this.offset(&info.name) + info.size_in_bytes();
            if end > len {
                return Err(QuantizeError::Gguf {
                    path: path.into(),
                    reason: format!(
                        "truncated: tensor `{}` ends at byte {end}, but the file has {len}",
                        info.name
                    ),
                });
            }
        }
        Ok(this)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All metadata.
    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    /// Tensors in file (offset) order.
    pub fn tensor_infos(&self) -> Vec<TensorInfo> {
        let mut infos: Vec<(u64, TensorInfo)> = self
            .content
            .tensor_infos
            .iter()
            .map(|(name, i)| {
                (
                    i.offset,
                    TensorInfo {
                        name: name.clone(),
                        shape: i.shape.dims().to_vec(),
                        dtype: i.ggml_dtype,
                    },
                )
            })
            .collect();
        infos.sort_by_key(|(o, _)| *o);
        infos.into_iter().map(|(_, i)| i).collect()
    }

    fn offset(&self, name: &str) -> u64 {
        self.content.tensor_infos[name].offset
    }

    fn info(&self, name: &str) -> Result<TensorInfo, QuantizeError> {
        let i = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| QuantizeError::MissingTensor {
                path: self.path.clone(),
                tensor: name.into(),
            })?;
        Ok(TensorInfo {
            name: name.into(),
            shape: i.shape.dims().to_vec(),
            dtype: i.ggml_dtype,
        })
    }

    /// The raw bytes of rows `rows` of `name`, in its stored type.
    pub fn read_raw(
        &mut self,
        name: &str,
        rows: std::ops::Range<usize>,
    ) -> Result<(GgmlDType, Vec<u8>), QuantizeError> {
        let info = self.info(name)?;
        let row_bytes = info.row_bytes() as u64;
        let start = self.content.tensor_data_offset + self.offset(name) + rows.start as u64 * row_bytes;
        let mut buf = vec![0u8; (rows.len() as u64 * row_bytes) as usize];
        self.file
            .seek(SeekFrom::Start(start))
            .map_err(QuantizeError::io(&self.path))?;
        self.file.read_exact(&mut buf).map_err(QuantizeError::io(&self.path))?;
        Ok((info.dtype, buf))
    }

    /// Rows `rows` of `name` dequantized to f32 (a 1-D tensor is one row).
    pub fn read_rows(&mut self, name: &str, rows: std::ops::Range<usize>) -> Result<Vec<f32>, QuantizeError> {
        let info = self.info(name)?;
        let cols = *info.shape.last().unwrap_or(&1);
        let (dtype, raw) = self.read_raw(name, rows.clone())?;
        let candle = |source| QuantizeError::Candle {
            tensor: name.into(),
            source,
        };
        let q = qtensor_from_ggml(dtype, &raw, vec![rows.len(), cols], &Device::Cpu).map_err(candle)?;
        q.dequantize(&Device::Cpu)
            .map_err(candle)?
            .flatten_all()
            .map_err(candle)?
            .to_vec1::<f32>()
            .map_err(candle)
    }

    fn md_usize(&self, key: &str) -> Result<usize, QuantizeError> {
        let v = self
            .content
            .metadata
            .get(key)
            .ok_or_else(|| QuantizeError::MissingKey {
                path: self.path.clone(),
                key: key.into(),
            })?;
        v.to_u32()
            .map(|x| x as usize)
            .or_else(|_| v.to_u64().map(|x| x as usize))
            .or_else(|_| v.to_i32().map(|x| x as usize))
            .map_err(|e| QuantizeError::InvalidKey {
                path: self.path.clone(),
                key: key.into(),
                reason: e.to_string(),
            })
    }

    fn md_f32(&self, key: &str, default: Option<f32>) -> Result<f32, QuantizeError> {
        match (self.content.metadata.get(key), default) {
            (None, Some(d)) => Ok(d),
            (None, None) => Err(QuantizeError::MissingKey {
                path: self.path.clone(),
                key: key.into(),
            }),
            (Some(v), _) => {
                v.to_f32()
                    .or_else(|_| v.to_f64().map(|x| x as f32))
                    .map_err(|e| QuantizeError::InvalidKey {
                        path: self.path.clone(),
                        key: key.into(),
                        reason: e.to_string(),
                    })
            }
        }
    }

    /// The `general.architecture` string.
    pub fn architecture_name(&self) -> Result<String, QuantizeError> {
        let key = "general.architecture";
        let v = self
            .content
            .metadata
            .get(key)
            .ok_or_else(|| QuantizeError::MissingKey {
                path: self.path.clone(),
                key: key.into(),
            })?;
        v.to_string().cloned().map_err(|e| QuantizeError::InvalidKey {
            path: self.path.clone(),
            key: key.into(),
            reason: e.to_string(),
        })
    }

    /// The model's hyperparameters from its metadata and embedding shape.
    pub fn hparams(&self) -> Result<Hyperparams, QuantizeError> {
        let name = self.architecture_name()?;
        let architecture = Architecture::from_gguf_name(&name).map_err(|_| QuantizeError::UnsupportedArchitecture {
            path: self.path.clone(),
            architecture: name.clone(),
            supported: Architecture::SUPPORTED.join(", "),
        })?;
        let k = |s: &str| format!("{name}.{s}");
        let embedding_length = self.md_usize(&k("embedding_length"))?;
        let head_count = self.md_usize(&k("attention.head_count"))?;
        let head_count_kv = if self.content.metadata.contains_key(&k("attention.head_count_kv")) {
            self.md_usize(&k("attention.head_count_kv"))?
        } else {
            head_count
        };
        let head_dim = if self.content.metadata.contains_key(&k("attention.key_length")) {
            self.md_usize(&k("attention.key_length"))?
        } else {
            embedding_length / head_count.max(1)
        };
        let embd = self.info("token_embd.weight")?;
        Ok(Hyperparams {
            architecture,
            block_count: self.md_usize(&k("block_count"))?,
            embedding_length,
            feed_forward_length: self.md_usize(&k("feed_forward_length"))?,
            head_count,
            head_count_kv,
            head_dim,
            context_length: self.md_usize(&k("context_length"))?,
            rms_norm_eps: self.md_f32(&k("attention.layer_norm_rms_epsilon"), None)?,
            rope_theta: self.md_f32(&k("rope.freq_base"), Some(10_000.0))?,
            vocab_size: embd.shape[0],
            tied_embeddings: !self.content.tensor_infos.contains_key("output.weight"),
        })
    }
}
