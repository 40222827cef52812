"""Package layout: one distribution, one import root (`sagesched`), and imports that name real paths.

The architecture's component folders sit at the top of the repository (router/, operator/,
predictor_service/, bench/) so a reader finds each by name. Code imports them as
`sagesched.<name>`, and each such path exists on disk: `sagesched/<name>` is a link to its folder
(`sagesched/predictor` -> `predictor_service/`), which editors, type checkers and Python itself follow.
`operator/` has no `__init__.py`: from the repository root it must not shadow the standard library's
`operator` (inside `sagesched` it is a namespace package). Everything else lives in pyproject.toml.
"""
import os

from setuptools import setup

NAMESPACE_PACKAGES = ("sagesched/operator",)  # folders without __init__.py that are packages all the same


def _packages() -> list[str]:
    """Every folder under sagesched/ (links followed) that holds an __init__.py, plus the namespace ones."""
    folders = {root for root, _, files in os.walk("sagesched", followlinks=True) if "__init__.py" in files}
    return sorted(folder.replace(os.sep, ".") for folder in folders | set(NAMESPACE_PACKAGES))


setup(packages=_packages())
