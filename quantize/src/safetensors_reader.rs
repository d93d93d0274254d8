//! [`ShardSet`]: the safetensors files of one checkpoint, memory-mapped, read tensor by tensor and row range
//! by row range so that only the rows being quantized are ever converted to f32.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::QuantizeError;

/// Where one tensor lives.
#[derive(Debug, Clone)]
struct Entry {
    shard: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    /// Byte range in the shard's mmap (absolute, header included).
    start: usize,
    end: usize,
}

/// All tensors of a (possibly sharded) checkpoint.
pub struct ShardSet {
    paths: Vec<PathBuf>,
    maps: Vec<Mmap>,
    entries: BTreeMap<String, Entry>,
}

impl ShardSet {
    /// Open the checkpoint's weight files: the shards listed in `model.safetensors.index.json` when it exists,
    /// else every `*.safetensors` file in `dir`.
    pub fn open_dir(dir: &Path) -> Result<Self, QuantizeError> {
        let index = dir.join("model.safetensors.index.json");
        let mut files: Vec<PathBuf> = if index.exists() {
            let json: serde_json::Value = crate::checkpoint::read_json(&index)?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| QuantizeError::MissingKey {
                    path: index.clone(),
                    key: "weight_map".into(),
                })?;
            let mut names: Vec<String> = map.values().filter_map(|v| v.as_str().map(str::to_owned)).collect();
            names.sort();
            names.dedup();
            names.into_iter().map(|n| dir.join(n)).collect()
        } else {
            let mut files = Vec::new();
            for entry in std::fs::read_dir(dir).map_err(QuantizeError::io(dir))? {
                let path = entry.map_err(QuantizeError::io(dir))?.path();
                if path.extension().is_some_and(|e| e == "safetensors") {
                    files.push(path);
                }
            }
            files.sort();
            files
        };
        if files.is_empty() {
            return Err(QuantizeError::MissingTensor {
                path: dir.to_path_buf(),
                tensor: "*.safetensors (no weight files)".into(),
            });
        }
        files.dedup();
        Self::open(&files)
    }

    /// Open these safetensors files; a name found in two files is an error.
    #[allow(unsafe_code)] // Mmap::map: see the SAFETY note.
    pub fn open(files: &[PathBuf]) -> Result<Self, QuantizeError> {
        let mut maps = Vec::new();
        let mut entries = BTreeMap::new();
        for (shard, path) in files.iter().enumerate() {
            let file = File::open(path).map_err(QuantizeError::io(path))?;
            // SAFETY: the checkpoint is read-only input; a file changed under us gives wrong weights, not UB in
            // our code, because every access is bounds-checked against the validated header.
            let map = unsafe { Mmap::map(&file) }.map_err(QuantizeError::io(path))?;
            let (header_len, metadata) =
                SafeTensors::read_metadata(&map).map_err(|e| QuantizeError::InvalidSafetensors {
                    path: path.clone(),
                    reason: describe(&e),
                })?;
            let data_start = 8 + header_len;
            for (name, info) in metadata.tensors() {
                let entry = Entry {
                    shard,
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    start: data_start + info.data_offsets.0,
                    end: data_start + info.data_offsets.1,
                };
                if entries.insert(name.clone(), entry).is_some() {
                    return Err(QuantizeError::InvalidSafetensors {
                        path: path.clone(),
                        reason: format!("tensor `{name}` is also in another shard"),
                    });
                }
            }
            maps.push(map);
        }
        Ok(Self {
            paths: files.to_vec(),
            maps,
            entries,
        })
    }

    /// Every tensor name, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// The file holding `name` (for error messages); the first shard when absent.
    pub fn path_of(&self, name: &str) -> &Path {
        let shard = self.entries.get(name).map_or(0, |e| e.shard);
        &self.paths[shard]
    }

    /// Whether the checkpoint has a tensor called `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The shape of `name`.
    pub fn shape(&self, name: &str) -> Result<&[usize], QuantizeError> {
        Ok(&self.entry(name)?.shape)
    }

    /// Check that `name` is stored in a dtype we can read (F16, BF16, F32).
    pub fn check_dtype(&self, name: &str) -> Result<(), QuantizeError> {
        let e = self.entry(name)?;
        match e.dtype {
            Dtype::F32 | Dtype::F16 | Dtype::BF16 => Ok(()),
            other => Err(QuantizeError::UnsupportedDtype {
                path: self.paths[e.shard].clone(),
                tensor: name.into(),
                dtype: format!("{other:?}"),
            }),
        }
    }

    fn entry(&self, name: &str) -> Result<&Entry, QuantizeError> {
        self.entries.get(name).ok_or_else(|| QuantizeError::MissingTensor {
            path: self.paths[0].clone(),
            tensor: name.to_string(),
        })
    }

    /// Rows `rows` of tensor `name` (a 1-D tensor is one row) as f32.
    #[allow(unsafe_code)] // madvise on the map: see the SAFETY note.
    pub fn read_rows(&self, name: &str, rows: std::ops::Range<usize>) -> Result<Vec<f32>, QuantizeError> {
        let e = self.entry(name)?;
        let path = &self.paths[e.shard];
        let elem = match e.dtype {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            other => {
                return Err(QuantizeError::UnsupportedDtype {
                    path: path.clone(),
                    tensor: name.into(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        let cols = if e.shape.len() <= 1 {
            e.shape.first().copied().unwrap_or(1)
        } else {
            e.shape[1..].iter().product()
        };
        let bytes = &self.maps[e.shard][e.start..e.end];
        let chunk = bytes
            .get(rows.start * cols * elem..rows.end * cols * elem)
            .ok_or_else(|| QuantizeError::Shape {
                path: path.clone(),
                tensor: name.into(),
                expected: vec![rows.end, cols],
                actual: e.shape.clone(),
            })?;
        let values = match e.dtype {
            Dtype::F32 => chunk
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => chunk
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            _ => chunk
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        };
        // Drop the pages just read from our resident set: each byte is read once, and a 15 GB checkpoint
        // would otherwise stay mapped in, counting against the memory budget.
        let page = 4096;
        let from = (e.start + rows.start * cols * elem) / page * page;
        let to = e.start + rows.end * cols * elem;
        // SAFETY: the map is read-only and file-backed; MADV_DONTNEED only drops clean pages, which the kernel
        // reads back from the file if touched again. No slice into this range outlives this call.
        if let Err(err) =
            unsafe { self.maps[e.shard].unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, from, to - from) }
        {
            tracing::debug!(%err, "madvise(DONTNEED) failed; pages stay cached");
        }
        Ok(values)
    }
}

/// A safetensors error in words that say what is wrong with the file.
fn describe(e: &safetensors::SafeTensorError) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::MetadataIncompleteBuffer => {
            "the data section is shorter or longer than the header says (truncated file?)".into()
        }
        E::HeaderTooSmall | E::InvalidHeaderLength => "the header is cut off (truncated file?)".into(),
        other => other.to_string(),
    }
}
