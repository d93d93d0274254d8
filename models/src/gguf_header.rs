//! A bounds-checked scan of a GGUF header, run before candle parses it.
//!
//! candle's `Content::read` trusts what it reads: `general.alignment = 0` divides by zero, tensor dimensions
//! whose product overflows wrap silently, and an unknown type id is reported without the tensor's name. This
//! scan walks the same bytes (metadata values are skipped, not kept) with checked arithmetic and turns each
//! of those into a [`ModelError`] that names the key or tensor, as llama.cpp's `gguf_init_from_file` refuses
//! them. Only a header that passes goes on to candle.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use candle_core::quantized::GgmlDType;

use crate::ModelError;

/// llama.cpp's `GGML_MAX_DIMS`.
const MAX_DIMS: u32 = 4;
/// Nesting depth of metadata arrays (candle's cap).
const MAX_VALUE_DEPTH: usize = 64;
/// Alignment when `general.alignment` is absent.
const DEFAULT_ALIGNMENT: u64 = 32;

/// The ggml type of a GGUF type id, or `None` for ids candle does not know.
pub(crate) fn dtype_from_id(id: u32) -> Option<GgmlDType> {
    Some(match id {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

struct Scanner<'a, R> {
    reader: &'a mut R,
    path: &'a Path,
    file_len: u64,
    /// 4 for GGUF v1 (u32 lengths), 8 after.
    len_size: u8,
}

impl<R: Read + Seek> Scanner<'_, R> {
    fn bad(&self, reason: impl Into<String>) -> ModelError {
        ModelError::InvalidGguf {
            path: self.path.to_path_buf(),
            reason: reason.into(),
        }
    }

    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], ModelError> {
        let mut buf = [0u8; N];
        self.reader
            .read_exact(&mut buf)
            .map_err(|e| self.bad(format!("the header ends early: {e}")))?;
        Ok(buf)
    }

    fn u32(&mut self) -> Result<u32, ModelError> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }

    fn u64(&mut self) -> Result<u64, ModelError> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }

    fn len(&mut self) -> Result<u64, ModelError> {
        if self.len_size == 4 {
            Ok(self.u32()? as u64)
        } else {
            self.u64()
        }
    }

    fn position(&mut self) -> Result<u64, ModelError> {
        self.reader
            .stream_position()
            .map_err(|e| self.bad(format!("cannot seek: {e}")))
    }

    /// Skip `n` bytes, refusing to go past the end of the file.
    fn skip(&mut self, n: u64) -> Result<(), ModelError> {
        let pos = self.position()?;
        match pos.checked_add(n) {
            Some(end) if end <= self.file_len => {
                let n = i64::try_from(n).map_err(|_| self.bad("a length is out of range"))?;
                self.reader
                    .seek(SeekFrom::Current(n))
                    .map_err(|e| self.bad(format!("cannot seek: {e}")))?;
                Ok(())
            }
            _ => Err(self.bad(format!(
                "a length of {n} bytes at byte {pos} runs past the end of the file"
            ))),
        }
    }

    fn string(&mut self) -> Result<String, ModelError> {
        let n = self.len()?;
        let pos = self.position()?;
        if pos.checked_add(n).is_none_or(|end| end > self.file_len) {
            return Err(self.bad(format!(
                "a string of {n} bytes at byte {pos} runs past the end of the file"
            )));
        }
        let mut buf = vec![0u8; n as usize];
        self.reader
            .read_exact(&mut buf)
            .map_err(|e| self.bad(format!("the header ends early: {e}")))?;
        String::from_utf8(buf).map_err(|_| self.bad(format!("the string at byte {pos} is not UTF-8")))
    }

    /// Skip one metadata value of type `ty`; returns its integer value when it is an integer (for
    /// `general.alignment`), tagged with whether it is one of the widths candle reads for the alignment.
    fn value(&mut self, ty: u32, depth: usize) -> Result<Option<(i128, bool)>, ModelError> {
        Ok(match ty {
            0 => Some((self.bytes::<1>()?[0] as i128, true)),
            1 => Some((i8::from_le_bytes(self.bytes()?) as i128, true)),
            2 => Some((u16::from_le_bytes(self.bytes()?) as i128, true)),
            3 => Some((i16::from_le_bytes(self.bytes()?) as i128, true)),
            4 => Some((self.u32()? as i128, true)),
            5 => Some((i32::from_le_bytes(self.bytes()?) as i128, true)),
            10 => Some((self.u64()? as i128, false)),
            11 => Some((i64::from_le_bytes(self.bytes()?) as i128, false)),
            6 => self.skip(4).map(|_| None)?,
            12 => self.skip(8).map(|_| None)?,
            7 => self.skip(1).map(|_| None)?,
            8 => {
                let n = self.len()?;
                self.skip(n)?;
                None
            }
            9 => {
                if depth >= MAX_VALUE_DEPTH {
                    return Err(self.bad("metadata arrays are nested too deep"));
                }
                let elem = self.u32()?;
                let count = self.len()?;
                let fixed = match elem {
                    0 | 1 | 7 => Some(1),
                    2 | 3 => Some(2),
                    4..=6 => Some(4),
                    10..=12 => Some(8),
                    _ => None,
                };
                match fixed {
                    Some(size) => {
                        let total = count
                            .checked_mul(size)
                            .ok_or_else(|| self.bad(format!("an array of {count} values is too long")))?;
                        self.skip(total)?;
                    }
                    None => {
                        for _ in 0..count {
                            self.value(elem, depth + 1)?;
                        }
                    }
                }
                None
            }
            other => return Err(self.bad(format!("unknown metadata value type {other}"))),
        })
    }
}

/// Scan the header of `reader` (a file of `file_len` bytes) and check every tensor's type, shape, offset
/// and extent, and `general.alignment`. Leaves the reader at an unspecified position.
pub(crate) fn scan<R: Read + Seek>(reader: &mut R, path: &Path, file_len: u64) -> Result<(), ModelError> {
    let mut s = Scanner {
        reader,
        path,
        file_len,
        len_size: 8,
    };
    let magic = s.bytes::<4>()?;
    if &magic != b"GGUF" {
        return Err(s.bad(format!("unknown magic {magic:02x?} (expected \"GGUF\")")));
    }
    s.len_size = match s.u32()? {
        1 => 4,
        2 | 3 => 8,
        v => return Err(s.bad(format!("unsupported GGUF version {v}"))),
    };
    let tensor_count = s.len()?;
    let kv_count = s.len()?;
    let mut alignment = DEFAULT_ALIGNMENT;
    for _ in 0..kv_count {
        let key = s.string()?;
        let ty = s.u32()?;
        let value = s.value(ty, 0)?;
        if key == "general.alignment" {
            alignment = match value {
                Some((v, true)) if v > 0 && (v as u64).is_power_of_two() => v as u64,
                Some((v, true)) => return Err(invalid_key(&key, format!("{v} is not a power of two"))),
                _ => return Err(invalid_key(&key, format!("expected a u32, found value type {ty}"))),
            };
        }
    }
    // Each tensor info takes at least 24 bytes: refuse a count the file cannot hold before looping.
    if tensor_count.saturating_mul(24) > file_len {
        return Err(s.bad(format!(
            "the header declares {tensor_count} tensors, more than the file can hold"
        )));
    }
    let mut infos = Vec::with_capacity(tensor_count as usize);
    let mut names = std::collections::HashSet::new();
    for _ in 0..tensor_count {
        let name = s.string()?;
        let n_dims = s.u32()?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(invalid_tensor(
                &name,
                format!("has {n_dims} dimensions (1 to {MAX_DIMS} allowed)"),
            ));
        }
        let dims = (0..n_dims)
            .map(|_| {
                if s.len_size == 4 {
                    s.u32().map(u64::from)
                } else {
                    s.u64()
                }
            })
            .collect::<Result<Vec<u64>, _>>()?;
        let type_id = s.u32()?;
        let offset = s.u64()?;
        if !names.insert(name.clone()) {
            return Err(invalid_tensor(&name, "appears twice in the header"));
        }
        infos.push((name, dims, type_id, offset));
    }
    let data_offset = s
        .position()?
        .checked_next_multiple_of(alignment)
        .ok_or_else(|| s.bad("the data section starts past 2^64"))?;
    for (name, dims, type_id, offset) in infos {
        let dtype = dtype_from_id(type_id)
            .ok_or_else(|| invalid_tensor(&name, format!("has type id {type_id}, which is not a GGML type")))?;
        if dims.contains(&0) {
            return Err(invalid_tensor(&name, format!("has a zero dimension ({dims:?})")));
        }
        // ggml's limit: the element count must fit an i64.
        let elems = dims
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d).filter(|&n| n <= i64::MAX as u64))
            .ok_or_else(|| invalid_tensor(&name, format!("dimensions {dims:?} overflow the element count")))?;
        let block = dtype.block_size() as u64;
        if dims[0] % block != 0 {
            return Err(invalid_tensor(
                &name,
                format!(
                    "rows of {} values are not a whole number of {dtype:?} blocks of {block}",
                    dims[0]
                ),
            ));
        }
        let bytes = (elems / block)
            .checked_mul(dtype.type_size() as u64)
            .filter(|&b| usize::try_from(b).is_ok())
            .ok_or_else(|| invalid_tensor(&name, format!("dimensions {dims:?} overflow the data size")))?;
        if offset % alignment != 0 {
            return Err(invalid_tensor(
                &name,
                format!("data offset {offset} is not a multiple of the alignment {alignment}"),
            ));
        }
        let end = data_offset
            .checked_add(offset)
            .and_then(|start| start.checked_add(bytes));
        match end {
            Some(end) if end <= file_len => {}
            _ => {
                return Err(ModelError::Truncated {
                    path: path.to_path_buf(),
                    tensor: name,
                    needed: end.unwrap_or(u64::MAX),
                    actual: file_len,
                })
            }
        }
    }
    Ok(())
}

fn invalid_key(key: &str, reason: impl Into<String>) -> ModelError {
    ModelError::InvalidKey {
        key: key.to_string(),
        reason: reason.into(),
    }
}

fn invalid_tensor(name: &str, reason: impl Into<String>) -> ModelError {
    ModelError::InvalidTensor {
        name: name.to_string(),
        reason: reason.into(),
    }
}
