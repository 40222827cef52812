"""Request → model inputs, with work bounded regardless of prompt size.

HOT PATH: this runs for every routed request, so it never tokenises the whole prompt. It reads at
most HEAD_CHARS from the start and TAIL_CHARS from the end (the instruction usually sits at one
end: "Summarize the following..." / "...answer in one word"), hashes lower-cased words and word
bigrams into a fixed number of buckets with crc32 (stable across processes, unlike `hash`), and
caps the number of features. Prompt length comes from the caller's token count when given, else
from the character count (chars/4 is close enough on a log scale).
"""
from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass

import numpy as np

from sagesched.predictor.types import PredictQuery

HEAD_CHARS = 2048
TAIL_CHARS = 1024
CHARS_PER_TOKEN = 4.0
NUM_NUMERIC = 9

_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


@dataclass(frozen=True)
class FeatureConfig:
    hash_buckets: int = 16384
    max_features: int = 768


@dataclass(frozen=True)
class Features:
    """Hashed content ids (may be empty: traces without text) and dense numeric features."""

    ids: np.ndarray  # int64, bucket indices
    numeric: np.ndarray  # float32[NUM_NUMERIC]


def bounded_text(prompt: str) -> str:
    if len(prompt) <= HEAD_CHARS + TAIL_CHARS:
        return prompt
    return prompt[:HEAD_CHARS] + " " + prompt[-TAIL_CHARS:]


def prompt_token_estimate(query: PredictQuery, prompt_chars: int | None = None) -> int:
    if query.prompt_tokens > 0:
        return query.prompt_tokens
    chars = len(query.prompt) if prompt_chars is None else prompt_chars
    return max(1, int(chars / CHARS_PER_TOKEN))


def numeric_features(query: PredictQuery, prompt_chars: int | None = None) -> np.ndarray:
    """Log prompt length, request parameters, and whether text was available at all."""
    p = prompt_token_estimate(query, prompt_chars)
    temp = 1.0 if query.temperature is None else float(query.temperature)
    mt = query.max_tokens
    return np.array(
        [
            math.log1p(p) / 10.0,
            (math.log1p(p) / 10.0) ** 2,
            math.log1p(mt) / 10.0 if mt > 0 else 0.0,
            1.0 if mt > 0 else 0.0,
            min(temp, 2.0),
            1.0 if query.temperature is None else 0.0,
            min(len(query.stop), 4) / 4.0,
            1.0 if query.prompt else 0.0,
            min(query.prompt.count("\n", 0, HEAD_CHARS), 64) / 64.0 if query.prompt else 0.0,
        ],
        dtype=np.float32,
    )


def hashed_ids(text: str, config: FeatureConfig) -> np.ndarray:
    """Unigram + bigram bucket ids of the bounded text (deduplicated: presence, not counts)."""
    words = _WORD.findall(bounded_text(text).lower())
    if not words:
        return np.zeros(0, dtype=np.int64)
    crc = zlib.crc32
    ids = {crc(w.encode()) for w in words}
    ids.update(crc(f"{a} {b}".encode()) for a, b in zip(words, words[1:]))
    arr = np.fromiter(ids, dtype=np.int64, count=len(ids)) % config.hash_buckets
    if arr.size > config.max_features:
        arr = arr[: config.max_features]
    return arr


def featurize(query: PredictQuery, config: FeatureConfig, prompt_chars: int | None = None) -> Features:
    """`prompt_chars` lets training pass the original length of a prompt stored pre-bounded."""
    return Features(hashed_ids(query.prompt, config), numeric_features(query, prompt_chars))
