"""Measure engine step times of Llama-3-shaped decoders on the GPU at hand, for fitting a StepTimeProfile.

Why this exists: the shipped profile was analytical. The scheduler's cost model and the simulator are
only as good as the step-time figures behind them, so this script times the real work one engine
iteration does -- full 32-layer forward passes with bf16 weights -- over a grid of batch shapes:

* prefill: one chunk of L prompt tokens (optionally after C tokens already cached);
* decode: B sequences, each holding c tokens of KV, one new token each;
* mixed: one prefill chunk plus B decodes in the same iteration (chunked prefill).

The model is built from its configuration with random weights: a matrix product costs the same for
any values, and random data (not zeros) avoids the faster-on-zeros effect seen on Hopper. Attention
really reads the stated context: decode KV lives in one cache per layer of B x c tokens, prefill
chunks attend causally to their cached prefix plus themselves.

Every iteration is captured once as a CUDA graph and its replays are timed, so the figures are
the GPU's time for the step. A first run (bench/results/calibration/run1-eager/) timed prefill and
mixed steps eagerly: on the lent VM's slow CPU, launching ~20 kernels per layer took longer than
the GPU work for chunks below ~1k tokens (a 128-token prefill of the 1B model took 11.6 ms eagerly,
against 2 ms for a decode step), which measures Python, not the GPU. Engines avoid that cost with
CUDA graphs (vLLM captures decode and, piecewise, mixed batches), so graphs are the better model.

Run (on the GPU machine):  PYTHONUNBUFFERED=1 python3 bench/calibrate_gpu.py --out "$OUT"
(`--models qwen3-32b --decode-kv-gib 50` for the Qwen3-32B shape, which needs a ~140 GB card.)
Raw rows go to `<out>/steps.csv`, run facts (GPU, memory, KV blocks) to `<out>/run.json`; the fit
(`bench/fit_profile.py`) runs on CPU from those files and its summary is printed last.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import causal_lower_right  # causal mask aligned to the keys' end

FUSED_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]


@dataclass(frozen=True)
class ModelShape:
    """A Llama-3-family decoder configuration (Qwen3 adds q/k norms): enough to build it and count its bytes."""

    name: str
    layers: int
    d_model: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    tied_embeddings: bool
    rope_theta: float = 500000.0
    norm_eps: float = 1e-5
    qk_norm: bool = False  # Qwen3: RMSNorm over head_dim on each query and key head before RoPE

    @property
    def weight_params(self) -> int:
        d, hd = self.d_model, self.head_dim
        per_layer = (
            d * (self.heads + 2 * self.kv_heads) * hd  # qkv
            + self.heads * hd * d  # o
            + 3 * d * self.ffn  # gate, up, down
            + 2 * d  # norms
            + (2 * hd if self.qk_norm else 0)  # q/k norms
        )
        head = 0 if self.tied_embeddings else self.vocab * d
        return self.layers * per_layer + self.vocab * d + head + d

    @property
    def kv_bytes_per_token(self) -> int:
        """bf16 K and V over all layers: what one cached token costs in device memory."""
        return 2 * self.layers * self.kv_heads * self.head_dim * 2


LLAMA3_8B = ModelShape("llama3-8b", 32, 4096, 32, 8, 128, 14336, 128256, False)
LLAMA32_1B = ModelShape("llama3.2-1b", 16, 2048, 32, 8, 64, 8192, 128256, True)
# Qwen3-32B: 64 query heads x 128 = 8192 wide attention on a 5120 residual; no qkv bias.
QWEN3_32B = ModelShape(
    "qwen3-32b", 64, 5120, 64, 8, 128, 25600, 151936, False, rope_theta=1000000.0, norm_eps=1e-6, qk_norm=True
)
MODELS = {m.name: m for m in (LLAMA3_8B, LLAMA32_1B, QWEN3_32B)}


@dataclass(frozen=True)
class StepShape:
    """One engine iteration: an optional prefill chunk and an optional group of decodes."""

    kind: str  # prefill | decode | mixed
    prefill_len: int = 0  # L: new prompt tokens in the chunk
    prefill_cached: int = 0  # C: tokens of that prompt already in KV
    decode_batch: int = 0  # B
    decode_ctx: int = 0  # c: KV tokens each decoding sequence holds before this step

    @property
    def batched_tokens(self) -> int:
        return self.prefill_len + self.decode_batch

    @property
    def num_seqs(self) -> int:
        return (1 if self.prefill_len else 0) + self.decode_batch

    @property
    def decode_context_tokens(self) -> int:
        return self.decode_batch * self.decode_ctx

    @property
    def prefill_attention_pairs(self) -> float:
        L = self.prefill_len
        return L * (self.prefill_cached + L / 2.0)


class Decoder:
    """A minimal Llama-3 decoder over flat token batches, holding its own KV buffers.

    Weights are plain tensors (no nn.Module): nothing here trains, and plain tensors keep the
    forward pass a readable list of the kernels an inference engine runs.
    """

    def __init__(self, shape: ModelShape, device: torch.device, max_pos: int) -> None:
        self.s = shape
        self.device = device
        dt = torch.bfloat16
        d, hd, H, K = shape.d_model, shape.head_dim, shape.heads, shape.kv_heads
        g = torch.Generator(device=device).manual_seed(1234)

        def rand(*size: int, std: float = 0.02) -> torch.Tensor:
            return torch.randn(*size, dtype=dt, device=device, generator=g) * std

        self.embed = rand(shape.vocab, d)
        self.layers = []
        for _ in range(shape.layers):
            layer = {
                "attn_norm": 1.0 + rand(d),
                "wqkv": rand((H + 2 * K) * hd, d),
                "wo": rand(d, H * hd),
                "ffn_norm": 1.0 + rand(d),
                "w_gate_up": rand(2 * shape.ffn, d),
                "w_down": rand(d, shape.ffn),
            }
            if shape.qk_norm:
                layer["q_norm"], layer["k_norm"] = 1.0 + rand(hd), 1.0 + rand(hd)
            self.layers.append(layer)
        self.final_norm = 1.0 + rand(d)
        self.lm_head = self.embed if shape.tied_embeddings else rand(shape.vocab, d)
        inv = 1.0 / (shape.rope_theta ** (torch.arange(0, hd, 2, device=device, dtype=torch.float32) / hd))
        ang = torch.outer(torch.arange(max_pos, device=device, dtype=torch.float32), inv)
        self.cos, self.sin = ang.cos().to(dt), ang.sin().to(dt)
        self.decode_k: list[torch.Tensor] = []
        self.decode_v: list[torch.Tensor] = []
        self.prefill_k: list[torch.Tensor] = []
        self.prefill_v: list[torch.Tensor] = []
        self.decode_attn = "bmm"
        self.prefill_expand_kv = False

    def weight_bytes(self) -> int:
        return self.s.weight_params * 2

    def alloc_kv(self, decode_tokens: int, prefill_tokens: int) -> None:
        """Per-layer KV buffers, filled with random values so reads are of real data.

        Decode cache: a flat buffer per layer viewed as [B, kv_heads, c+1, head_dim] for each grid
        point, so one sequence's keys are contiguous and the B x kv_heads batch collapses into one
        strided batch for the attention products. Prefill cache: [kv_heads, C+L, head_dim].
        """
        K, hd = self.s.kv_heads, self.s.head_dim
        self.decode_k, self.decode_v, self.prefill_k, self.prefill_v = [], [], [], []
        for _ in range(self.s.layers):
            for lst, n in ((self.decode_k, decode_tokens), (self.decode_v, decode_tokens)):
                lst.append(torch.empty(n * K * hd, dtype=torch.bfloat16, device=self.device).normal_())
            for lst in (self.prefill_k, self.prefill_v):
                lst.append(torch.empty(K, prefill_tokens, hd, dtype=torch.bfloat16, device=self.device).normal_())

    def rope(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Rotary embedding, rotate-half form as Llama uses; x is [T, heads, head_dim]."""
        half = self.s.head_dim // 2
        cos, sin = self.cos[pos].unsqueeze(1), self.sin[pos].unsqueeze(1)
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)

    def decode_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int, B: int, c: int) -> torch.Tensor:
        """Append one token per sequence and attend over its c+1 cached tokens; q is [B, H, hd]."""
        K, hd, H = self.s.kv_heads, self.s.head_dim, self.s.heads
        n = B * K * (c + 1) * hd
        kc = self.decode_k[layer][:n].view(B, K, c + 1, hd)
        vc = self.decode_v[layer][:n].view(B, K, c + 1, hd)
        kc[:, :, c] = k.view(B, K, hd)
        vc[:, :, c] = v.view(B, K, hd)
        if self.decode_attn == "sdpa":
            with sdpa_kernel(FUSED_BACKENDS):
                o = F.scaled_dot_product_attention(q.view(B, H, 1, hd), kc, vc, enable_gqa=True)
            return o.reshape(B, H * hd)
        # Grouped-query attention as two strided batched products: the H/K query heads that share
        # a KV head form the M dimension, so each K/V element is read once.
        G = H // K
        qg = (q * (hd ** -0.5)).view(B * K, G, hd)
        scores = torch.bmm(qg, kc.view(B * K, c + 1, hd).transpose(1, 2))
        p = torch.softmax(scores.float(), dim=-1).to(torch.bfloat16)
        return torch.bmm(p, vc.view(B * K, c + 1, hd)).view(B, H * hd)

    def prefill_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int, L: int, C: int) -> torch.Tensor:
        """Store the chunk's K/V after its C cached tokens and attend causally; q is [L, H, hd]."""
        kc, vc = self.prefill_k[layer], self.prefill_v[layer]
        kc[:, C : C + L] = k.transpose(0, 1)
        vc[:, C : C + L] = v.transpose(0, 1)
        qh = q.transpose(0, 1).unsqueeze(0)
        kk, vv = kc[:, : C + L].unsqueeze(0), vc[:, : C + L].unsqueeze(0)
        if self.prefill_expand_kv:
            # Fallback when no fused kernel takes grouped KV heads with this mask: expand them,
            # at the cost of one extra copy of the chunk's KV per layer (recorded in run.json).
            rep = self.s.heads // self.s.kv_heads
            kk, vv = kk.repeat_interleave(rep, dim=1), vv.repeat_interleave(rep, dim=1)
        gqa = not self.prefill_expand_kv
        # Only fused kernels: the math fallback would materialise L x (C+L) scores and mis-time.
        with sdpa_kernel(FUSED_BACKENDS):
            if C == 0:
                o = F.scaled_dot_product_attention(qh, kk, vv, is_causal=True, enable_gqa=gqa)
            else:
                o = F.scaled_dot_product_attention(qh, kk, vv, attn_mask=causal_lower_right(L, C + L), enable_gqa=gqa)
        return o[0].transpose(0, 1).reshape(L, -1)

    def forward(self, ids: torch.Tensor, pos: torch.Tensor, last_idx: torch.Tensor, st: StepShape) -> torch.Tensor:
        """One engine iteration: all layers over the flat batch, logits only where a token is sampled."""
        s = self.s
        H, K, hd = s.heads, s.kv_heads, s.head_dim
        L, B = st.prefill_len, st.decode_batch
        T = L + B
        h = self.embed[ids]
        for i, w in enumerate(self.layers):
            x = F.rms_norm(h, (s.d_model,), w["attn_norm"], s.norm_eps)
            qkv = F.linear(x, w["wqkv"])
            q = qkv[:, : H * hd].view(T, H, hd)
            k = qkv[:, H * hd : (H + K) * hd].view(T, K, hd)
            v = qkv[:, (H + K) * hd :].view(T, K, hd)
            if s.qk_norm:
                q = F.rms_norm(q, (hd,), w["q_norm"], s.norm_eps)
                k = F.rms_norm(k, (hd,), w["k_norm"], s.norm_eps)
            q, k = self.rope(q, pos), self.rope(k, pos)
            parts = []
            if L:
                parts.append(self.prefill_attention(q[:L], k[:L], v[:L], i, L, st.prefill_cached))
            if B:
                parts.append(self.decode_attention(q[L:], k[L:], v[L:], i, B, st.decode_ctx))
            attn = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
            h = h + F.linear(attn, w["wo"])
            x = F.rms_norm(h, (s.d_model,), w["ffn_norm"], s.norm_eps)
            gate, up = F.linear(x, w["w_gate_up"]).chunk(2, dim=-1)
            h = h + F.linear(F.silu(gate) * up, w["w_down"])
        x = F.rms_norm(h[last_idx], (s.d_model,), self.final_norm, s.norm_eps)
        return F.linear(x, self.lm_head).argmax(dim=-1)


def step_inputs(model: Decoder, st: StepShape) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random token ids, the true positions of every token, and the rows that get sampled."""
    dev = model.device
    L, B = st.prefill_len, st.decode_batch
    ids = torch.randint(0, model.s.vocab, (L + B,), device=dev)
    pos = torch.cat(
        (
            torch.arange(st.prefill_cached, st.prefill_cached + L, device=dev),
            torch.full((B,), st.decode_ctx, device=dev, dtype=torch.long),
        )
    )
    last = ([L - 1] if L else []) + list(range(L, L + B))
    return ids, pos, torch.tensor(last, device=dev)


def time_step(fn: Callable[[], object], use_graph: bool, budget_s: float) -> tuple[list[float], str]:
    """Median-ready per-iteration times (seconds) from CUDA events, iterations back to back.

    Warm-up runs first (kernel selection, allocator growth); the repeat count follows a per-point
    time budget so cheap points get many samples and 8k-token prefills a handful.
    """
    mode = "eager"
    run = fn
    graph = None
    if use_graph:
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    fn()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                fn()
            run, mode = graph.replay, "graph"
        except Exception as exc:  # noqa: BLE001 - fall back, but say so in the row
            print(f"  graph capture failed ({exc!r}); timing eagerly", file=sys.stderr)
            graph, run, mode = None, fn, "eager"
    for _ in range(2):
        run()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    run()
    torch.cuda.synchronize()
    est = max(time.perf_counter() - t0, 1e-4)
    reps = int(min(40, max(5, budget_s / est)))
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for a, b in events:
        a.record()
        run()
        b.record()
    torch.cuda.synchronize()
    del graph
    return [a.elapsed_time(b) / 1e3 for a, b in events], mode


def grid(decode_cap_tokens: int, prefill_cap_tokens: int) -> list[StepShape]:
    """The measured points: few enough to time a 32-layer model in minutes, spread in log space."""
    pts: list[StepShape] = []
    for L in (128, 256, 512, 1024, 2048, 3072, 4096, 6144, 8192):
        pts.append(StepShape("prefill", prefill_len=L))
    for L, C in ((512, 2048), (512, 8192), (2048, 2048), (2048, 8192), (4096, 4096), (1024, 12288)):
        if L + C <= prefill_cap_tokens:
            pts.append(StepShape("prefill", prefill_len=L, prefill_cached=C))
    for B in (1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 160, 192, 256):
        for c in (128, 512, 1024, 2048, 4096, 8192):
            if B * (c + 1) <= decode_cap_tokens:
                pts.append(StepShape("decode", decode_batch=B, decode_ctx=c))
    for L in (128, 512, 2048):
        for C in (0, 4096):
            for B in (4, 32, 128):
                for c in (512, 2048):
                    if B * (c + 1) <= decode_cap_tokens and L + C <= prefill_cap_tokens:
                        pts.append(StepShape("mixed", L, C, B, c))
    return pts


def check_attention(model: Decoder) -> dict[str, float]:
    """Both attention paths against a float64 reference on small random inputs (fresh each call)."""
    s = model.s
    H, K, hd = s.heads, s.kv_heads, s.head_dim
    dev = model.device
    errs: dict[str, float] = {}
    B, c = 3, 37
    q = torch.randn(B, H, hd, device=dev, dtype=torch.bfloat16)
    k = torch.randn(B, K, hd, device=dev, dtype=torch.bfloat16)
    v = torch.randn(B, K, hd, device=dev, dtype=torch.bfloat16)
    for impl in ("bmm", "sdpa"):
        model.decode_attn = impl
        try:
            out = model.decode_attention(q, k, v, 0, B, c).double().view(B, H, hd)
        except RuntimeError as exc:
            print(f"  decode attention {impl} unavailable: {exc!r}", file=sys.stderr)
            continue
        n = B * K * (c + 1) * hd
        kc = model.decode_k[0][:n].view(B, K, c + 1, hd).double().repeat_interleave(H // K, dim=1)
        vc = model.decode_v[0][:n].view(B, K, c + 1, hd).double().repeat_interleave(H // K, dim=1)
        p = torch.softmax(torch.einsum("bhd,bhtd->bht", q.double(), kc) * hd ** -0.5, dim=-1)
        ref = torch.einsum("bht,bhtd->bhd", p, vc)
        errs[f"decode_{impl}"] = float((out - ref).norm() / ref.norm())
    L, C = 19, 23
    q = torch.randn(L, H, hd, device=dev, dtype=torch.bfloat16)
    k = torch.randn(L, K, hd, device=dev, dtype=torch.bfloat16)
    v = torch.randn(L, K, hd, device=dev, dtype=torch.bfloat16)
    try:
        model.prefill_attention(q, k, v, 0, L, 0)
        out = model.prefill_attention(q, k, v, 0, L, C).double().view(L, H, hd)
    except RuntimeError as exc:
        print(f"  grouped-KV fused prefill attention unavailable ({exc!r}); expanding KV heads", file=sys.stderr)
        model.prefill_expand_kv = True
        out = model.prefill_attention(q, k, v, 0, L, C).double().view(L, H, hd)
    kc = model.prefill_k[0][:, : C + L].double().repeat_interleave(H // K, dim=0)
    vc = model.prefill_v[0][:, : C + L].double().repeat_interleave(H // K, dim=0)
    sc = torch.einsum("lhd,htd->hlt", q.double(), kc) * hd ** -0.5
    mask = torch.arange(C + L, device=dev)[None, :] > (C + torch.arange(L, device=dev))[:, None]
    p = torch.softmax(sc.masked_fill(mask, float("-inf")), dim=-1)
    ref = torch.einsum("hlt,htd->lhd", p, vc)
    errs["prefill_sdpa"] = float((out - ref).norm() / ref.norm())
    return errs


def pick_decode_attention(model: Decoder) -> dict[str, float]:
    """Time both decode attention paths on one layer at a few shapes; keep the faster in total.

    Either reads exactly the stated KV; the engine would use its fastest kernel, so should we.
    """
    s = model.s
    totals: dict[str, float] = {}
    for impl in ("bmm", "sdpa"):
        model.decode_attn = impl
        tot = 0.0
        try:
            for B, c in ((1, 4096), (32, 2048), (128, 1024)):
                q = torch.randn(B, s.heads, s.head_dim, device=model.device, dtype=torch.bfloat16)
                k = torch.randn(B, s.kv_heads, s.head_dim, device=model.device, dtype=torch.bfloat16)
                times, _ = time_step(lambda: model.decode_attention(q, k, k, 0, B, c), use_graph=True, budget_s=0.05)
                tot += statistics.median(times)
        except RuntimeError as exc:
            print(f"  decode attention {impl} unavailable: {exc!r}", file=sys.stderr)
            tot = math.inf
        totals[impl] = tot
    model.decode_attn = min(totals, key=totals.__getitem__)
    return totals


def calibrate(shape: ModelShape, out: Path, decode_kv_gib: float, point_budget_s: float) -> dict[str, object]:
    """Build the model, measure memory facts and the step grid; write rows and return run facts."""
    dev = torch.device("cuda")
    torch.cuda.empty_cache()
    free0, total = torch.cuda.mem_get_info()
    reserved0 = torch.cuda.memory_reserved()
    non_torch = (total - free0) - reserved0  # CUDA context, cuBLAS workspaces outside the allocator
    prefill_cap = 16384
    model = Decoder(shape, dev, max_pos=prefill_cap + 8192 + 16)
    torch.cuda.synchronize()
    weights = torch.cuda.memory_allocated()
    # Activation peak of the largest iteration the engine allows (8192 batched tokens), measured as
    # vLLM's profile run does: before the KV cache exists, with the chunk's own K/V as activations.
    model.alloc_kv(decode_tokens=256 * 2, prefill_tokens=8192)
    kv_small = torch.cuda.memory_allocated() - weights
    errs = check_attention(model)
    print(f"[{shape.name}] attention rel. error vs float64: {errs}")
    if not errs or max(errs.values()) > 2e-2 or any(math.isnan(e) for e in errs.values()):
        raise RuntimeError(f"attention check failed: {errs}")
    model.decode_attn = "bmm"
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    for st in (StepShape("prefill", prefill_len=8192), StepShape("decode", decode_batch=256, decode_ctx=1)):
        ids, pos, last = step_inputs(model, st)
        model.forward(ids, pos, last, st)
    torch.cuda.synchronize()
    act_peak = torch.cuda.max_memory_allocated() - base + kv_small
    block_size = 16
    budget = 0.9 * total - weights - act_peak - non_torch
    num_gpu_blocks = int(budget // (block_size * shape.kv_bytes_per_token))
    print(
        f"[{shape.name}] weights {weights / 2**30:.2f} GiB, activation peak {act_peak / 2**30:.2f} GiB, "
        f"non-torch {non_torch / 2**30:.2f} GiB, total {total / 2**30:.2f} GiB -> {num_gpu_blocks} blocks "
        f"({num_gpu_blocks * block_size} KV tokens)"
    )
    model.alloc_kv(0, 0)
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info()
    decode_cap = int(min(decode_kv_gib * 2**30, free - 10 * 2**30) // shape.kv_bytes_per_token)
    model.alloc_kv(decode_tokens=decode_cap, prefill_tokens=prefill_cap)
    attn_times = pick_decode_attention(model)
    print(f"[{shape.name}] decode attention timing (s, 3 shapes, 1 layer): {attn_times} -> {model.decode_attn}")

    rows: list[dict[str, object]] = []
    pts = grid(decode_cap, prefill_cap)
    t_start = time.perf_counter()
    for n, st in enumerate(pts):
        ids, pos, last = step_inputs(model, st)
        times, mode = time_step(lambda: model.forward(ids, pos, last, st), True, point_budget_s)
        times.sort()
        row = {
            "model": shape.name,
            **asdict(st),
            "batched_tokens": st.batched_tokens,
            "num_seqs": st.num_seqs,
            "decode_context_tokens": st.decode_context_tokens,
            "prefill_attention_pairs": st.prefill_attention_pairs,
            "median_s": statistics.median(times),
            "p10_s": times[len(times) // 10],
            "p90_s": times[(9 * len(times)) // 10],
            "reps": len(times),
            "mode": mode,
        }
        rows.append(row)
        print(
            f"  {n + 1:3d}/{len(pts)} {st.kind:7s} L={st.prefill_len:5d} C={st.prefill_cached:5d} "
            f"B={st.decode_batch:3d} c={st.decode_ctx:5d} {mode:5s} {row['median_s'] * 1e3:9.3f} ms (n={len(times)})"
        )
        torch.cuda.empty_cache()
    elapsed = time.perf_counter() - t_start
    csv_path = out / f"steps-{shape.name}.csv"
    with csv_path.open("w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    facts = {
        "model": asdict(shape),
        "weight_bytes": weights,
        "activation_peak_bytes": act_peak,
        "non_torch_bytes": non_torch,
        "total_bytes": total,
        "gpu_memory_utilization": 0.9,
        "block_size": block_size,
        "kv_bytes_per_token": shape.kv_bytes_per_token,
        "num_gpu_blocks": num_gpu_blocks,
        "decode_kv_buffer_tokens": decode_cap,
        "decode_attention": model.decode_attn,
        "prefill_expand_kv": model.prefill_expand_kv,
        "decode_attention_times_s": attn_times,
        "attention_check_rel_err": errs,
        "grid_seconds": elapsed,
        "points": len(rows),
    }
    del model
    torch.cuda.empty_cache()
    return facts


def summary_table(out: Path, names: list[str], fits: dict[str, dict]) -> str:
    """The short table printed last: prefill throughput, decode step times, fit error."""
    lines = []
    for name in names:
        with (out / f"steps-{name}.csv").open() as f:
            rows = list(csv.DictReader(f))
        pre = {int(r["prefill_len"]): float(r["median_s"]) for r in rows if r["kind"] == "prefill" and r["prefill_cached"] == "0"}
        dec = {(int(r["decode_batch"]), int(r["decode_ctx"])): float(r["median_s"]) for r in rows if r["kind"] == "decode"}
        lines.append(f"== {name}")
        lines.append("prefill tokens/s: " + "  ".join(f"{L}:{L / t:,.0f}" for L, t in sorted(pre.items())))
        ctxs = sorted({c for _, c in dec})
        lines.append("decode step ms   " + "".join(f"c={c:<7d}" for c in ctxs))
        for B in (1, 32, 128):
            lines.append(f"  batch {B:3d}       " + "".join(f"{dec[(B, c)] * 1e3:<9.2f}" if (B, c) in dec else f"{'-':<9s}" for c in ctxs))
        fit = fits.get(name)
        if fit:
            lines.append(
                f"fit: held-out median |err| {fit['holdout_median_abs_pct_err']:.2f}% (max {fit['holdout_max_abs_pct_err']:.1f}%), "
                f"train median {fit['train_median_abs_pct_err']:.2f}%, coef {fit['coefficients']}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument(
        "--models",
        default="llama3-8b,llama3.2-1b",
        help=f"comma-separated shapes to time, in order; known: {', '.join(MODELS)} (default: %(default)s)",
    )
    ap.add_argument("--decode-kv-gib", type=float, default=36.0, help="KV buffer for the decode grid")
    ap.add_argument("--point-budget-s", type=float, default=0.35, help="timed seconds per grid point")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; known: {', '.join(MODELS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    torch.backends.cuda.matmul.allow_tf32 = False
    props = torch.cuda.get_device_properties(0)
    run = {
        "gpu": torch.cuda.get_device_name(0),
        "sm_count": props.multi_processor_count,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "command": " ".join(sys.argv),
        "models": {},
    }
    print(f"GPU {run['gpu']} ({run['sm_count']} SMs), torch {run['torch']}, CUDA {run['cuda']}")
    t0 = time.perf_counter()
    for name in names:
        run["models"][name] = calibrate(MODELS[name], args.out, args.decode_kv_gib, args.point_budget_s)
        (args.out / "run.json").write_text(json.dumps(run, indent=2) + "\n")
    run["total_seconds"] = time.perf_counter() - t0
    (args.out / "run.json").write_text(json.dumps(run, indent=2) + "\n")
    fits: dict[str, dict] = {}
    try:
        try:
            from sagesched.bench import fit_profile
        except ImportError:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            import fit_profile  # type: ignore[no-redef]
        for name in names:
            fits[name] = fit_profile.fit_file(args.out / f"steps-{name}.csv")
        (args.out / "fit.json").write_text(json.dumps(fits, indent=2) + "\n")
    except Exception as exc:  # noqa: BLE001 - the raw data matters more than the on-device fit
        print(f"fit failed on device: {exc!r} (refit on CPU from the CSV)")
    print(summary_table(args.out, names, fits))


if __name__ == "__main__":
    main()
