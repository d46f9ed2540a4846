#!/usr/bin/env python3
"""Reference token ids of SmolLM2's tokenizer for tests/test_bpe_tokenizer.cpp.

Writes tests/fixtures/smollm2/tokenizer_ids.json. The texts of the data sets are NOT stored:
slices are file + byte offset + byte length (on UTF-8 boundaries), C4 documents are line
indexes; the C++ test reads them from ../shared/data. Only the hand-written edge cases carry
their text.

Two references, both offline from the local GGUF (no hub access):
  primary:   Hugging Face `tokenizers` built directly from the GGUF vocabulary and merges with
             SmolLM2's own pre-tokenizer (its tokenizer.json: Sequence[Digits(individual_digits=
             True), ByteLevel(add_prefix_space=False, use_regex=True)]), the 17 control tokens as
             special added tokens (normalized=False). This is also llama.cpp's "smollm" split.
  secondary: transformers' AutoTokenizer.from_pretrained(dir, gguf_file=...). Its GGUF loader
             does not know tokenizer.ggml.pre "smollm" and builds GPT-2's plain ByteLevel
             pre-tokenizer (no digit split); where its ids differ from the primary ones the case
             is listed under "transformers_gguf_differs" (expected: runs of spaces before digits).

Needs: gguf, tokenizers, transformers (+ torch for transformers' GGUF reader), e.g.
  HF_HUB_OFFLINE=1 /root/.cache/sqlab/venv/bin/python tools/smollm2_tokenizer_reference.py \
      [--model PATH.gguf] [--shared ../shared/data] [--out tests/fixtures/smollm2/tokenizer_ids.json]
"""
import argparse
import hashlib
import json
import os
import struct
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MODEL = "/root/.cache/sqlab/models/SmolLM2-135M-Instruct.Q4_1.gguf"

EDGE_CASES = [
    "",
    "12345",
    "3.14",
    "1,000,000",
    "x  1",
    "  12 apples",
    "don't I'll they're",
    "'s",
    "Hello world",
    "several   spaces   here",
    "trailing spaces   ",
    "   leading spaces",
    "line one\nline two",
    "para one\n\npara two\n",
    "\n\n\n",
    "crlf\r\nline",
    "tab\tseparated\t\tvalues\t",
    "café naïve résumé Ångström",
    "日本語のテキスト 中文字符",
    "emoji 😀👍🏽 and ❤️",
    "mixed Русский English العربية हिन्दी",
    "punctuation!!! ... ??? --- (*&^%$#@)",
    "<|im_start|>user\nhi<|im_end|>",
    "text<|endoftext|>more",
    "<|im_start|><|im_start|>",
    "nbsp\u00a0here and nel\u0085there",
    "\u2028line sep\u3000ideographic space",
    "AAAAAAAAAAAAAAAA aaaaaaaaaaaaaaaaaaaaa",
    "def f(x):\n    return x ** 2  # square\n",
    "½ ² Ⅻ ٣ numbers",
    "https://example.com/path?q=1&r=two",
    "ctrl\x04char !\x04! a\x06\x13b",
    "plane five \U00050000x \U00040001",
]

WIKITEXT = "wikitext2/test.txt"
C4 = "c4/validation_2k.jsonl"
TINYSTORIES = "tinystories/cs336_tinystories_sample.txt"


def utf8_start(data: bytes, pos: int) -> int:
    """The first UTF-8 character start at or after pos."""
    while pos < len(data) and (data[pos] & 0xC0) == 0x80:
        pos += 1
    return pos


def ids_sha256(ids) -> str:
    return hashlib.sha256(struct.pack(f"<{len(ids)}i", *ids)).hexdigest()


def primary_tokenizer(model_path):
    from gguf import GGUFReader
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    reader = GGUFReader(model_path)
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    tokens, types, merges = field("tokenizer.ggml.tokens"), field("tokenizer.ggml.token_type"), field("tokenizer.ggml.merges")
    assert field("tokenizer.ggml.model") == "gpt2" and field("tokenizer.ggml.pre") == "smollm"
    vocab = {t: i for i, t in enumerate(tokens)}
    bpe = models.BPE(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges])
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    tok.decoder = decoders.ByteLevel()
    control = [AddedToken(t, normalized=False, special=True) for t, ty in zip(tokens, types) if ty == 3]
    tok.add_special_tokens(control)
    info = {"tokens": len(tokens), "merges": len(merges), "control_tokens": len(control),
            "bos_id": int(field("tokenizer.ggml.bos_token_id")), "eos_id": int(field("tokenizer.ggml.eos_token_id"))}
    return tok, info


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--shared", default=os.path.join(REPO, "..", "shared", "data"))
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "fixtures", "smollm2", "tokenizer_ids.json"))
    ap.add_argument("--dump-vocab", metavar="JSON",
                    help="only write the GGUF's tokenizer.* metadata (not the chat template) to JSON, e.g. "
                         "/tmp/smollm2_vocab.json for the C++ test's smollm2_vocab(); never into the repository")
    args = ap.parse_args()

    if args.dump_vocab:
        from gguf import GGUFReader
        reader = GGUFReader(args.model)
        meta = {k: f.contents() for k, f in reader.fields.items()
                if k.startswith("tokenizer.") and k != "tokenizer.chat_template"}
        with open(args.dump_vocab, "w", encoding="utf-8") as f:
            json.dump(meta, f, ensure_ascii=False)
        print(f"wrote {args.dump_vocab}: {len(meta['tokenizer.ggml.tokens'])} tokens")
        return

    import gguf
    import tokenizers
    import transformers

    primary, info = primary_tokenizer(args.model)
    secondary = transformers.AutoTokenizer.from_pretrained(
        os.path.dirname(os.path.abspath(args.model)), gguf_file=os.path.basename(args.model))
    secondary_pre = str(secondary.backend_tokenizer.pre_tokenizer)

    differs = []

    def encode(text: str, what: str):
        ids = primary.encode(text, add_special_tokens=False).ids
        other = secondary(text, add_special_tokens=False)["input_ids"]
        if other != ids:
            differs.append(what)
        return ids

    def read(rel):
        with open(os.path.join(args.shared, rel), "rb") as f:
            return f.read()

    slices = []
    wiki = read(WIKITEXT)
    for name, begin, length in [("wikitext2_first_4k", 0, 4096), ("wikitext2_middle_a", len(wiki) // 3, 6000),
                                ("wikitext2_middle_b", len(wiki) // 2, 4096), ("wikitext2_tail", len(wiki) - 3000, 3000)]:
        b = utf8_start(wiki, begin)
        e = utf8_start(wiki, min(len(wiki), b + length))
        slices.append({"name": name, "file": WIKITEXT, "offset": b, "length": e - b,
                       "ids": encode(wiki[b:e].decode("utf-8"), name)})
    ts = read(TINYSTORIES)
    slices.append({"name": "tinystories_sample_whole", "file": TINYSTORIES, "offset": 0, "length": len(ts),
                   "ids": encode(ts.decode("utf-8"), "tinystories")})

    c4_texts = [json.loads(line)["text"] for line in read(C4).decode("utf-8").splitlines()]
    # A few whole documents; also the one with the most non-ASCII text among the first 2000.
    non_ascii = max(range(len(c4_texts)), key=lambda i: sum(ord(c) > 127 for c in c4_texts[i]))
    c4_docs = [{"file": C4, "line": i, "ids": encode(c4_texts[i], f"c4 line {i}")} for i in [0, 7, 123, 1024, non_ascii]]

    whole = []
    wiki_ids = encode(wiki.decode("utf-8"), "wikitext2 whole")
    whole.append({"name": "wikitext2_test_whole", "file": WIKITEXT, "count": len(wiki_ids), "sha256": ids_sha256(wiki_ids)})
    c4_joined = " ".join(c4_texts[:1100])
    c4_ids = encode(c4_joined, "c4 first 1100 joined")
    whole.append({"name": "c4_first_1100_joined_by_space", "file": C4, "docs": 1100, "joiner": " ",
                  "count": len(c4_ids), "sha256": ids_sha256(c4_ids)})

    edges = [{"text": t, "ids": encode(t, f"edge {t!r}")} for t in EDGE_CASES]

    out = {
        "generator": "tools/smollm2_tokenizer_reference.py",
        "model": os.path.basename(args.model),
        "tokenizer": {"ggml.model": "gpt2", "ggml.pre": "smollm", **info},
        "reference": "tokenizers BPE from the GGUF vocab/merges + Sequence[Digits(individual_digits=True), "
                     "ByteLevel(add_prefix_space=False, use_regex=True)] + control tokens as special added tokens; "
                     "encode(text, add_special_tokens=False) (no BOS)",
        "transformers_gguf_pre_tokenizer": secondary_pre,
        "transformers_gguf_differs": differs,
        "versions": {"python": sys.version.split()[0], "tokenizers": tokenizers.__version__,
                     "transformers": transformers.__version__,
                     "gguf": getattr(gguf, "__version__", None) or _dist_version("gguf")},
        "ids_sha256": "sha256 of the ids as little-endian int32 bytes",
        "slices": slices,
        "c4_docs": c4_docs,
        "whole": whole,
        "edge_cases": edges,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=True, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {args.out}: {len(slices)} slices, {len(c4_docs)} c4 docs, {len(edges)} edge cases; "
          f"wikitext2 {len(wiki_ids)} tokens; transformers differs on {len(differs)}: {differs}")


def _dist_version(name):
    from importlib.metadata import version
    return version(name)


if __name__ == "__main__":
    main()
