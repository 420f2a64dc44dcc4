#!/usr/bin/env python3
"""Writes the small hand-made seeds of the fuzz targets (tests/fuzz.sh adds the fixtures):
a tiny llama GGUF with a SentencePiece vocabulary and one with a gpt2 (BPE) vocabulary, each
with every tensor of one decoder layer; a tiny safetensors file. Run from anywhere."""

import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def gguf_str(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def kv(key, ty, payload):
    return gguf_str(key) + struct.pack("<I", ty) + payload


def u32(key, v):
    return kv(key, 4, struct.pack("<I", v))


def f32(key, v):
    return kv(key, 6, struct.pack("<f", v))


def string(key, v):
    return kv(key, 8, gguf_str(v))


def strings(key, vs):
    return kv(key, 9, struct.pack("<IQ", 8, len(vs)) + b"".join(gguf_str(v) for v in vs))


def floats(key, vs):
    return kv(key, 9, struct.pack("<IQ", 6, len(vs)) + b"".join(struct.pack("<f", v) for v in vs))


def ints(key, vs):
    return kv(key, 9, struct.pack("<IQ", 5, len(vs)) + b"".join(struct.pack("<i", v) for v in vs))


def gguf(kvs, tensors):
    """tensors: (name, dims in ggml order); f32 data, alignment 32."""
    infos, data = b"", b""
    for i, (name, dims) in enumerate(tensors):
        data += b"\0" * (-len(data) % 32)
        infos += gguf_str(name) + struct.pack("<I", len(dims))
        infos += b"".join(struct.pack("<Q", d) for d in dims)
        infos += struct.pack("<IQ", 0, len(data))
        n = 1
        for d in dims:
            n *= d
        data += b"".join(struct.pack("<f", ((i * 7 + j) % 13 - 6) / 8) for j in range(n))
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs)) + b"".join(kvs) + infos
    head += b"\0" * (-len(head) % 32)
    return head + data


H, F, V = 8, 16, 8
LAYER = [
    ("blk.0.attn_norm.weight", [H]),
    ("blk.0.attn_q.weight", [H, H]),
    ("blk.0.attn_k.weight", [H, H]),
    ("blk.0.attn_v.weight", [H, H]),
    ("blk.0.attn_output.weight", [H, H]),
    ("blk.0.ffn_norm.weight", [H]),
    ("blk.0.ffn_gate.weight", [H, F]),
    ("blk.0.ffn_up.weight", [H, F]),
    ("blk.0.ffn_down.weight", [F, H]),
]
TENSORS = [("token_embd.weight", [H, V]), ("output_norm.weight", [H])] + LAYER


def llama_kvs(arch="llama"):
    return [
        string("general.architecture", arch),
        u32(f"{arch}.embedding_length", H),
        u32(f"{arch}.feed_forward_length", F),
        u32(f"{arch}.block_count", 1),
        u32(f"{arch}.attention.head_count", 2),
        u32(f"{arch}.attention.head_count_kv", 2),
        u32(f"{arch}.context_length", 64),
        f32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5),
        f32(f"{arch}.rope.freq_base", 10000.0),
    ]


spm = ["<unk>", "<s>", "</s>", "\u2581", "a", "b", "\u2581a", "ab"]
spm_kvs = llama_kvs() + [
    string("tokenizer.ggml.model", "llama"),
    strings("tokenizer.ggml.tokens", spm),
    floats("tokenizer.ggml.scores", [0, 0, 0, -1, -2, -3, -1.5, -2.5]),
    ints("tokenizer.ggml.token_type", [2, 3, 3, 1, 1, 1, 1, 1]),
    u32("tokenizer.ggml.bos_token_id", 1),
    u32("tokenizer.ggml.eos_token_id", 2),
    string("tokenizer.chat_template", "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"),
]
bpe = ["a", "b", "\u0120", "ab", "\u0120a", "<|endoftext|>", "c", "abc"]
bpe_kvs = llama_kvs("qwen2") + [
    string("tokenizer.ggml.model", "gpt2"),
    string("tokenizer.ggml.pre", "qwen2"),
    strings("tokenizer.ggml.tokens", bpe),
    ints("tokenizer.ggml.token_type", [1, 1, 1, 1, 1, 3, 1, 1]),
    strings("tokenizer.ggml.merges", ["a b", "\u0120 a", "ab c"]),
    u32("tokenizer.ggml.eos_token_id", 5),
]

os.makedirs(os.path.join(HERE, "gguf"), exist_ok=True)
with open(os.path.join(HERE, "gguf", "llama_spm.gguf"), "wb") as f:
    f.write(gguf(spm_kvs, TENSORS))
with open(os.path.join(HERE, "gguf", "qwen2_bpe.gguf"), "wb") as f:
    f.write(gguf(bpe_kvs, TENSORS + [("blk.0.attn_q.bias", [H]), ("blk.0.attn_k.bias", [H]), ("blk.0.attn_v.bias", [H])]))

header = {"__metadata__": {"format": "pt"}}
data = b""
for name, shape, dtype, size in [("model.embed_tokens.weight", [4, 2], "F32", 4), ("model.norm.weight", [2], "F16", 2), ("x", [1, 2], "BF16", 2)]:
    n = size * shape[0] * (shape[1] if len(shape) > 1 else 1)
    header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + n]}
    data += bytes(range(n))
h = json.dumps(header).encode()
os.makedirs(os.path.join(HERE, "safetensors"), exist_ok=True)
with open(os.path.join(HERE, "safetensors", "tiny.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h + data)
