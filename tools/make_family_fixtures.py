"""Tiny random checkpoints of the model families sqlab reads, and their logits from
Hugging Face transformers: the reference for tests/test_model_families.cpp.

For each family a checkpoint with a few layers and the family's real options (grouped-query
attention, biases, rope scaling, q/k norms, tied head) is written with `save_pretrained`
(config.json + model.safetensors, float32) under tests/fixtures/families/NAME/, with
`expected.safetensors` holding `tokens` (2 x 24, as float64) and `logits` (float32) from the
transformers forward.  Every parameter is drawn at random (norm gains around 1, biases
around 0), so no option can pass unnoticed by being at its default.

Run with a Python that has torch and transformers (a venv; not needed by the tests):
    python tools/make_family_fixtures.py tests/fixtures/families
Made with transformers 5.25.0 and torch 2.15.0 (CPU).
"""

import json
import os
import sys

import torch
import transformers
from safetensors.torch import save_file

VOCAB = 160
TOKENS = (2, 24)


def families():
    common = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=128, rms_norm_eps=1e-5)
    return {
        # LLaMA-3.2-1B's options: GQA (32/8 heads), tied head, rope theta 500000, llama3 rope
        # scaling (factor 32 there; 8 here) with an original context short enough that all
        # three frequency bands occur at head_dim 16.
        "llama3": transformers.LlamaConfig(
            **common, intermediate_size=256, num_key_value_heads=2, tie_word_embeddings=True,
            rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
        # Linear position interpolation, separate head, attention biases on q/k/v and o.
        "llama_linear_bias": transformers.LlamaConfig(
            **common, intermediate_size=172, num_key_value_heads=4, tie_word_embeddings=False, attention_bias=True,
            rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}),
        # Mistral-7B: 32/8 heads, MLP 3.5 x hidden, a sliding window (longer than the 24 tokens).
        "mistral": transformers.MistralConfig(
            **common, intermediate_size=224, num_key_value_heads=1, sliding_window=32, tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
        # Qwen2.5-0.5B: 14/2 heads, q/k/v biases, tied head, theta 1e6.
        "qwen2": transformers.Qwen2Config(
            **common, intermediate_size=344, num_key_value_heads=2, tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
        # Qwen3-0.6B: head_dim 128 with hidden 1024 / 16 heads (q is wider than the stream),
        # per-head q/k RMSNorm, tied head.
        "qwen3": transformers.Qwen3Config(
            **common, intermediate_size=192, num_key_value_heads=2, head_dim=32, tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
    }


def randomize(model, generator):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=generator))
            elif name.endswith(".bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=generator))
            else:
                fan_in = p.shape[-1]
                p.copy_(torch.randn(p.shape, generator=generator) * (1.5 / fan_in ** 0.5))


def main(out_dir):
    generator = torch.Generator().manual_seed(20261205)
    tokens = torch.randint(0, VOCAB, TOKENS, generator=generator)
    for name, config in families().items():
        config.torch_dtype = torch.float32
        model = transformers.AutoModelForCausalLM.from_config(config).eval()
        randomize(model, generator)
        if config.tie_word_embeddings:
            model.tie_weights()
        path = os.path.join(out_dir, name)
        model.save_pretrained(path, safe_serialization=True)
        with torch.no_grad():
            logits = model(tokens).logits.float().contiguous()
        save_file({"tokens": tokens.double().contiguous(), "logits": logits}, os.path.join(path, "expected.safetensors"))
        with open(os.path.join(path, "config.json")) as f:
            arch = json.load(f)["architectures"]
        size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
        print("{}: {} {} bytes, logits {} |logits| {:.3g}".format(name, arch, size, tuple(logits.shape),
                                                                   logits.abs().max().item()))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/families")
