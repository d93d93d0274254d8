//! [`Gguf`]: one open GGUF file with typed, error-naming getters for metadata and tensors.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::quantized::ggml_file::qtensor_from_ggml;
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
    /// Cap on the positions rotary tables are built for (see [`Gguf::set_max_positions`]).
    max_positions: usize,
}

impl Gguf {
    /// Open `path`, parse its header and check it: `general.alignment` a power of two, every tensor of a
    /// supported type with a shape whose size does not overflow, rows of whole blocks, its data aligned and
    /// inside the file. Nothing is loaded yet.
    pub fn open(path: &Path, device: &Device) -> Result<Self, ModelError> {
        let io_err = |source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        let file_len = file.metadata().map_err(io_err)?.len();
        let mut reader = BufReader::new(file);
        // Our checked scan first: candle's parser panics or wraps on some malformed headers.
        crate::gguf_header::scan(&mut reader, path, file_len)?;
        reader.seek(SeekFrom::Start(0)).map_err(io_err)?;
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
        }
        Ok(Self {
            path: path.to_path_buf(),
            content,
            reader,
            device: device.clone(),
            max_positions: usize::MAX,
        })
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Build rotary tables for at most `n` positions, whatever context length the file claims: the engine
    /// passes the context it will serve (capped by its configuration and KV pool).
    pub fn set_max_positions(&mut self, n: usize) {
        self.max_positions = n;
    }

    /// Positions to build rotary tables for: the model's `context_length`, capped by
    /// [`Gguf::set_max_positions`].
    pub fn rope_positions(&self, context_length: usize) -> usize {
        context_length.min(self.max_positions)
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
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor { name: name.to_string() })?;
        let dtype = info.ggml_dtype;
        // `Gguf::open` checked that this neither overflows nor runs past the end of the file.
        let size = info.shape.elem_count() / dtype.block_size() * dtype.type_size();
        let io_err = |source| ModelError::Io {
            path: self.path.clone(),
            source,
        };
        let mut raw = vec![0u8; size];
        self.reader
            .seek(SeekFrom::Start(self.content.tensor_data_offset + info.offset))
            .map_err(io_err)?;
        self.reader.read_exact(&mut raw).map_err(io_err)?;
        check_finite(name, dtype, &raw)?;
        Ok(qtensor_from_ggml(dtype, &raw, shape, &self.device)?)
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

    /// The file's type as llama.cpp names it from `general.file_type` (e.g. "Q4_K_M", which mixes Q4_K, Q5_0,
    /// Q6_K and Q8_0 tensors); without the key (or with an id llama.cpp does not define), the most common
    /// tensor type, [`Gguf::dominant_quantization`].
    pub fn file_type(&self) -> String {
        match self.metadata_usize("general.file_type").ok().and_then(file_type_name) {
            Some(name) => name.to_string(),
            None => self.dominant_quantization(),
        }
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

/// llama.cpp's `llama_ftype` names (`general.file_type`), without the `MOSTLY_` prefix.
fn file_type_name(id: usize) -> Option<&'static str> {
    Some(match id {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        _ => return None,
    })
}

/// Byte offsets, inside one block of `dtype`, of the f16 scales (`d`, and `dmin` or `m` where the type has
/// one), with the block's size. Every other byte of a quantized block is a small integer, so a block
/// whose scales are finite dequantizes to finite values: checking the scales checks the whole tensor.
fn scale_offsets(dtype: GgmlDType) -> &'static [usize] {
    match dtype {
        GgmlDType::Q4_0 | GgmlDType::Q5_0 | GgmlDType::Q8_0 => &[0],
        GgmlDType::Q4_1 | GgmlDType::Q5_1 | GgmlDType::Q4K | GgmlDType::Q5K | GgmlDType::Q8_1 => &[0, 2],
        // Q2_K: scales[16], qs[64], d, dmin. Q3_K: hmask[32], qs[64], scales[12], d. Q6_K: ql, qh, scales, d.
        GgmlDType::Q2K => &[80, 82],
        GgmlDType::Q3K => &[108],
        GgmlDType::Q6K => &[208],
        _ => &[],
    }
}

/// Refuse a tensor holding NaN or infinite values: every value of F32, F16 and BF16 tensors, and every
/// block scale of quantized ones (see [`scale_offsets`]; this reads 2 or 4 bytes per block of 18 to 210).
fn check_finite(name: &str, dtype: GgmlDType, raw: &[u8]) -> Result<(), ModelError> {
    // f16 and bf16 are not finite when all exponent bits are set.
    let f16_bad = |b: &[u8]| u16::from_le_bytes([b[0], b[1]]) & 0x7c00 == 0x7c00;
    let bad = match dtype {
        GgmlDType::F32 => raw
            .chunks_exact(4)
            .position(|b| !f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite()),
        GgmlDType::F16 => raw.chunks_exact(2).position(f16_bad),
        GgmlDType::BF16 => raw
            .chunks_exact(2)
            .position(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7f80 == 0x7f80),
        _ => {
            let offsets = scale_offsets(dtype);
            raw.chunks_exact(dtype.type_size())
                .position(|block| offsets.iter().any(|&o| f16_bad(&block[o..o + 2])))
        }
    };
    match bad {
        None => Ok(()),
        Some(i) => Err(ModelError::InvalidTensor {
            name: name.to_string(),
            reason: match dtype {
                GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => {
                    format!("holds a NaN or infinite value (element {i})")
                }
                _ => format!("holds a NaN or infinite block scale (block {i})"),
            },
        }),
    }
}
