#!/usr/bin/env python3
"""Write the seed corpus of the `gguf` fuzz target: tiny but complete model files (llama and qwen2 layouts,
F32 and Q8_0 weights, a byte-level BPE vocabulary with control tokens and a chat template), each a few KB so
that the fuzzer mutates them quickly. They load: `engine::check_model` accepts every one of them.

Usage: fuzz/make_gguf_seeds.py fuzz/corpus/gguf  (no .gguf suffix: the repository ignores *.gguf)
"""
import struct
import sys
from pathlib import Path

U32, I32, F32, BOOL, STRING, ARRAY = 4, 5, 6, 7, 8, 9
ALIGN = 32


def string(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def value(ty, v):
    if ty == U32:
        return struct.pack("<I", v)
    if ty == I32:
        return struct.pack("<i", v)
    if ty == F32:
        return struct.pack("<f", v)
    if ty == BOOL:
        return struct.pack("<B", v)
    if ty == STRING:
        return string(v)
    raise ValueError(ty)


def array(elem, items):
    return struct.pack("<IQ", elem, len(items)) + b"".join(value(elem, i) for i in items)


def f32_tensor(n, salt):
    # Small finite values, different per tensor.
    return b"".join(struct.pack("<f", ((i * 7 + salt) % 13 - 6) / 64) for i in range(n))


def q8_0_tensor(n, salt):
    # Blocks of 32: an f16 scale, then 32 int8 quants.
    out = b""
    for block in range(n // 32):
        out += struct.pack("<e", 0.01) + bytes(((i + block + salt) % 15) - 7 & 0xFF for i in range(32))
    return out


def gguf(kvs, tensors):
    """kvs: [(key, type, encoded value)]; tensors: [(name, dims, type_id, data)]."""
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs))
    for key, ty, enc in kvs:
        head += string(key) + struct.pack("<I", ty) + enc
    offset = 0
    data = b""
    for name, dims, type_id, blob in tensors:
        head += string(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        head += struct.pack("<IQ", type_id, offset)
        pad = (-len(blob)) % ALIGN
        data += blob + b"\0" * pad
        offset += len(blob) + pad
    head += b"\0" * ((-len(head)) % ALIGN)
    return head + data


TOKENS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "a", "b", "ab", "\u0120", "\u0120a", "c", "d",
          "u", "s", "e", "r", "\u010a", "x"]
TYPES = [3, 3, 3] + [1] * (len(TOKENS) - 3)
TEMPLATE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
            "+ '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
            "{% endif %}")


def model(arch, hidden, heads, kv_heads, ffn, quant):
    vocab = len(TOKENS)
    head_dim = hidden // heads
    kvs = [
        ("general.architecture", STRING, value(STRING, arch)),
        ("general.name", STRING, value(STRING, f"tiny-{arch}")),
        (f"{arch}.block_count", U32, value(U32, 1)),
        (f"{arch}.context_length", U32, value(U32, 64)),
        (f"{arch}.embedding_length", U32, value(U32, hidden)),
        (f"{arch}.feed_forward_length", U32, value(U32, ffn)),
        (f"{arch}.attention.head_count", U32, value(U32, heads)),
        (f"{arch}.attention.head_count_kv", U32, value(U32, kv_heads)),
        (f"{arch}.attention.layer_norm_rms_epsilon", F32, value(F32, 1e-5)),
        (f"{arch}.rope.freq_base", F32, value(F32, 10000.0)),
        ("tokenizer.ggml.model", STRING, value(STRING, "gpt2")),
        ("tokenizer.ggml.pre", STRING, value(STRING, "qwen2" if arch == "qwen2" else "smollm")),
        ("tokenizer.ggml.tokens", ARRAY, array(STRING, TOKENS)),
        ("tokenizer.ggml.token_type", ARRAY, array(I32, TYPES)),
        ("tokenizer.ggml.merges", ARRAY, array(STRING, ["a b", "\u0120 a"])),
        ("tokenizer.ggml.bos_token_id", U32, value(U32, 0)),
        ("tokenizer.ggml.eos_token_id", U32, value(U32, 1)),
        ("tokenizer.ggml.add_bos_token", BOOL, value(BOOL, 0)),
        ("tokenizer.chat_template", STRING, value(STRING, TEMPLATE)),
    ]
    salt = [0]

    def weight(name, cols, rows):
        salt[0] += 1
        if quant:
            return (name, [cols, rows], 8, q8_0_tensor(cols * rows, salt[0]))
        return (name, [cols, rows], 0, f32_tensor(cols * rows, salt[0]))

    def norm(name, n):
        return (name, [n], 0, struct.pack("<f", 1.0) * n)

    kv_dim = head_dim * kv_heads
    tensors = [weight("token_embd.weight", hidden, vocab)]
    tensors += [
        norm("blk.0.attn_norm.weight", hidden),
        weight("blk.0.attn_q.weight", hidden, hidden),
        weight("blk.0.attn_k.weight", hidden, kv_dim),
        weight("blk.0.attn_v.weight", hidden, kv_dim),
        weight("blk.0.attn_output.weight", hidden, hidden),
        norm("blk.0.ffn_norm.weight", hidden),
        weight("blk.0.ffn_gate.weight", hidden, ffn),
        weight("blk.0.ffn_up.weight", hidden, ffn),
        weight("blk.0.ffn_down.weight", ffn, hidden),
        norm("output_norm.weight", hidden),
    ]
    if arch == "qwen2":
        for name, n in [("blk.0.attn_q.bias", hidden), ("blk.0.attn_k.bias", kv_dim), ("blk.0.attn_v.bias", kv_dim)]:
            tensors.append((name, [n], 0, f32_tensor(n, 3)))
    return gguf(kvs, tensors)


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    seeds = {
        "llama-f32": model("llama", 8, 2, 1, 16, False),
        "qwen2-f32": model("qwen2", 8, 2, 2, 8, False),
        "llama-q8_0": model("llama", 32, 4, 2, 32, True),
    }
    for name, blob in seeds.items():
        (out / name).write_bytes(blob)
        print(f"{name}: {len(blob)} bytes")


if __name__ == "__main__":
    main()
