#!/usr/bin/python3
"""Writes the checkpoint_* and tokenizer_* cases of the bad-input corpus (issue #8).

Each case is a directory with case.yaml and small inputs: a tiny llama2.c model
(dim 8, 1 layer, vocab 300) or Hugging Face directory with one thing wrong, and a
valid llama2.c tokenizer (or the reverse). Run from anywhere; it rewrites the cases
in place: /usr/bin/python3 tests/bad_inputs/make_model_cases.py
"""
import json
import os
import shutil
import struct

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DIM, HIDDEN, LAYERS, HEADS, KV, VOCAB, SEQ = 8, 16, 1, 2, 2, 300, 16
rng = np.random.default_rng(0)


def floats(*shape):
    return (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype("<f4")


def llama2c_bytes(header=(DIM, HIDDEN, LAYERS, HEADS, KV, VOCAB, SEQ), cut=0, nan=False, v1_version=None):
    """A legacy llama2.c file with a shared classifier (weights sized for the real config)."""
    hd = DIM // HEADS
    parts = [floats(VOCAB, DIM)]
    parts += [np.ones((LAYERS, DIM), "<f4"), floats(LAYERS, DIM, DIM), floats(LAYERS, KV * hd, DIM),
              floats(LAYERS, KV * hd, DIM), floats(LAYERS, DIM, DIM), np.ones((LAYERS, DIM), "<f4"),
              floats(LAYERS, HIDDEN, DIM), floats(LAYERS, DIM, HIDDEN), floats(LAYERS, HIDDEN, DIM),
              np.ones(DIM, "<f4"), np.zeros(SEQ * hd, "<f4")]
    if nan:
        parts[0][3, 2] = np.nan
    body = b"".join(p.tobytes() for p in parts)
    if v1_version is not None:
        head = struct.pack("<Ii7iB", 0x616B3432, v1_version, *header, 1)
        head += b"\0" * (256 - len(head))
    else:
        head = struct.pack("<7i", *header)
    data = head + body
    return data[: len(data) - cut] if cut else data


def tokenizer_bytes(max_len=None, cut=0):
    pieces = [b"<unk>", b"\n<s>\n", b"\n</s>\n"] + [b"<0x%02X>" % b for b in range(256)]
    pieces += [bytes([c]) for c in b" abcdefghijklmnopqrstuvwxyz"]
    pieces += [b" x", b"ab", b"cd", b" the", b"he", b"th", b"in", b"an", b"er", b"on", b"re", b"at", b"en", b"it"]
    assert len(pieces) == VOCAB, len(pieces)
    out = struct.pack("<i", max_len if max_len is not None else max(len(p) for p in pieces))
    for i, p in enumerate(pieces):
        out += struct.pack("<fi", -float(i), len(p)) + p
    return out[: len(out) - cut] if cut else out


def safetensors_bytes(tensors):
    """tensors: list of (name, dtype name, array)."""
    header, offset, data = {}, 0, b""
    for name, dtype, array in tensors:
        raw = array.tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        data += raw
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + data


def hf_tensors(skip=(), replace=None):
    hd = DIM // HEADS
    shapes = [("model.embed_tokens.weight", (VOCAB, DIM))]
    for layer in range(LAYERS):
        p = f"model.layers.{layer}."
        shapes += [(p + "input_layernorm.weight", (DIM,)), (p + "self_attn.q_proj.weight", (DIM, DIM)),
                   (p + "self_attn.k_proj.weight", (KV * hd, DIM)), (p + "self_attn.v_proj.weight", (KV * hd, DIM)),
                   (p + "self_attn.o_proj.weight", (DIM, DIM)), (p + "post_attention_layernorm.weight", (DIM,)),
                   (p + "mlp.gate_proj.weight", (HIDDEN, DIM)), (p + "mlp.up_proj.weight", (HIDDEN, DIM)),
                   (p + "mlp.down_proj.weight", (DIM, HIDDEN))]
    shapes.append(("model.norm.weight", (DIM,)))
    out = []
    for name, shape in shapes:
        if name in skip:
            continue
        if replace and name in replace:
            out.append((name,) + replace[name])
        else:
            out.append((name, "F32", floats(*shape) if len(shape) == 2 else np.ones(shape, "<f4")))
    return out


def hf_config(**changes):
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": DIM,
              "intermediate_size": HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
              "num_key_value_heads": KV, "vocab_size": VOCAB, "max_position_embeddings": SEQ,
              "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "rope_scaling": None, "tie_word_embeddings": True,
              "bos_token_id": 1, "eos_token_id": 2}
    config.update(changes)
    return json.dumps(config, indent=1).encode()


def write_case(name, description, files, message, model="bad.bin", tokenizer="tok.bin"):
    directory = os.path.join(HERE, name)
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    for path, data in files.items():
        full = os.path.join(directory, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as f:
            f.write(data)
        assert len(data) < 20_000, (name, path, len(data))
    command = ["generate", "--model", model, "--tokenizer", tokenizer, "--prompt", "x", "--steps", "1"]
    with open(os.path.join(directory, "case.yaml"), "w") as f:
        f.write(f"description: {json.dumps(description)}\n")
        f.write(f"command: {json.dumps(command)}\n")
        f.write("exit: 2\n")
        f.write(f"message: {json.dumps(message)}\n")


def main():
    tok = tokenizer_bytes()
    good = llama2c_bytes()
    cases = [
        ("checkpoint_truncated_llama2c", "llama2.c file cut short by 100 bytes",
         {"bad.bin": llama2c_bytes(cut=100)}, ["bad.bin", "implies"]),
        ("checkpoint_negative_dim", "llama2.c header with dim -8",
         {"bad.bin": struct.pack("<7i", -8, HIDDEN, LAYERS, HEADS, KV, VOCAB, SEQ) + good[28:]},
         ["bad.bin", "dim must be positive, got -8"]),
        ("checkpoint_zero_layers", "llama2.c header with n_layers 0",
         {"bad.bin": struct.pack("<7i", DIM, HIDDEN, 0, HEADS, KV, VOCAB, SEQ) + good[28:]},
         ["bad.bin", "n_layers must be positive"]),
        ("checkpoint_heads_not_dividing", "llama2.c header: dim 8 with 3 heads",
         {"bad.bin": struct.pack("<7i", DIM, HIDDEN, LAYERS, 3, 3, VOCAB, SEQ) + good[28:]},
         ["bad.bin", "not a multiple of n_heads 3"]),
        ("checkpoint_kv_heads_not_dividing", "llama2.c header: 2 heads, 3 KV heads",
         {"bad.bin": struct.pack("<7i", DIM, HIDDEN, LAYERS, 2, 3, VOCAB, SEQ) + good[28:]},
         ["bad.bin", "not a multiple of n_kv_heads 3"]),
        ("checkpoint_llama2c_version2", "llama2.c ak42 header with version 2 (Q8_0, unsupported)",
         {"bad.bin": llama2c_bytes(v1_version=2)}, ["bad.bin", "version 2 is not supported"]),
        ("checkpoint_nan_weights", "llama2.c file with a NaN in the token embedding",
         {"bad.bin": llama2c_bytes(nan=True)}, ["bad.bin", "token_embedding", "NaN"]),
        ("checkpoint_hf_missing_tensor", "Hugging Face directory without layer 0's up_proj",
         {"model/config.json": hf_config(),
          "model/model.safetensors": safetensors_bytes(hf_tensors(skip={"model.layers.0.mlp.up_proj.weight"}))},
         ["model.layers.0.mlp.up_proj.weight", "is missing"]),
        ("checkpoint_hf_shape_mismatch", "config.json says intermediate_size 24, the tensors hold 16",
         {"model/config.json": hf_config(intermediate_size=24),
          "model/model.safetensors": safetensors_bytes(hf_tensors())},
         ["model.layers.0.mlp.gate_proj.weight", "config.json implies [24, 8]"]),
        ("checkpoint_hf_int_dtype", "an I32 weight in model.safetensors",
         {"model/config.json": hf_config(),
          "model/model.safetensors": safetensors_bytes(hf_tensors(
              replace={"model.norm.weight": ("I32", np.ones(DIM, "<i4"))}))},
         ["model.norm.weight", "dtype I32"]),
        ("checkpoint_hf_missing_shard", "the index names a shard that is not there",
         {"model/config.json": hf_config(),
          "model/model.safetensors.index.json": json.dumps({"weight_map": {
              name: "model-00001-of-00001.safetensors" for name, _, _ in hf_tensors()}}).encode()},
         ["model-00001-of-00001.safetensors", "does not exist"]),
        ("checkpoint_hf_config_not_json", "config.json is not JSON",
         {"model/config.json": b"hidden_size: 8\n", "model/model.safetensors": safetensors_bytes(hf_tensors())},
         ["config.json", "not valid JSON"]),
        ("checkpoint_hf_rope_scaling", "config.json asks for yarn rope scaling (sqlab implements linear, "
         "dynamic and llama3)",
         {"model/config.json": hf_config(rope_scaling={"type": "yarn", "factor": 2.0}),
          "model/model.safetensors": safetensors_bytes(hf_tensors())},
         ["config.json", "rope_scaling.rope_type", "yarn"]),
        ("checkpoint_hf_moe", "a mixture-of-experts config (Mixtral's num_local_experts)",
         {"model/config.json": hf_config(num_local_experts=8, num_experts_per_tok=2),
          "model/model.safetensors": safetensors_bytes(hf_tensors())},
         ["config.json", "num_local_experts"]),
        ("checkpoint_hf_other_model_type", "model_type gemma2, a family sqlab does not read",
         {"model/config.json": hf_config(model_type="gemma2", architectures=["Gemma2ForCausalLM"]),
          "model/model.safetensors": safetensors_bytes(hf_tensors())},
         ["config.json", "model_type", "gemma2", "Qwen3ForCausalLM"]),
        ("checkpoint_hf_architecture_mismatch", "model_type qwen2 with a LlamaForCausalLM class",
         {"model/config.json": hf_config(model_type="qwen2"),
          "model/model.safetensors": safetensors_bytes(hf_tensors())},
         ["config.json", "architectures", "Qwen2ForCausalLM"]),
        ("checkpoint_hf_mlp_bias", "mlp_bias: true (no family sqlab reads has MLP biases)",
         {"model/config.json": hf_config(mlp_bias=True),
          "model/model.safetensors": safetensors_bytes(hf_tensors())},
         ["config.json", "mlp_bias"]),
        ("checkpoint_hf_qwen_sliding_window", "a Qwen2 config with use_sliding_window: true",
         {"model/config.json": hf_config(model_type="qwen2", architectures=["Qwen2ForCausalLM"],
                                         use_sliding_window=True, sliding_window=8),
          "model/model.safetensors": safetensors_bytes(hf_tensors())},
         ["config.json", "use_sliding_window"]),
        ("checkpoint_hf_missing_bias", "a Qwen2 config whose checkpoint has no q/k/v biases",
         {"model/config.json": hf_config(model_type="qwen2", architectures=["Qwen2ForCausalLM"]),
          "model/model.safetensors": safetensors_bytes(hf_tensors())},
         ["model.layers.0.self_attn.q_proj.bias", "missing"]),
        ("checkpoint_hf_truncated_safetensors", "model.safetensors cut short",
         {"model/config.json": hf_config(), "model/model.safetensors": safetensors_bytes(hf_tensors())[:-64]},
         ["model.safetensors"]),
    ]
    for name, description, files, message in cases:
        files = dict(files)
        files["tok.bin"] = tok
        write_case(name, description, files, message, model="model" if "model/config.json" in files else "bad.bin")
    tokenizer_cases = [
        ("tokenizer_truncated", "llama2.c tokenizer cut inside its last piece", {"tok.bin": tokenizer_bytes(cut=1)},
         ["tok.bin", "runs past the end"], "tok.bin"),
        ("tokenizer_bad_max_length", "llama2.c tokenizer whose max_token_length is 0",
         {"tok.bin": tokenizer_bytes(max_len=0)}, ["tok.bin", "max_token_length 0"], "tok.bin"),
        ("tokenizer_missing", "the tokenizer file does not exist", {}, ["absent.bin", "no such file"], "absent.bin"),
        ("tokenizer_hf_json", "a Hugging Face tokenizer.json (unsupported)", {"tokenizer.json": b"{}"},
         ["tokenizer.json", "not supported"], "tokenizer.json"),
    ]
    for name, description, files, message, tokenizer in tokenizer_cases:
        files = dict(files)
        files["model.bin"] = good
        write_case(name, description, files, message, model="model.bin", tokenizer=tokenizer)


if __name__ == "__main__":
    main()
