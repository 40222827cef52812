"""The package as the image installs it (`pip install .`, a wheel, not this checkout): it must carry
the files the code opens at run time — engine profiles, the predictor checkpoint, the Azure traces.
An editable install reads them from the checkout, so only a built wheel shows what is missing."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "setup.py", "README.md", "sagesched", "router", "operator", "predictor_service", "bench")
CHECK = """
from sagesched.engine.profile import PROFILE_DIR, load_profile
from sagesched.predictor.config import DEFAULT_CHECKPOINT
from sagesched.traces import load_trace
import sagesched
assert sagesched.__file__.startswith({site!r}), sagesched.__file__
assert sorted(p.name for p in PROFILE_DIR.glob("*.json")) == {profiles!r}
load_profile()
assert DEFAULT_CHECKPOINT.is_file(), DEFAULT_CHECKPOINT
assert len(load_trace("code")) > 0
"""


def test_the_built_wheel_carries_every_file_the_code_opens(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:  # the working tree, links kept (sagesched/router -> ../router)
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        kwargs = {"symlinks": True, "ignore": shutil.ignore_patterns("__pycache__", "results")} if copy is shutil.copytree else {}
        copy(ROOT / name, src / name, **kwargs)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
                   check=True, cwd=tmp_path)
    wheel, = (tmp_path / "dist").glob("sagesched-*.whl")
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, cwd=tmp_path)
    profiles = sorted(p.name for p in (ROOT / "sagesched" / "engine" / "profiles").glob("*.json"))
    check = CHECK.format(site=str(site), profiles=profiles)
    subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r})\n{check}"],
                   check=True, cwd=tmp_path)
