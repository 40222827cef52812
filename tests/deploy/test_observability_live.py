"""Every PromQL expression the dashboards and alert rules ship runs against a real Prometheus that
scrapes a real router fleet, the predictor service and emulated vLLM pods after real traffic.

Two routers: one asks a live predictor (predictions, calibration reports), the other a dead
address (every prediction falls back), under two policies. A query must succeed, name only metrics
Prometheus actually holds, and (for dashboard panels) return data.
"""
from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.conftest import free_port, wait_for_port
from tests.deploy.conftest import ROOT

DASHBOARDS = sorted((ROOT / "manifests" / "dashboards").glob("*.json"))
RULES = ROOT / "manifests" / "prometheus" / "rules.yaml"
MODEL = "llama-3-8b"
# Grafana's variables, as a user with "All" selected and a 1-minute rate window would see them.
GRAFANA_VARS = {"$__rate_interval": "1m", "$model": ".*", "$policy": ".*"}
METRIC_TOKEN = re.compile(r"\b(sagesched_[a-z0-9_]+|vllm:[a-z0-9_:]+|up)\b")


def two_free_consecutive_ports() -> int:
    for _ in range(50):
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue
    raise RuntimeError("no two consecutive free ports")


class Processes:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen] = []

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "wb")
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        self.procs.append(proc)
        return proc

    def wait_port(self, name: str, port: int, timeout: float) -> None:
        try:
            wait_for_port(port, timeout)
        except TimeoutError:
            raise RuntimeError(f"{name} did not listen on {port}:\n{(self.workdir / f'{name}.log').read_text()[-3000:]}")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def sagesched(*args: str) -> list[str]:
    return [sys.executable, "-m", "sagesched", *args]


async def drive_traffic(router_urls: list[str], per_router: int) -> int:
    """Streaming and whole completions through each router, plus requests for an unknown model
    (404s, so error panels have data). Returns how many requests were answered."""
    async with aiohttp.ClientSession() as session:
        async def one(url: str, i: int) -> None:
            model = MODEL if i % 10 else "no-such-model"
            body = {"model": model, "prompt": f"request {i}: " + "tell me a story " * (i % 7 + 1),
                    "max_tokens": 8 + (i * 13) % 56, "stream": i % 2 == 0}
            async with session.post(f"{url}/v1/completions", json=body) as resp:
                await resp.read()
                assert resp.status in (200, 404), (resp.status, await resp.text())

        await asyncio.gather(*(one(url, i) for url in router_urls for i in range(per_router)))
    return len(router_urls) * per_router


def served(answered: int) -> int:
    """Of `answered` requests sent by `drive_traffic` (per router a multiple of 10), those a pod served:
    every tenth names an unknown model and the router answers it 404."""
    return answered - answered // 10


@pytest.fixture(scope="module")
def prometheus_with_traffic(tmp_path_factory) -> Iterator[tuple[str, float]]:
    """A Prometheus (1 s scrapes) holding metrics from 2 routers, the predictor and 2 pods after
    traffic; yields its base URL and the evaluation time to query at."""
    workdir = tmp_path_factory.mktemp("observability")
    procs = Processes(workdir)
    try:
        pod_port = two_free_consecutive_ports()
        procs.start("pods", sagesched("emulate-pod", "--pods", "2", "--port", str(pod_port), "--model", MODEL,
                                      "--time-scale", "0.05", "--output-median", "48"))
        grpc_port, predictor_metrics = free_port(), free_port()
        procs.start("predictor", sagesched("predictor", "serve", "--listen", f"127.0.0.1:{grpc_port}",
                                           "--metrics-port", str(predictor_metrics), "--workers", "1"))
        dead = free_port()  # nothing listens: router B's predictor calls all fail
        routers = {}
        for name, policy, predictor in (("router-a", "sagesched", f"127.0.0.1:{grpc_port}"),
                                        ("router-b", "fcfs", f"127.0.0.1:{dead}")):
            port = free_port()
            procs.start(name, sagesched("router", "--port", str(port), "--host", "127.0.0.1", "--grpc-port", "-1",
                                        "--backend", f"http://127.0.0.1:{pod_port}",
                                        "--backend", f"http://127.0.0.1:{pod_port + 1}",
                                        "--policy", policy, "--predictor", predictor,
                                        "--predictor-deadline-ms", "200", "--scrape-interval", "0.2"))
            routers[name] = port
        operator_metrics = free_port()  # the operator with no Kubernetes: a policy file naming the two pods
        policy = workdir / "policy.yaml"
        policy.write_text(yaml.safe_dump(operator_policy([f"127.0.0.1:{pod_port + i}" for i in range(2)])))
        procs.start("operator", sagesched("operator", "--policy-file", str(policy), "--metrics-port",
                                          str(operator_metrics)))
        prom_port = free_port()
        config = {"global": {"scrape_interval": "1s", "scrape_timeout": "900ms"},
                  "scrape_configs": [
                      {"job_name": "sagesched-router",
                       "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in routers.values()]}]},
                      {"job_name": "sagesched-predictor",
                       "static_configs": [{"targets": [f"127.0.0.1:{predictor_metrics}"]}]},
                      {"job_name": "sagesched-operator",
                       "static_configs": [{"targets": [f"127.0.0.1:{operator_metrics}"]}]},
                      {"job_name": "vllm",
                       "static_configs": [{"targets": [f"127.0.0.1:{pod_port}", f"127.0.0.1:{pod_port + 1}"]}]}]}
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        procs.start("prometheus", [shutil.which("prometheus") or "/usr/bin/prometheus",
                                   f"--config.file={workdir / 'prometheus.yml'}",
                                   f"--storage.tsdb.path={workdir / 'tsdb'}",
                                   f"--web.listen-address=127.0.0.1:{prom_port}"])
        procs.wait_port("pods", pod_port + 1, 60)
        procs.wait_port("predictor", predictor_metrics, 90)
        procs.wait_port("predictor", grpc_port, 90)
        PREDICTOR_TARGET[:] = [f"127.0.0.1:{grpc_port}"]
        for name, port in routers.items():
            procs.wait_port(name, port, 60)
        procs.wait_port("operator", operator_metrics, 60)
        procs.wait_port("prometheus", prom_port, 30)
        base = f"http://127.0.0.1:{prom_port}"
        try:
            answered = asyncio.run(wait_ready_then_drive(base, [f"http://127.0.0.1:{p}" for p in routers.values()]))
        except Exception as exc:
            logs = "\n".join(f"--- {log.name}\n{log.read_text()[-2000:]}" for log in sorted(workdir.glob("*.log")))
            raise RuntimeError(f"{exc!r}\n{logs}") from exc
        # Wait for a scrape that saw every answer (an event, not a sleep), then one more.
        until(lambda: _sum(base, "sagesched_requests_total") >= answered
              and _sum(base, "sagesched_predictor_reports_total") >= 60
              and _sum(base, "vllm:time_to_first_token_seconds_count") >= served(answered),
              timeout=30, what="prometheus scraped all answered requests")
        now = time.time()
        until(lambda: time.time() > now + 2.5, timeout=5, what="one more scrape")
        yield base, time.time()
    finally:
        procs.stop()


def operator_policy(addresses: list[str]) -> dict:
    """A SageSchedPolicy for `sagesched operator --policy-file`: the fleet's pods as static endpoints."""
    return {"apiVersion": "sagesched.io/v1alpha1", "kind": "SageSchedPolicy",
            "metadata": {"name": "observed", "namespace": "default"},
            "spec": {"staticEndpoints": [{"name": f"pod-{i}", "address": a} for i, a in enumerate(addresses)],
                     "models": [MODEL], "policy": {"name": "sagesched"}, "scrapeIntervalSeconds": 0.5}}


async def drive_predictor(target: str, n: int) -> None:
    """Predictions and completion reports straight to the predictor service, so its calibration
    series have a known number of reports however many the routers sent."""
    from sagesched.distribution import LengthDistribution
    from sagesched.predictor.client import ClientSettings, PredictorClient
    from sagesched.predictor.types import CompletionRecord, PredictQuery

    def prior(_query):
        return LengthDistribution.point(64)

    async with PredictorClient(target, fallback=prior, settings=ClientSettings(deadline_s=5.0)) as client:
        queries = [PredictQuery(model=MODEL, prompt=f"question {i}: " + "explain this " * (i % 9 + 1),
                                max_tokens=256, request_id=f"obs-{i}") for i in range(n)]
        await asyncio.gather(*(client.predict(q) for q in queries))
        await client.report([CompletionRecord(query=q, output_tokens=16 + (i * 37) % 200)
                             for i, q in enumerate(queries)])


async def wait_ready_then_drive(prom: str, router_urls: list[str]) -> int:
    async with aiohttp.ClientSession() as session:
        deadline = time.monotonic() + 60
        for url in router_urls:  # routers are ready once they reach a pod
            while True:
                async with session.get(f"{url}/ready") as resp:
                    if resp.status == 200:
                        break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{url} never became ready")
                await asyncio.sleep(0.1)
    # Wave 1 creates every series; Prometheus must see them before wave 2, or a counter that first
    # appears at its final value has no increase for rate() to see.
    answered = await drive_traffic(router_urls, per_router=20)
    await drive_predictor(PREDICTOR_TARGET[0], 20)
    # the pods are scraped apart from the routers: on a loaded machine their first scrape could
    # otherwise come after wave 2, and their histograms would show no increase (NaN rates)
    await asyncio.to_thread(until, lambda: _sum(prom, "sagesched_requests_total") >= answered
                            and _sum(prom, "sagesched_predictor_reports_total") >= 20
                            and _sum(prom, "vllm:time_to_first_token_seconds_count") >= served(answered),
                            30, "prometheus scraped wave 1")
    answered += await drive_traffic(router_urls, per_router=40)
    await drive_predictor(PREDICTOR_TARGET[0], 40)
    return answered


def _sum(base: str, metric: str) -> float:
    return sum(float(r["value"][1]) for r in query(base, f"sum({metric})"))


PREDICTOR_TARGET: list[str] = []


def until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.1)


def query(base: str, expr: str, at: float | None = None) -> list[dict]:
    import urllib.parse
    import urllib.request

    params = {"query": expr}
    if at is not None:
        params["time"] = f"{at:.3f}"
    with urllib.request.urlopen(f"{base}/api/v1/query?{urllib.parse.urlencode(params)}", timeout=10) as resp:
        body = json.load(resp)
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]


def metric_names(base: str) -> set[str]:
    import urllib.request

    with urllib.request.urlopen(f"{base}/api/v1/label/__name__/values", timeout=10) as resp:
        return set(json.load(resp)["data"])


def dashboard_queries() -> list[tuple[str, str, str]]:
    out = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for t in panel.get("targets", []):
                out.append((path.name, f"{panel['title']} [{t['refId']}]", t["expr"]))
    return out


def expand(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unexpanded Grafana variable in {expr}"
    return expr


def test_every_dashboard_query_returns_data_from_exported_metrics(prometheus_with_traffic):
    base, at = prometheus_with_traffic
    known = metric_names(base)
    problems = []
    for board, panel, expr in dashboard_queries():
        missing = set(METRIC_TOKEN.findall(expr)) - known
        if missing:
            problems.append(f"{board} / {panel}: metrics not exported: {sorted(missing)}")
            continue
        result = query(base, expand(expr), at)
        values = [float(r["value"][1]) for r in result]
        if not result:
            problems.append(f"{board} / {panel}: no data for {expr}")
        elif all(v != v for v in values):  # NaN everywhere: the rate window saw no change
            problems.append(f"{board} / {panel}: only NaN for {expr}")
    assert problems == [], "\n".join(problems)


def test_dashboard_variables_list_values(prometheus_with_traffic):
    base, at = prometheus_with_traffic
    for path in DASHBOARDS:
        for var in json.loads(path.read_text())["templating"]["list"]:
            if var["type"] != "query":
                continue
            metric, label = re.fullmatch(r"label_values\(([^,]+), (\w+)\)", var["query"]["query"]).groups()
            values = {r["metric"].get(label) for r in query(base, metric, at)} - {None}
            assert values, f"{path.name}: ${var['name']} would list nothing"
    assert {r["metric"]["model"] for r in query(base, "sagesched_requests_total", at)} >= {MODEL}


def test_every_rule_expression_runs_on_exported_metrics(prometheus_with_traffic):
    base, at = prometheus_with_traffic
    known = metric_names(base)
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            missing = set(METRIC_TOKEN.findall(rule["expr"])) - known
            assert not missing, f"{rule['alert']}: metrics not exported: {sorted(missing)}"
            query(base, rule["expr"], at)  # parses and evaluates


def test_healthy_fleet_fires_no_alert_and_coverage_is_computable(prometheus_with_traffic):
    """On this traffic: routers up, queues small, snapshots fresh -> those alerts' conditions are
    empty; the coverage alert's ratio evaluates to a fraction from the predictor's live counters."""
    base, at = prometheus_with_traffic
    rules = {r["alert"]: r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    for quiet in ("SageSchedRouterDown", "SageSchedQueueSaturated", "SageSchedStalePodMetrics"):
        assert query(base, rules[quiet], at) == [], quiet
    coverage = query(base, rules["SageSchedIntervalCoverageLow"].replace("[30m]", "[1m]").replace("< 0.75", ""), at)
    assert len(coverage) == 1 and 0.0 <= float(coverage[0]["value"][1]) <= 1.0
    # The same expression over the counters' totals (no rate window, so no extrapolation) must agree
    # with the share the predictor computes itself, and the counters must be consistent: every
    # remembered prediction of drive_predictor's 60 reports was scored, and the 25-75 % interval lies
    # inside the 5-95 % one, so it cannot hit more often.
    totals = re.sub(r"rate\((\w+(?:\{[^}]*\})?)\[30m\]\)", r"\1",
                    rules["SageSchedIntervalCoverageLow"]).replace("< 0.75", "")
    assert "rate(" not in totals and "[30m]" not in totals, totals
    (share,) = query(base, totals, at)
    hits = {level: _sum(base, f'sagesched_predictor_interval_hits_total{{level="{level}"}}')
            for level in ("0.5", "0.9")}
    checks = _sum(base, "sagesched_predictor_interval_checks_total")
    assert checks >= 60 and hits["0.5"] <= hits["0.9"] <= checks, (hits, checks)
    (own,) = query(base, 'sagesched_predictor_interval_coverage_ratio{level="0.9"}', at)
    share = float(share["value"][1])
    assert share == pytest.approx(hits["0.9"] / checks)
    assert share == pytest.approx(float(own["value"][1]))
    # a 90 % interval from the shipped model covers most of these completions (about 0.9 when written)
    assert share >= 0.6
