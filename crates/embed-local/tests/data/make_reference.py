"""Writes reference.json: all-MiniLM-L6-v2 embeddings computed without candle.

An independent check of the Rust crate's numbers: the weights are parsed from
model.safetensors by hand, BERT is written out in numpy (float64), then mean pooling
over all tokens (one text at a time, so no padding) and L2 normalisation, as
sentence-transformers does. Tokens come from the Python `tokenizers` package with
truncation at 256 word pieces.

    python3 -m venv .venv-ref && .venv-ref/bin/pip install numpy tokenizers
    .venv-ref/bin/python make_reference.py MODEL_DIR > reference.json

The vector it gives for "hello world" starts -0.034477, 0.031023, 0.006735, 0.026109,
-0.039362, -0.160302, matching the model's published output for that text.
"""
import json
import math
import struct
import sys

import numpy as np
from tokenizers import Tokenizer

MAX_TOKENS = 256
SNIPPET = (
    "fn parse_config(path: &Path) -> Result<Config, Error> { "
    "let text = std::fs::read_to_string(path)?; toml::from_str(&text) }"
)
TEXTS = [
    "A man is playing a guitar.",
    "Someone plays the guitar.",
    "The stock market fell today.",
    "hello world",
    "",
    SNIPPET,
    # ~6000 word pieces: only the first 256 count.
    " ".join([SNIPPET] * 100),
]

model_dir = sys.argv[1]
raw = open(f"{model_dir}/model.safetensors", "rb").read()
header_len = struct.unpack("<Q", raw[:8])[0]
header = json.loads(raw[8 : 8 + header_len])
W = {}
for name, info in header.items():
    if name == "__metadata__" or info["dtype"] != "F32":
        continue  # position_ids is I64 and unused
    start, end = info["data_offsets"]
    data = raw[8 + header_len + start : 8 + header_len + end]
    W[name] = np.frombuffer(data, dtype="<f4").reshape(info["shape"]).astype(np.float64)
cfg = json.load(open(f"{model_dir}/config.json"))
tok = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
tok.no_padding()
tok.enable_truncation(MAX_TOKENS)
erf = np.vectorize(math.erf)


def layer_norm(x, p):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    x = (x - mean) / np.sqrt(var + cfg["layer_norm_eps"])
    return x * W[p + ".weight"] + W[p + ".bias"]


def linear(x, p):
    return x @ W[p + ".weight"].T + W[p + ".bias"]


def embed(text):
    ids = tok.encode(text).ids
    n = len(ids)
    x = (
        W["embeddings.word_embeddings.weight"][ids]
        + W["embeddings.position_embeddings.weight"][:n]
        + W["embeddings.token_type_embeddings.weight"][0]
    )
    x = layer_norm(x, "embeddings.LayerNorm")
    heads = cfg["num_attention_heads"]
    dh = cfg["hidden_size"] // heads
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."

        def split(name):
            return linear(x, p + name).reshape(n, heads, dh).transpose(1, 0, 2)

        q, k, v = split("attention.self.query"), split("attention.self.key"), split("attention.self.value")
        s = q @ k.transpose(0, 2, 1) / math.sqrt(dh)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        ctx = (s @ v).transpose(1, 0, 2).reshape(n, heads * dh)
        x = layer_norm(linear(ctx, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
        h = linear(x, p + "intermediate.dense")
        h = 0.5 * h * (1 + erf(h / math.sqrt(2)))  # exact (erf) GELU, as config's "gelu"
        x = layer_norm(linear(h, p + "output.dense") + x, p + "output.LayerNorm")
    mean = x.mean(0)
    return ids, mean / np.linalg.norm(mean)


out = []
for text in TEXTS:
    ids, vec = embed(text)
    out.append({"text": text, "tokens": len(ids), "vector": [round(float(a), 7) for a in vec]})
json.dump({"max_tokens": MAX_TOKENS, "texts": out}, sys.stdout, indent=1)
sys.stdout.write("\n")
