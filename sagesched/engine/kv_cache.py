"""Paged KV cache accounting: only block counts matter to scheduling, not which blocks.

Automatic prefix caching, as vLLM does it: the blocks of an aborted or preempted request go back to
the free pool but keep their contents, so a later request that starts with the same tokens (its
continuation, keyed by `cache_key`) finds them computed. Cached blocks are free blocks: any
allocation may take them, least recently freed first, and a request's tail blocks go before its
head (vLLM frees a request's blocks in reverse order), so what survives of an entry is a prefix.
Eviction is eager, at the allocation that needs the blocks (`take`), as in vLLM: a request that frees
a partly filled block returns more free blocks than it caches, so evicting later would keep blocks
that vLLM had already reused.
"""
from __future__ import annotations

from collections import OrderedDict

from sagesched.engine.request import EngineRequest


def blocks_for(tokens: int, block_size: int) -> int:
    return -(-tokens // block_size)


class KVCache:
    """`num_gpu_blocks` blocks of `block_size` tokens; a request holds enough blocks for the tokens
    it has computed (vLLM allocates slots for the tokens an iteration is about to compute)."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.free_blocks = num_blocks
        self._cached: OrderedDict[str, int] = OrderedDict()  # cache key -> full blocks kept, LRU first
        self._cached_total = 0
        self.hit_tokens = 0  # vLLM's prefix_cache_hits, in tokens
        self.queried_tokens = 0  # vLLM's prefix_cache_queries, in tokens

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
            self.take(needed)
            req.num_blocks += needed
        return True

    def take(self, blocks: int) -> None:
        """`blocks` free blocks are allocated; cached ones go if uncached ones run out."""
        self.free_blocks -= blocks
        if self._cached_total > self.free_blocks:
            self._evict()

    def free(self, req: EngineRequest) -> None:
        """Return `req`'s blocks; with a cache key, its full computed blocks stay findable."""
        self.free_blocks += req.num_blocks
        kept = min(req.num_computed_tokens // self.block_size, req.num_blocks)
        req.num_blocks = 0
        if req.cache_key is not None and kept > 0:
            # an entry of the same key (an identical prompt) is the same prefix: the longer one covers both
            older = self._cached.pop(req.cache_key, 0)
            kept = max(kept, older)
            self._cached_total += kept - older
            self._cached[req.cache_key] = kept

    # --- prefix cache -------------------------------------------------------------------------------
    def _evict(self) -> None:
        """Cut the entries back to the free blocks, least recently freed first, tails first."""
        excess = self._cached_total - self.free_blocks
        while excess > 0:
            key, kept = next(iter(self._cached.items()))
            cut = min(kept, excess)
            excess -= cut
            self._cached_total -= cut
            if cut == kept:
                del self._cached[key]
            else:
                self._cached[key] = kept - cut

    def cached_blocks(self, key: str | None, tokens: int, free: int | None = None) -> int:
        """Blocks of a prompt of `tokens` tokens that its key finds computed (at least one token
        is always computed anew, as in vLLM, so the model has a position to sample from); with
        `free`, as they will be once allocations have left that many free blocks (nothing changes)."""
        if key is None or key not in self._cached:
            return 0
        kept = self._cached[key]
        if free is not None and self._cached_total > free:
            older = 0
            for other, blocks in self._cached.items():  # oldest first
                if other == key:
                    break
                older += blocks
            kept = max(0, min(kept, older + kept - (self._cached_total - free)))
        return min(kept, (tokens - 1) // self.block_size)

    def claim(self, req: EngineRequest, blocks: int) -> None:
        """`req` takes `blocks` cached blocks of its key as its own computed prefix."""
        self.queried_tokens += req.num_tokens
        if blocks <= 0:
            return
        self._cached_total -= self._cached.pop(req.cache_key)  # blocks past the prompt: plain free
        self.take(blocks)
        req.num_blocks = blocks
        req.num_computed_tokens = blocks * self.block_size
        self.hit_tokens += req.num_computed_tokens

    @property
    def cached_total(self) -> int:
        return self._cached_total
