//! Malformed model files, made from the real SmolLM2 GGUF by editing its header and data at the byte level
//! (no GGUF library: candle's writer cannot write a file that lies about itself, and the gateway's tests do
//! not name candle). [`cases`] is the table: each file, and the key or tensor its error must name (`None`
//! for a file that must load).

use std::path::Path;

/// GGUF metadata value types used here.
const U32: u32 = 4;
const I32: u32 = 5;
const F32: u32 = 6;
const STRING: u32 = 8;
const ARRAY: u32 = 9;
const U64: u32 = 10;

/// A GGUF file split into its parts, every value kept as raw bytes.
#[derive(Clone)]
pub struct RawGguf {
    /// (key, value type, value bytes as stored).
    pub kvs: Vec<(String, u32, Vec<u8>)>,
    pub tensors: Vec<TensorInfo>,
    /// The data section, from the first tensor's start.
    pub data: Vec<u8>,
    /// Bytes of the header's end to cut off (for a header that ends early).
    pub cut_header: usize,
    /// Bytes of data to cut off the end.
    pub cut_data: usize,
    /// A tensor count to write instead of the real one (a header that lies).
    pub tensor_count_override: Option<u64>,
}

#[derive(Clone)]
pub struct TensorInfo {
    pub name: String,
    /// `ne[0]` first.
    pub dims: Vec<u64>,
    pub type_id: u32,
    pub offset: u64,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let s = &self.bytes[self.at..self.at + n];
        self.at += n;
        s
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().unwrap())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take(8).try_into().unwrap())
    }
    fn string(&mut self) -> String {
        let n = self.u64() as usize;
        String::from_utf8(self.take(n).to_vec()).unwrap()
    }
    fn skip_value(&mut self, ty: u32) {
        match ty {
            0 | 1 | 7 => self.at += 1,
            2 | 3 => self.at += 2,
            4..=6 => self.at += 4,
            10..=12 => self.at += 8,
            STRING => {
                let n = self.u64() as usize;
                self.at += n;
            }
            ARRAY => {
                let elem = self.u32();
                for _ in 0..self.u64() {
                    self.skip_value(elem);
                }
            }
            other => panic!("value type {other}"),
        }
    }
}

impl RawGguf {
    /// Read a (well-formed, v3, 32-aligned) GGUF.
    pub fn read(path: &Path) -> Self {
        let bytes = std::fs::read(path).unwrap();
        let mut c = Cursor { bytes: &bytes, at: 0 };
        assert_eq!(c.take(4), b"GGUF");
        assert_eq!(c.u32(), 3);
        let (n_tensors, n_kv) = (c.u64(), c.u64());
        let kvs = (0..n_kv)
            .map(|_| {
                let key = c.string();
                let ty = c.u32();
                let start = c.at;
                c.skip_value(ty);
                (key, ty, bytes[start..c.at].to_vec())
            })
            .collect();
        let tensors = (0..n_tensors)
            .map(|_| {
                let name = c.string();
                let n_dims = c.u32();
                let dims = (0..n_dims).map(|_| c.u64()).collect();
                let type_id = c.u32();
                let offset = c.u64();
                TensorInfo {
                    name,
                    dims,
                    type_id,
                    offset,
                }
            })
            .collect();
        let data_start = c.at.next_multiple_of(32);
        Self {
            kvs,
            tensors,
            data: bytes[data_start..].to_vec(),
            cut_header: 0,
            cut_data: 0,
            tensor_count_override: None,
        }
    }

    /// Write the file (data padded to 32 bytes, whatever `general.alignment` says).
    pub fn write(&self, path: &Path) {
        let mut out = Vec::with_capacity(self.data.len() + (16 << 20));
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&3u32.to_le_bytes());
        let n_tensors = self.tensor_count_override.unwrap_or(self.tensors.len() as u64);
        out.extend_from_slice(&n_tensors.to_le_bytes());
        out.extend_from_slice(&(self.kvs.len() as u64).to_le_bytes());
        let string = |out: &mut Vec<u8>, s: &str| {
            out.extend_from_slice(&(s.len() as u64).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        };
        for (key, ty, value) in &self.kvs {
            string(&mut out, key);
            out.extend_from_slice(&ty.to_le_bytes());
            out.extend_from_slice(value);
        }
        for t in &self.tensors {
            string(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.type_id.to_le_bytes());
            out.extend_from_slice(&t.offset.to_le_bytes());
        }
        out.truncate(out.len() - self.cut_header);
        if self.cut_header == 0 {
            out.resize(out.len().next_multiple_of(32), 0);
            out.extend_from_slice(&self.data[..self.data.len() - self.cut_data]);
        }
        std::fs::write(path, out).unwrap();
    }

    /// Set (or add) a metadata value.
    pub fn set(&mut self, key: &str, ty: u32, value: Vec<u8>) {
        match self.kvs.iter_mut().find(|(k, _, _)| k == key) {
            Some(kv) => (kv.1, kv.2) = (ty, value),
            None => self.kvs.push((key.to_string(), ty, value)),
        }
    }

    pub fn tensor(&mut self, name: &str) -> &mut TensorInfo {
        self.tensors.iter_mut().find(|t| t.name == name).unwrap()
    }

    /// Overwrite bytes of tensor `name`'s data at `at`.
    pub fn poke(&mut self, name: &str, at: usize, bytes: &[u8]) {
        let start = self.tensor(name).offset as usize + at;
        self.data[start..start + bytes.len()].copy_from_slice(bytes);
    }
}

/// One malformed file: its name, how it is made from the real file, and the text its error must contain
/// (`None`: it must load).
pub struct Case {
    pub name: &'static str,
    pub make: fn(&mut RawGguf),
    pub names: Option<&'static str>,
}

fn u32v(v: u32) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn f32v(v: f32) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

/// An f16 NaN, little-endian.
const F16_NAN: [u8; 2] = [0x00, 0x7e];

/// The table. SmolLM2-135M: 30 blocks, 9 heads (3 KV) of 64, width 576, F32 norms, Q4_1 matrices, a Q8_0
/// tied embedding.
pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "alignment_zero",
            make: |g| g.set("general.alignment", U32, u32v(0)),
            names: Some("general.alignment"),
        },
        Case {
            name: "alignment_not_power_of_two",
            make: |g| g.set("general.alignment", U32, u32v(48)),
            names: Some("general.alignment"),
        },
        Case {
            name: "alignment_u64",
            make: |g| g.set("general.alignment", U64, 32u64.to_le_bytes().to_vec()),
            names: Some("general.alignment"),
        },
        Case {
            name: "huge_context_loads",
            make: |g| g.set("llama.context_length", U32, u32v(i32::MAX as u32)),
            names: None,
        },
        Case {
            name: "context_zero",
            make: |g| g.set("llama.context_length", U32, u32v(0)),
            names: Some("llama.context_length"),
        },
        Case {
            name: "dims_overflow",
            make: |g| g.tensor("blk.0.attn_q.weight").dims = vec![1 << 40, 1 << 40],
            names: Some("blk.0.attn_q.weight"),
        },
        Case {
            name: "dims_disagree_with_data",
            make: |g| g.tensor("blk.0.ffn_up.weight").dims = vec![576, 3072],
            names: Some("blk.0.ffn_up.weight"),
        },
        Case {
            name: "dims_past_end_of_file",
            make: |g| g.tensor("output_norm.weight").dims = vec![576, 1 << 20],
            names: Some("output_norm.weight"),
        },
        Case {
            name: "dim_zero",
            make: |g| g.tensor("blk.1.attn_k.weight").dims = vec![576, 0],
            names: Some("blk.1.attn_k.weight"),
        },
        Case {
            name: "five_dims",
            make: |g| g.tensor("blk.1.attn_v.weight").dims = vec![576, 192, 1, 1, 1],
            names: Some("blk.1.attn_v.weight"),
        },
        Case {
            name: "row_not_whole_blocks",
            make: |g| g.tensor("blk.2.attn_q.weight").dims = vec![577, 575],
            names: Some("blk.2.attn_q.weight"),
        },
        Case {
            name: "unknown_type_id",
            make: |g| g.tensor("blk.2.ffn_gate.weight").type_id = 99,
            names: Some("blk.2.ffn_gate.weight"),
        },
        Case {
            name: "unsupported_type_q8k",
            make: |g| g.tensor("blk.2.ffn_down.weight").type_id = 15,
            names: Some("blk.2.ffn_down.weight"),
        },
        Case {
            name: "misaligned_offset",
            make: |g| g.tensor("blk.3.attn_norm.weight").offset += 4,
            names: Some("blk.3.attn_norm.weight"),
        },
        Case {
            name: "duplicate_tensor",
            make: |g| g.tensor("blk.3.ffn_norm.weight").name = "blk.3.attn_norm.weight".into(),
            names: Some("blk.3.attn_norm.weight"),
        },
        Case {
            name: "nan_in_norm",
            make: |g| g.poke("blk.0.attn_norm.weight", 12, &f32v(f32::NAN)),
            names: Some("blk.0.attn_norm.weight"),
        },
        Case {
            name: "inf_in_output_norm",
            make: |g| g.poke("output_norm.weight", 0, &f32v(f32::INFINITY)),
            names: Some("output_norm.weight"),
        },
        Case {
            // Block 5's scale `d` (Q4_1 blocks are 20 bytes, `d` first).
            name: "nan_scale_in_q4_1_matrix",
            make: |g| g.poke("blk.4.ffn_down.weight", 5 * 20, &F16_NAN),
            names: Some("blk.4.ffn_down.weight"),
        },
        Case {
            // Block 7's `m` (the Q4_1 minimum, after `d`).
            name: "nan_min_in_q4_1_matrix",
            make: |g| g.poke("blk.5.attn_v.weight", 7 * 20 + 2, &F16_NAN),
            names: Some("blk.5.attn_v.weight"),
        },
        Case {
            // Q8_0 blocks are 34 bytes, `d` first.
            name: "nan_scale_in_embedding",
            make: |g| g.poke("token_embd.weight", 1000 * 34, &F16_NAN),
            names: Some("token_embd.weight"),
        },
        Case {
            name: "eps_nan",
            make: |g| g.set("llama.attention.layer_norm_rms_epsilon", F32, f32v(f32::NAN)),
            names: Some("llama.attention.layer_norm_rms_epsilon"),
        },
        Case {
            name: "eps_inf",
            make: |g| g.set("llama.attention.layer_norm_rms_epsilon", F32, f32v(f32::INFINITY)),
            names: Some("llama.attention.layer_norm_rms_epsilon"),
        },
        Case {
            name: "eps_zero",
            make: |g| g.set("llama.attention.layer_norm_rms_epsilon", F32, f32v(0.0)),
            names: Some("llama.attention.layer_norm_rms_epsilon"),
        },
        Case {
            name: "eps_negative",
            make: |g| g.set("llama.attention.layer_norm_rms_epsilon", F32, f32v(-1e-5)),
            names: Some("llama.attention.layer_norm_rms_epsilon"),
        },
        Case {
            name: "rope_base_nan",
            make: |g| g.set("llama.rope.freq_base", F32, f32v(f32::NAN)),
            names: Some("llama.rope.freq_base"),
        },
        Case {
            name: "heads_zero",
            make: |g| g.set("llama.attention.head_count", U32, u32v(0)),
            names: Some("llama.attention.head_count"),
        },
        Case {
            name: "heads_absurd",
            make: |g| g.set("llama.attention.head_count", U32, u32v(1 << 31)),
            names: Some("llama.attention.head_count"),
        },
        Case {
            name: "kv_heads_zero",
            make: |g| g.set("llama.attention.head_count_kv", U32, u32v(0)),
            names: Some("llama.attention.head_count_kv"),
        },
        Case {
            name: "kv_heads_not_dividing",
            make: |g| g.set("llama.attention.head_count_kv", U32, u32v(2)),
            names: Some("llama.attention.head_count_kv"),
        },
        Case {
            name: "head_dim_odd",
            make: |g| g.set("llama.attention.key_length", U32, u32v(63)),
            names: Some("llama.attention.key_length"),
        },
        Case {
            name: "blocks_absurd",
            make: |g| g.set("llama.block_count", U32, u32v(u32::MAX)),
            names: Some("llama.block_count"),
        },
        Case {
            name: "blocks_one_too_many",
            make: |g| g.set("llama.block_count", U32, u32v(31)),
            names: Some("blk.30."),
        },
        Case {
            name: "ffn_length_wrong",
            make: |g| g.set("llama.feed_forward_length", U32, u32v(1024)),
            names: Some("blk.0.ffn_gate.weight"),
        },
        Case {
            name: "head_count_negative_type",
            make: |g| g.set("llama.attention.head_count", I32, (-9i32).to_le_bytes().to_vec()),
            names: Some("llama.attention.head_count"),
        },
        Case {
            // 49 151 embedding rows for 49 152 tokens: the last token id would read past the table.
            name: "vocab_larger_than_embedding",
            make: |g| g.tensor("token_embd.weight").dims = vec![576, 49151],
            names: Some("tokenizer.ggml.tokens"),
        },
        Case {
            name: "eos_id_out_of_vocab",
            make: |g| g.set("tokenizer.ggml.eos_token_id", U32, u32v(1_000_000)),
            names: Some("tokenizer.ggml.eos_token_id"),
        },
        Case {
            name: "architecture_not_a_string",
            make: |g| g.set("general.architecture", U32, u32v(7)),
            names: Some("general.architecture"),
        },
        Case {
            name: "truncated_data",
            make: |g| g.cut_data = g.data.len() / 3,
            names: Some("is truncated"),
        },
        Case {
            name: "truncated_header",
            make: |g| g.cut_header = 100,
            names: Some("not a valid GGUF"),
        },
        Case {
            name: "tensor_count_lies",
            make: |g| g.tensor_count_override = Some(1 << 50),
            names: Some("not a valid GGUF"),
        },
        Case {
            name: "string_length_lies",
            make: |g| g.set("general.name", STRING, u64::MAX.to_le_bytes().to_vec()),
            names: Some("not a valid GGUF"),
        },
    ]
}
