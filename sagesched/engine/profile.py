"""Hardware/model profiles: how long one engine iteration takes, and how much KV cache a pod has.

A profile is data (JSON files in `profiles/`), so calibrating on a new GPU adds a file rather than
code. The step-time form is a roofline: the weight-streaming floor and the GEMM compute for the
batched tokens overlap (max), attention adds a term for the KV tokens decode reads and a quadratic
term for prefill chunks attending to their own context, and each sequence adds bookkeeping.

    step_s = max(base_s, per_token_s * batched_tokens)
             + per_seq_s * num_seqs
             + per_ctx_token_s * decode_context_tokens
             + per_prefill_attn_s * prefill_attention_pairs

where `prefill_attention_pairs` = sum over prefill chunks of chunk_len * (tokens already cached +
chunk_len / 2): the causal attention work of that chunk.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

PROFILE_DIR = Path(__file__).with_name("profiles")
DEFAULT_PROFILE = "h100-llama3-8b"


@dataclass(frozen=True)
class StepTimeProfile:
    """One (GPU, model, engine settings) combination."""

    name: str
    gpu: str
    model: str
    # step-time coefficients, seconds
    base_s: float
    per_token_s: float
    per_seq_s: float
    per_ctx_token_s: float
    per_prefill_attn_s: float
    # memory and scheduler limits, as the engine reports them (vllm:cache_config_info)
    block_size: int = 16
    num_gpu_blocks: int = 25000
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    max_model_len: int = 8192
    provenance: str = ""
    fit: dict = field(default_factory=dict)

    @property
    def kv_capacity_tokens(self) -> int:
        return self.block_size * self.num_gpu_blocks

    def step_seconds(
        self,
        batched_tokens: int | float,
        num_seqs: int | float,
        decode_context_tokens: int | float,
        prefill_attention_pairs: int | float = 0,
    ) -> float:
        """Duration of one engine iteration for a batch described by these totals."""
        if num_seqs <= 0:
            return 0.0
        return (
            max(self.base_s, self.per_token_s * batched_tokens)
            + self.per_seq_s * num_seqs
            + self.per_ctx_token_s * decode_context_tokens
            + self.per_prefill_attn_s * prefill_attention_pairs
        )

    def decode_step_seconds(self, batch: int, context_tokens: int) -> float:
        """A pure-decode iteration: `batch` sequences holding `context_tokens` KV tokens in all."""
        return self.step_seconds(batch, batch, context_tokens)

    def prefill_seconds(self, prompt_tokens: int, cached_tokens: int = 0) -> float:
        """One sequence's prefill of `prompt_tokens` new tokens in a single iteration."""
        pairs = prompt_tokens * (cached_tokens + prompt_tokens / 2.0)
        return self.step_seconds(prompt_tokens, 1, 0, pairs)

    def with_overrides(self, **changes: object) -> "StepTimeProfile":
        data = asdict(self)
        data.update(changes)
        return StepTimeProfile(**data)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.json"))


def load_profile(name_or_path: str = DEFAULT_PROFILE) -> StepTimeProfile:
    """Load a shipped profile by name, or any profile JSON by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILE_DIR / f"{name_or_path}.json"
    if not path.exists():
        raise ValueError(
            f"unknown engine profile {name_or_path!r}; shipped profiles: {', '.join(available_profiles())}"
        )
    return StepTimeProfile(**json.loads(path.read_text()))
