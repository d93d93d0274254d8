//! [`Gguf`]: one open GGUF file with typed, error-naming getters for metadata and tensors.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::Device;

use crate::ModelError;

/// Tensor types the models run: everything Q4_K_M, Q4_0, Q4_1 and Q8_0 files contain, plus the other
/// k-quants candle implements.
pub const SUPPORTED_TENSOR_TYPES: &[GgmlDType] = &[
    GgmlDType::F32,
    GgmlDType::F16,
    GgmlDType::BF16,
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q8_0,
    GgmlDType::Q2K,
    GgmlDType::Q3K,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
];

/// An open GGUF file: parsed header, a reader for tensor data, and the device tensors are loaded onto.
pub struct Gguf {
    path: PathBuf,
    content: Content,
    reader: BufReader<File>,
    device: Device,
}

impl Gguf {
    /// Open `path`, parse its header and check it is whole: every tensor's data lies inside the file and
    /// every tensor type is supported. Nothing is loaded yet.
    pub fn open(path: &Path, device: &Device) -> Result<Self, ModelError> {
        let io_err = |source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        let file_len = file.metadata().map_err(io_err)?.len();
        let mut reader = BufReader::new(file);
        let content = Content::read(&mut reader).map_err(|e| ModelError::InvalidGguf {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        for (name, info) in &content.tensor_infos {
            if !SUPPORTED_TENSOR_TYPES.contains(&info.ggml_dtype) {
                return Err(ModelError::UnsupportedTensorType {
                    name: name.clone(),
                    dtype: format!("{:?}", info.ggml_dtype),
                    supported: SUPPORTED_TENSOR_TYPES
                        .iter()
                        .map(|t| format!("{t:?}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            let elems = info.shape.elem_count();
            let block = info.ggml_dtype.block_size();
            let size = (elems / block * info.ggml_dtype.type_size()) as u64;
            let end = content.tensor_data_offset + info.offset + size;
            if end > file_len {
                return Err(ModelError::Truncated {
                    path: path.to_path_buf(),
                    tensor: name.clone(),
                    needed: end,
                    actual: file_len,
                });
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            content,
            reader,
            device: device.clone(),
        })
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The device tensors are loaded onto.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Raw metadata value, or `MissingKey`.
    pub fn metadata(&self, key: &str) -> Result<&Value, ModelError> {
        self.content
            .metadata
            .get(key)
            .ok_or_else(|| ModelError::MissingKey { key: key.to_string() })
    }

    /// All metadata (the tokenizer reads its keys from here).
    pub fn metadata_map(&self) -> &std::collections::HashMap<String, Value> {
        &self.content.metadata
    }

    /// A string metadata value.
    pub fn metadata_str(&self, key: &str) -> Result<&str, ModelError> {
        self.metadata(key)?
            .to_string()
            .map(|s| s.as_str())
            .map_err(|e| invalid(key, e))
    }

    /// An integer metadata value of any integer width, as usize.
    pub fn metadata_usize(&self, key: &str) -> Result<usize, ModelError> {
        let v = self.metadata(key)?;
        let n = match v {
            Value::U8(x) => *x as u64,
            Value::U16(x) => *x as u64,
            Value::U32(x) => *x as u64,
            Value::U64(x) => *x,
            Value::I8(x) if *x >= 0 => *x as u64,
            Value::I16(x) if *x >= 0 => *x as u64,
            Value::I32(x) if *x >= 0 => *x as u64,
            Value::I64(x) if *x >= 0 => *x as u64,
            other => {
                return Err(invalid(
                    key,
                    format!("expected a non-negative integer, found {other:?}"),
                ))
            }
        };
        usize::try_from(n).map_err(|e| invalid(key, e))
    }

    /// A float metadata value (f32 or f64).
    pub fn metadata_f32(&self, key: &str) -> Result<f32, ModelError> {
        match self.metadata(key)? {
            Value::F32(x) => Ok(*x),
            Value::F64(x) => Ok(*x as f32),
            other => Err(invalid(key, format!("expected a float, found {other:?}"))),
        }
    }

    /// An optional float: `default` when the key is absent (the caller documents why that default).
    pub fn metadata_f32_or(&self, key: &str, default: f32) -> Result<f32, ModelError> {
        if self.content.metadata.contains_key(key) {
            self.metadata_f32(key)
        } else {
            Ok(default)
        }
    }

    /// An optional integer: `default` when the key is absent.
    pub fn metadata_usize_or(&self, key: &str, default: usize) -> Result<usize, ModelError> {
        if self.content.metadata.contains_key(key) {
            self.metadata_usize(key)
        } else {
            Ok(default)
        }
    }

    /// Whether the file has a tensor called `name`.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// Shape of tensor `name` as stored (GGUF order reversed to candle's row-major order).
    pub fn tensor_shape(&self, name: &str) -> Result<Vec<usize>, ModelError> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor { name: name.to_string() })?;
        Ok(info.shape.dims().to_vec())
    }

    /// Load tensor `name`, checking its shape when `expected` is given.
    pub fn tensor(&mut self, name: &str, expected: Option<&[usize]>) -> Result<QTensor, ModelError> {
        let shape = self.tensor_shape(name)?;
        if let Some(expected) = expected {
            if shape != expected {
                return Err(ModelError::Shape {
                    name: name.to_string(),
                    expected: expected.to_vec(),
                    actual: shape,
                });
            }
        }
        Ok(self.content.tensor(&mut self.reader, name, &self.device)?)
    }

    /// Load a weight matrix `[out, in]` for quantized matmuls.
    pub fn qmatmul(&mut self, name: &str, out_dim: usize, in_dim: usize) -> Result<QMatMul, ModelError> {
        let t = self.tensor(name, Some(&[out_dim, in_dim]))?;
        Ok(QMatMul::from_qtensor(t)?)
    }

    /// Load a vector (norm weights, biases) dequantized to f32.
    pub fn vector(&mut self, name: &str, len: usize) -> Result<candle_core::Tensor, ModelError> {
        let t = self.tensor(name, Some(&[len]))?;
        Ok(t.dequantize(&self.device)?)
    }

    /// The most common type among 2-D weight tensors, by element count, e.g. "Q4_K".
    pub fn dominant_quantization(&self) -> String {
        let mut counts: std::collections::HashMap<String, usize> = Default::default();
        for info in self.content.tensor_infos.values() {
            if info.shape.rank() == 2 {
                *counts
                    .entry(format!("{:?}", info.ggml_dtype).to_uppercase().replace("K", "_K"))
                    .or_default() += info.shape.elem_count();
            }
        }
        counts
            .into_iter()
            .max_by_key(|(_, n)| *n)
            .map(|(t, _)| t)
            .unwrap_or_else(|| "F32".into())
    }
}

fn invalid(key: &str, reason: impl ToString) -> ModelError {
    ModelError::InvalidKey {
        key: key.to_string(),
        reason: reason.to_string(),
    }
}
