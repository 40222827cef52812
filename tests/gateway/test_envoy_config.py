"""The documented Envoy configuration is the rendered one, the one test_envoy.py runs."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

from sagesched.router.gateway import envoy_config
from sagesched.router.gateway.envoy_config import DOCUMENTED, render

from .conftest import envoy_binary

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
