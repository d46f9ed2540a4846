#!/usr/bin/python3
"""Writes the checkpoint_gguf_* and tokenizer_gguf_* cases of the bad-input corpus (issue #23).

Each case is a directory with case.yaml and one GGUF model file written here byte by
byte (an independent writer: struct.pack, not sqlab's): a tiny LLaMA (dim 32, 1 layer,
2 heads, vocabulary 40, F32 tensors, a byte-level BPE tokenizer) with one thing wrong.
`sqlab generate` reads the model and its tokenizer from the file. Run from anywhere; it
rewrites the cases in place: /usr/bin/python3 tests/bad_inputs/make_gguf_cases.py
"""
import os
import shutil
import struct

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DIM, HIDDEN, HEADS, VOCAB = 32, 64, 2, 40
ALIGN = 32
UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY = 4, 5, 6, 7, 8, 9
F32, Q5_0 = 0, 6
rng = np.random.default_rng(0)


def gguf_string(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def kv(key, vtype, value):
    out = gguf_string(key) + struct.pack("<I", vtype)
    if vtype == UINT32:
        return out + struct.pack("<I", value)
    if vtype == FLOAT32:
        return out + struct.pack("<f", value)
    if vtype == BOOL:
        return out + struct.pack("<B", int(value))
    if vtype == STRING:
        return out + gguf_string(value)
    etype, items = value
    out += struct.pack("<IQ", etype, len(items))
    for item in items:
        out += gguf_string(item) if etype == STRING else struct.pack("<i", item)
    return out


def vocabulary():
    tokens = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    tokens += ["ab", "Ġ", "<|im_start|>", "<|im_end|>"]
    types = [1] * (len(tokens) - 2) + [3, 3]
    return tokens, types, ["a b"]


def metadata(arch="llama", tokenizer_model="gpt2", pre="smollm"):
    tokens, types, merges = vocabulary()
    return [
        ("general.architecture", STRING, arch),
        ("llama.context_length", UINT32, 64),
        ("llama.embedding_length", UINT32, DIM),
        ("llama.block_count", UINT32, 1),
        ("llama.feed_forward_length", UINT32, HIDDEN),
        ("llama.attention.head_count", UINT32, HEADS),
        ("llama.attention.head_count_kv", UINT32, HEADS),
        ("llama.rope.freq_base", FLOAT32, 10000.0),
        ("llama.attention.layer_norm_rms_epsilon", FLOAT32, 1e-5),
        ("tokenizer.ggml.model", STRING, tokenizer_model),
        ("tokenizer.ggml.pre", STRING, pre),
        ("tokenizer.ggml.tokens", ARRAY, (STRING, tokens)),
        ("tokenizer.ggml.token_type", ARRAY, (INT32, types)),
        ("tokenizer.ggml.merges", ARRAY, (STRING, merges)),
        ("tokenizer.ggml.bos_token_id", UINT32, 38),
        ("tokenizer.ggml.eos_token_id", UINT32, 39),
        ("tokenizer.ggml.add_bos_token", BOOL, False),
    ]


def tensors():
    """name -> float32 array in PyTorch shape (the file stores the dims reversed)."""
    def w(out, inp):
        return (rng.standard_normal((out, inp)) / np.sqrt(inp)).astype("<f4")
    t = {"token_embd.weight": w(VOCAB, DIM)}
    t["blk.0.attn_norm.weight"] = np.ones(DIM, "<f4")
    for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
        t["blk.0.%s.weight" % name] = w(DIM, DIM)
    t["blk.0.ffn_norm.weight"] = np.ones(DIM, "<f4")
    t["blk.0.ffn_gate.weight"] = w(HIDDEN, DIM)
    t["blk.0.ffn_up.weight"] = w(HIDDEN, DIM)
    t["blk.0.ffn_down.weight"] = w(DIM, HIDDEN)
    t["output_norm.weight"] = np.ones(DIM, "<f4")
    return t


def gguf_bytes(meta, tensor_map, types=None, tensor_count=None):
    """A version-3 GGUF file; `types` overrides a tensor's ggml type (its data stay F32
    sized, except Q5_0's 22 bytes per block of 32 values)."""
    types = types or {}
    infos, data = b"", b""
    for name, array in tensor_map.items():
        ggml_type = types.get(name, F32)
        payload = b"\0" * (array.size // 32 * 22) if ggml_type == Q5_0 else array.tobytes()
        data += b"\0" * (-len(data) % ALIGN)
        dims = list(reversed(array.shape))
        infos += gguf_string(name) + struct.pack("<I", len(dims)) + struct.pack("<%dQ" % len(dims), *dims)
        infos += struct.pack("<IQ", ggml_type, len(data))
        data += payload
    count = len(tensor_map) if tensor_count is None else tensor_count
    head = b"GGUF" + struct.pack("<IQQ", 3, count, len(meta))
    head += b"".join(kv(*entry) for entry in meta) + infos
    head += b"\0" * (-len(head) % ALIGN)
    return head + data


def case(name, description, data, message, extra_args=()):
    d = os.path.join(HERE, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    with open(os.path.join(d, "m.gguf"), "wb") as f:
        f.write(data)
    command = ["generate", "--model", "m.gguf", "--prompt", "ab", "--steps", "1"] + list(extra_args)
    messages = message if isinstance(message, list) else [message]
    with open(os.path.join(d, "case.yaml"), "w") as f:
        f.write("description: %s\n" % _quote(description))
        f.write("command: [%s]\n" % ", ".join(_quote(c) for c in command))
        f.write("exit: 2\n")
        f.write("message: [%s]\n" % ", ".join(_quote(m) for m in messages))


def _quote(text):
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def main():
    good = gguf_bytes(metadata(), tensors())
    case("checkpoint_gguf_truncated", "a GGUF model cut short in its tensor data",
         good[: len(good) - 100], ["m.gguf", "output_norm.weight"])
    case("checkpoint_gguf_bad_magic", "a file named as GGUF that does not start with GGUF",
         b"GGUX" + good[4:], ["m.gguf", "not a GGUF file"], ["--set", "format=gguf", "--tokenizer", "m.gguf"])
    case("checkpoint_gguf_lying_tensor_count", "tensor_count says 4000 tensors; the file holds 12",
         gguf_bytes(metadata(), tensors(), tensor_count=4000), ["m.gguf", "tensor"])
    case("checkpoint_gguf_unknown_type", "a tensor of ggml type 99, which does not exist",
         gguf_bytes(metadata(), tensors(), types={"blk.0.attn_v.weight": 99}), ["m.gguf", "blk.0.attn_v.weight", "99"])
    case("checkpoint_gguf_unsupported_type", "a Q5_0 tensor: a real ggml type sqlab does not dequantize",
         gguf_bytes(metadata(), tensors(), types={"blk.0.ffn_up.weight": Q5_0}),
         ["m.gguf", "blk.0.ffn_up.weight", "Q5_0"])
    t = tensors()
    del t["blk.0.ffn_gate.weight"]
    case("checkpoint_gguf_missing_tensor", "blk.0.ffn_gate.weight is absent",
         gguf_bytes(metadata(), t), ["m.gguf", "blk.0.ffn_gate.weight", "missing"])
    t = tensors()
    t["blk.0.attn_k.weight"] = t["blk.0.attn_k.weight"][:16]
    case("checkpoint_gguf_shape_mismatch", "attn_k has 16 rows; 2 KV heads of 16 need 32",
         gguf_bytes(metadata(), t), ["m.gguf", "blk.0.attn_k.weight", "shape"])
    t = tensors()
    t["blk.0.attn_output.weight"][1, 2] = np.nan
    case("checkpoint_gguf_nan", "a NaN in attn_output", gguf_bytes(metadata(), t),
         ["m.gguf", "blk.0.attn_output.weight", "NaN"])
    case("checkpoint_gguf_other_architecture", "general.architecture gemma2: refused, not loaded as LLaMA",
         gguf_bytes(metadata(arch="gemma2"), tensors()), ["m.gguf", "general.architecture", "gemma2"])
    case("tokenizer_gguf_unknown_pre", "tokenizer.ggml.pre names a pre-tokenizer sqlab does not know",
         gguf_bytes(metadata(pre="mystery-bpe"), tensors()), ["m.gguf", "mystery-bpe"])
    case("tokenizer_gguf_sentencepiece", "tokenizer.ggml.model llama (sentencepiece in GGUF) is not read",
         gguf_bytes(metadata(tokenizer_model="llama"), tensors()), ["m.gguf", "tokenizer.ggml.model"])


if __name__ == "__main__":
    main()
