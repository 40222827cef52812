"""Live benchmarks over real sockets: `sagesched bench live` and `sagesched bench overhead`.

`live` replays a slice of a trace (arrival times, prompt and output lengths) against any
OpenAI-compatible URL with the official `openai` client, asking each request for exactly its traced
output length (`max_tokens` = true length, `ignore_eos`, as vLLM's own benchmarks do), and prints
TTFT/TTLT percentiles and throughput. `sagesched demo` runs the same replay against emulated pods.

`overhead` (bench/overhead.py) puts one router process in front of pods that answer instantly, driven
by a load generator in a third process, and measures what the router itself costs: the decision
time, the latency it adds over calling the pods directly at a range of request rates, and how many
concurrent streams it holds.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from dataclasses import dataclass, field

import numpy as np

WORD = "tok"  # one token for the emulator's counter and for the router's chars/4 estimate


@dataclass
class Outcome:
    arrival: float  # scheduled send time, seconds from the start
    prompt_tokens: int
    output_tokens: int  # asked for
    ttft: float | None = None
    ttlt: float | None = None
    received_tokens: int = 0
    error: str = ""


@dataclass
class Summary:
    label: str
    outcomes: list[Outcome] = field(default_factory=list)
    makespan: float = 0.0
    time_scale: float = 1.0  # wall seconds per emulated second; latencies are reported in emulated seconds

    @property
    def ok(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.error and o.ttlt is not None]

    def stats(self, attr: str) -> dict[str, float]:
        values = np.array([getattr(o, attr) for o in self.ok if getattr(o, attr) is not None]) / self.time_scale
        if values.size == 0:
            return {k: float("nan") for k in ("mean", "p50", "p90", "p99")}
        return {"mean": float(values.mean()), "p50": float(np.percentile(values, 50)),
                "p90": float(np.percentile(values, 90)), "p99": float(np.percentile(values, 99))}

    @property
    def throughput_rps(self) -> float:
        return len(self.ok) / (self.makespan / self.time_scale) if self.makespan > 0 else 0.0

    @property
    def throughput_tps(self) -> float:
        tokens = sum(o.received_tokens for o in self.ok)
        return tokens / (self.makespan / self.time_scale) if self.makespan > 0 else 0.0


def trace_slice(name: str, count: int, start: int = 0, max_output: int | None = None,
                max_prompt: int | None = None):
    """(arrivals from 0, prompts, outputs) of `count` consecutive trace requests."""
    from sagesched.traces import load_trace

    trace = load_trace(name).slice(start, start + count)
    arrivals = trace.arrivals - trace.arrivals[0]
    prompts, outputs = trace.prompts.copy(), trace.outputs.copy()
    if max_output:
        outputs = np.minimum(outputs, max_output)
    if max_prompt:
        prompts = np.minimum(prompts, max_prompt)
    return arrivals, prompts, outputs


def prompt_text(tokens: int, uid: int | None = None) -> str:
    """`tokens` words; with `uid`, the first is that number in base 36 (one token up to 36^4), so
    requests of equal length do not share a prompt (and a prefix cache) unless a real workload would."""
    words = [WORD] * max(1, tokens)
    if uid is not None:
        words[0] = np.base_repr(uid % 36**4, 36).lower()
    return " ".join(words)


_CONTENT = re.compile(r'"(?:content|text)":\s*"[^"]')  # a chunk that carries generated text
_USAGE = re.compile(r'"usage":\s*\{')


async def _one_request(client, model: str, out: Outcome, start: float) -> None:
    delay = start + out.arrival - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)
    await stream_request(client, model, out, time.perf_counter)


def length_fields(tokens: int, hidden: bool) -> dict:
    """How a request asks for exactly `tokens` output tokens. Plainly (`max_tokens` + `ignore_eos`, as
    vLLM's benchmarks do), the router sees the length as the request's cap; `hidden`, only `min_tokens`
    is sent, which pods that end each answer as early as they may (emulated pods with output median 1
    and no spread) honour exactly, while the router learns nothing from it."""
    if hidden:
        return {"extra_body": {"min_tokens": tokens}}
    return {"max_tokens": tokens, "extra_body": {"ignore_eos": True, "min_tokens": tokens}}


async def stream_request(client, model: str, out: Outcome, clock, user: str | None = None,
                         hide_length: bool = False, uid: int | None = None) -> None:
    """Send `out`'s request (its prompt made unique by `uid`) and record its TTFT/TTLT in seconds of
    `clock` after sending, the tokens received, or the error; a failed request is a result, not a
    crash of the caller."""
    sent = clock()
    tagged = {} if user is None else {"user": user}
    try:
        # The official client builds, sends and checks the request; its raw streaming response is read
        # line by line because building a typed object per token would cost the load generator more
        # CPU than the router under test spends.
        async with client.chat.completions.with_streaming_response.create(
            model=model, messages=[{"role": "user", "content": prompt_text(out.prompt_tokens, uid)}],
            stream=True, stream_options={"include_usage": True},
            **length_fields(int(out.output_tokens), hide_length), **tagged,
        ) as response:
            async for line in response.iter_lines():
                if out.ttft is None and _CONTENT.search(line):
                    out.ttft = clock() - sent
                elif _USAGE.search(line):
                    out.received_tokens = json.loads(line[len("data: "):])["usage"]["completion_tokens"]
        out.ttlt = clock() - sent
        if out.received_tokens != out.output_tokens:
            out.error = f"asked for {out.output_tokens} tokens, got {out.received_tokens}"
    except Exception as exc:
        out.error = f"{exc.__class__.__name__}: {exc}"[:200]


async def replay(base_url: str, model: str, arrivals: np.ndarray, prompts: np.ndarray, outputs: np.ndarray,
                 label: str = "", time_scale: float = 1.0, api_key: str = "none") -> Summary:
    """Send each request at arrivals[i] × time_scale wall seconds after the start (time_scale = wall
    seconds per emulated second, as the emulator counts it); wait for all."""
    import openai

    # The client's default pool (100 connections) would queue requests inside the load generator.
    http = openai.DefaultAsyncHttpxClient(limits=_limits(), timeout=600.0)
    client = openai.AsyncOpenAI(base_url=base_url.rstrip("/") + "/v1", api_key=api_key, http_client=http,
                                max_retries=0)
    outcomes = [Outcome(float(a) * time_scale, int(p), int(o)) for a, p, o in zip(arrivals, prompts, outputs)]
    start = time.perf_counter()
    try:
        await asyncio.gather(*(_one_request(client, model, o, start) for o in outcomes))
    finally:
        await client.close()
    makespan = time.perf_counter() - start
    return Summary(label, outcomes, makespan, time_scale)


def _limits():
    import httpx2

    return httpx2.Limits(max_connections=None, max_keepalive_connections=1000)


def format_table(summaries: list[Summary], unit: str = "s") -> str:
    head = (f"{'policy':<14}{'ok':>5}{'err':>5} | {'TTLT mean':>9}{'p50':>8}{'p90':>8}{'p99':>8} | "
            f"{'TTFT mean':>9}{'p50':>8}{'p90':>8}{'p99':>8} | {'req/s':>6}{'tok/s':>8}")
    lines = [head, "-" * len(head)]
    for s in summaries:
        tl, tf = s.stats("ttlt"), s.stats("ttft")
        lines.append(
            f"{s.label:<14}{len(s.ok):>5}{len(s.outcomes) - len(s.ok):>5} | "
            f"{tl['mean']:>9.2f}{tl['p50']:>8.2f}{tl['p90']:>8.2f}{tl['p99']:>8.2f} | "
            f"{tf['mean']:>9.3f}{tf['p50']:>8.3f}{tf['p90']:>8.3f}{tf['p99']:>8.3f} | "
            f"{s.throughput_rps:>6.2f}{s.throughput_tps:>8.0f}")
    lines.append(f"(latencies in {unit}; throughput: completed requests and output tokens per second of the "
                 "replay's makespan)")
    return "\n".join(lines)


def first_error(summary: Summary) -> str:
    return next((o.error for o in summary.outcomes if o.error), "")


# --- sagesched bench live ---------------------------------------------------------------------
def run_live(args: argparse.Namespace) -> int:
    arrivals, prompts, outputs = trace_slice(args.trace, args.requests, args.start, args.max_output, args.max_prompt)
    if args.rate:
        rng = np.random.default_rng(args.seed)
        arrivals = np.cumsum(rng.exponential(1.0 / args.rate, len(arrivals)))
        arrivals -= arrivals[0]
    summary = asyncio.run(replay(args.url, args.model, arrivals, prompts, outputs, label=args.label))
    print(format_table([summary]))
    if summary.ok != summary.outcomes:
        print(f"first error: {first_error(summary)}")
    return 0


def register_bench(bench: argparse._SubParsersAction) -> None:
    p = bench.add_parser("live", help="replay a trace slice against an OpenAI-compatible URL",
                         description="Replay a slice of an Azure LLM 2023 trace (or a CSV of its columns) "
                                     "against a running router or engine with its arrival times, and print "
                                     "latency and throughput.")
    p.add_argument("--url", required=True, help="base URL of the router or engine (without /v1)")
    p.add_argument("--model", required=True, help="model name sent in every request")
    p.add_argument("--trace", default="conv", help="conv, code, or a CSV path (Azure LLM 2023 columns)")
    p.add_argument("--requests", type=int, default=200, help="trace requests to replay (default %(default)s)")
    p.add_argument("--start", type=int, default=0, help="index of the first trace request")
    p.add_argument("--rate", type=float, default=None, help="Poisson arrivals at this rate (default: trace times)")
    p.add_argument("--max-output", type=int, default=None, help="cap output lengths, tokens (default: no cap)")
    p.add_argument("--max-prompt", type=int, default=None, help="cap prompt lengths, tokens (default: no cap)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --rate Poisson arrivals (default %(default)s)")
    p.add_argument("--label", default="live", help="row label in the printed table (default %(default)s)")
    p.set_defaults(func=run_live)

    o = bench.add_parser("overhead", help="router decision time, added latency and held streams (3 processes)",
                         description="What one router process costs in front of pods that answer at once: "
                                     "decision time, latency added over going straight to the pods, and "
                                     "concurrent slow streams held; pods, router and load generator each run "
                                     "in their own process.")
    o.add_argument("--pods", type=int, default=4, help="instant pods behind the router (default %(default)s)")
    o.add_argument("--rates", default="200,500,1000", help="request rates to measure (req/s); empty = none")
    o.add_argument("--duration", type=float, default=10.0, help="seconds per rate")
    o.add_argument("--tokens", type=int, default=16, help="tokens each instant answer streams")
    o.add_argument("--policy", default="sagesched", help="the router's scheduling policy (default %(default)s)")
    o.add_argument("--streams", type=int, default=5000, help="concurrent slow streams to hold (0 = skip)")
    o.add_argument("--stream-rate", type=float, default=1000.0, help="streams opened per second")
    o.add_argument("--stream-tokens", type=int, default=8, help="tokens per held stream")
    o.add_argument("--stream-interval", type=float, default=2.0, help="seconds between a held stream's tokens")
    o.set_defaults(func=run_overhead)


def run_overhead(args: argparse.Namespace) -> int:
    from sagesched.bench.overhead import main

    return main(args)
