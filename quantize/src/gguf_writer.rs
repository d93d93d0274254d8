//! [`GgufWriter`]: a streaming GGUF v3 writer.
//!
//! Every tensor's offset follows from its shape and type alone, so the whole header (metadata, tensor
//! infos, offsets) is written first, and then each tensor's data in turn as it is produced. Only one tensor
//! (or one chunk of one) is ever in memory, which is what lets a 7B checkpoint quantize in a few GB.
//!
//! ```text
//! magic "GGUF" | version 3 | n_tensors u64 | n_kv u64 | kv pairs | tensor infos | pad to 32 | data, each padded to 32
//! ```

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::GgmlDType;

use crate::QuantizeError;

/// Data alignment: llama.cpp's default `general.alignment`.
pub const ALIGNMENT: u64 = 32;

/// One tensor of the file to be written: its GGUF name, shape in row-major (candle) order, and type.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// GGUF tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Row-major shape, e.g. `[out, in]`; written reversed, as GGUF stores `ne[0]` first.
    pub shape: Vec<usize>,
    /// Storage type.
    pub dtype: GgmlDType,
}

impl TensorInfo {
    /// Bytes of data: whole blocks of the type along the rows.
    pub fn size_in_bytes(&self) -> u64 {
        let elems: usize = self.shape.iter().product();
        (elems / self.dtype.block_size() * self.dtype.type_size()) as u64
    }

    /// Bytes of one row (the last dimension).
    pub fn row_bytes(&self) -> usize {
        let cols = *self.shape.last().unwrap_or(&1);
        cols / self.dtype.block_size() * self.dtype.type_size()
    }
}

/// The GGUF type code of a tensor type (ggml's `enum ggml_type`).
pub fn dtype_code(dtype: GgmlDType) -> u32 {
    match dtype {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q5_0 => 6,
        GgmlDType::Q5_1 => 7,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q8_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11,
        GgmlDType::Q4K => 12,
        GgmlDType::Q5K => 13,
        GgmlDType::Q6K => 14,
        GgmlDType::Q8K => 15,
        GgmlDType::BF16 => 30,
    }
}

/// Writes one GGUF file: header up front, then tensors in the order they were planned.
pub struct GgufWriter {
    path: PathBuf,
    out: BufWriter<File>,
    tensors: Vec<TensorInfo>,
    /// Index of the tensor whose data is being written.
    current: usize,
    /// Bytes of the current tensor written so far.
    written: u64,
}

impl GgufWriter {
    /// Create `path` and write the header for `metadata` and `tensors`. Tensor data must then be written
    /// with [`GgufWriter::write_data`] in exactly this order, and the file closed with [`GgufWriter::finish`].
    pub fn create(path: &Path, metadata: &[(String, Value)], tensors: Vec<TensorInfo>) -> Result<Self, QuantizeError> {
        let file = File::create(path).map_err(QuantizeError::io(path))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let mut header = Vec::new();
        header.extend_from_slice(b"GGUF");
        header.extend_from_slice(&3u32.to_le_bytes());
        header.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        header.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (key, value) in metadata {
            write_string(&mut header, key);
            write_value(&mut header, value, true).map_err(|reason| QuantizeError::Gguf {
                path: path.to_path_buf(),
                reason: format!("metadata key `{key}`: {reason}"),
            })?;
        }
        let mut offset = 0u64;
        for t in &tensors {
            let cols = *t.shape.last().unwrap_or(&1);
            if cols % t.dtype.block_size() != 0 {
                return Err(QuantizeError::Gguf {
                    path: path.to_path_buf(),
                    reason: format!(
                        "tensor `{}`: rows of {cols} values are not a whole number of {:?} blocks of {}",
                        t.name,
                        t.dtype,
                        t.dtype.block_size()
                    ),
                });
            }
            write_string(&mut header, &t.name);
            header.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
            for &d in t.shape.iter().rev() {
                header.extend_from_slice(&(d as u64).to_le_bytes());
            }
            header.extend_from_slice(&dtype_code(t.dtype).to_le_bytes());
            header.extend_from_slice(&offset.to_le_bytes());
            offset += padded(t.size_in_bytes());
        }
        header.resize(padded(header.len() as u64) as usize, 0);
        out.write_all(&header).map_err(QuantizeError::io(path))?;
        Ok(Self {
            path: path.to_path_buf(),
            out,
            tensors,
            current: 0,
            written: 0,
        })
    }

    /// The tensors planned for this file, in write order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// Append `data` to the current tensor; `name` must be the tensor the plan expects next. A tensor may be
    /// written in several calls (row chunks); it is complete once its planned size is reached.
    pub fn write_data(&mut self, name: &str, data: &[u8]) -> Result<(), QuantizeError> {
        let Some(info) = self.tensors.get(self.current) else {
            return Err(self.error(format!("tensor `{name}` was not planned (all tensors are written)")));
        };
        if info.name != name {
            return Err(self.error(format!("tensor `{name}` written where `{}` was planned", info.name)));
        }
        let size = info.size_in_bytes();
        if self.written + data.len() as u64 > size {
            return Err(self.error(format!(
                "tensor `{name}` gets {} bytes, more than its planned {size}",
                self.written + data.len() as u64
            )));
        }
        self.out.write_all(data).map_err(QuantizeError::io(&self.path))?;
        self.written += data.len() as u64;
        if self.written == size {
            let pad = padded(size) - size;
            self.out
                .write_all(&vec![0u8; pad as usize])
                .map_err(QuantizeError::io(&self.path))?;
            self.current += 1;
            self.written = 0;
        }
        Ok(())
    }

    /// Check every tensor was written in full and flush the file.
    pub fn finish(mut self) -> Result<(), QuantizeError> {
        if self.current != self.tensors.len() {
            let name = self.tensors[self.current].name.clone();
            return Err(self.error(format!("tensor `{name}` and those after it were never written")));
        }
        self.out.flush().map_err(QuantizeError::io(&self.path))?;
        self.out.get_ref().sync_all().map_err(QuantizeError::io(&self.path))
    }

    fn error(&self, reason: String) -> QuantizeError {
        QuantizeError::Gguf {
            path: self.path.clone(),
            reason,
        }
    }
}

fn padded(n: u64) -> u64 {
    n.div_ceil(ALIGNMENT) * ALIGNMENT
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// GGUF value type codes (`enum gguf_type`).
fn value_code(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

/// Write `v`, preceded by its type code when `with_type` (array elements share one code).
fn write_value(out: &mut Vec<u8>, v: &Value, with_type: bool) -> Result<(), String> {
    if with_type {
        out.extend_from_slice(&value_code(v).to_le_bytes());
    }
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            let code = items.first().map(value_code).unwrap_or(4);
            if items.iter().any(|i| value_code(i) != code) {
                return Err("an array mixes value types".into());
            }
            out.extend_from_slice(&code.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                write_value(out, item, false)?;
            }
        }
    }
    Ok(())
}
