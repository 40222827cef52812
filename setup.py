"""Package layout: one distribution, one import root (`sagesched`).

The architecture's top-level folders are subpackages of `sagesched`, so a reader finds each component
by folder name while code imports it as `sagesched.<component>` (`operator` cannot be a top-level
import name: the standard library owns it). Everything else lives in pyproject.toml.
"""
from pathlib import Path

from setuptools import setup

FOLDERS = {
    "sagesched": "sagesched",
    "sagesched.router": "router",
    "sagesched.operator": "operator",
    "sagesched.predictor": "predictor_service",
    "sagesched.bench": "bench",
}


def _packages() -> tuple[list[str], dict[str, str]]:
    packages, package_dir = [], {}
    for name, folder in FOLDERS.items():
        for init in sorted(Path(folder).rglob("__init__.py")):
            rel = init.parent.relative_to(folder).parts
            pkg = ".".join((name, *rel))
            packages.append(pkg)
            package_dir[pkg] = str(init.parent)
    return packages, package_dir


PACKAGES, PACKAGE_DIR = _packages()
setup(packages=PACKAGES, package_dir=PACKAGE_DIR)
