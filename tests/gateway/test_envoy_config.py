"""The documented Envoy configuration is the rendered one, the one test_envoy.py runs."""
from __future__ import annotations

import re
import subprocess
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import yaml

from sagesched.http_serve import free_port
from sagesched.router.gateway import envoy_config
from sagesched.router.gateway.envoy_config import DOCUMENTED, render

from tests.gateway.conftest import envoy_binary

README = Path(__file__).resolve().parents[2] / "router" / "gateway" / "README.md"


def documented_envoy_block() -> str:
    (block,) = re.findall(r"```yaml\n(static_resources:.*?)```", README.read_text(), flags=re.S)
    return block


def test_the_readmes_envoy_config_is_the_rendered_one(capsys):
    assert documented_envoy_block() == render(DOCUMENTED)
    envoy_config.main([])
    assert capsys.readouterr().out == render(DOCUMENTED)


def test_envoy_accepts_the_documented_config(tmp_path):
    path = tmp_path / "envoy.yaml"
    path.write_text(documented_envoy_block())
    checked = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr[-2000:]


def test_without_the_picker_envoy_balances_over_the_pool_itself(tmp_path):
    """The benchmark's baseline: the same config minus the ext_proc filter and the picker's cluster."""
    config = envoy_config.bootstrap(DOCUMENTED, picker=False, admin_port=9901)
    filters = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
    assert "envoy.filters.http.ext_proc" not in [f["name"] for f in filters]
    assert [c["name"] for c in config["static_resources"]["clusters"]] == [envoy_config.POOL]
    assert config["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 9901}
    path = tmp_path / "envoy.yaml"
    path.write_text(render(DOCUMENTED, picker=False, admin_port=9901))
    checked = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr[-2000:]


def test_envoy_lets_each_cluster_hold_max_streams_at_once(tmp_path):
    """Envoy's own limit of 1,024 requests per cluster would cap the gateway at 1,024 concurrent
    streams: the config raises it on the picker and the pool, and Envoy applies it (its admin API)."""
    admin = free_port()
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(envoy_config.bootstrap(replace(DOCUMENTED, listen_port=free_port()), admin_port=admin)))
    envoy = subprocess.Popen([envoy_binary(), "-c", str(path), "--log-level", "error", "--base-id", str(admin)])
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                clusters = urllib.request.urlopen(f"http://127.0.0.1:{admin}/clusters", timeout=2).read().decode()
                break
            except OSError:
                assert envoy.poll() is None and time.monotonic() < deadline, "envoy did not start"
                time.sleep(0.2)
        for cluster in (envoy_config.PICKER, envoy_config.POOL):
            for limit in ("max_connections", "max_pending_requests", "max_requests"):
                assert f"{cluster}::default_priority::{limit}::{DOCUMENTED.max_streams}" in clusters
    finally:
        envoy.terminate()
        envoy.wait()
