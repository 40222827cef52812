"""Paged KV cache accounting: only block counts matter to scheduling, not which blocks."""
from __future__ import annotations

from .request import EngineRequest


def blocks_for(tokens: int, block_size: int) -> int:
    return -(-tokens // block_size)


class KVCache:
    """`num_gpu_blocks` blocks of `block_size` tokens; a request holds enough blocks for the tokens
    it has computed (vLLM allocates slots for the tokens an iteration is about to compute)."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.free_blocks = num_blocks

    @property
    def used_blocks(self) -> int:
        return self.num_blocks - self.free_blocks

    @property
    def usage(self) -> float:
        return self.used_blocks / self.num_blocks

    def allocate(self, req: EngineRequest, total_tokens: int) -> bool:
        """Grow `req` to cover `total_tokens`; False (nothing changed) when blocks run out."""
        needed = blocks_for(total_tokens, self.block_size) - req.num_blocks
        if needed > self.free_blocks:
            return False
        if needed > 0:
            self.free_blocks -= needed
            req.num_blocks += needed
        return True

    def free(self, req: EngineRequest) -> None:
        self.free_blocks += req.num_blocks
        req.num_blocks = 0
