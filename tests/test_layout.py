"""The code's layout, as CONTRIBUTING.md states it: imports name real paths, one import style, no cycles
between component folders, and nothing shadows the standard library from the repository root."""
from __future__ import annotations

import ast
import graphlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# top-level folder -> its import name under `sagesched` (None: the core, `sagesched/` itself)
COMPONENTS = {"sagesched": None, "router": "router", "operator": "operator", "predictor_service": "predictor",
              "bench": "bench"}
COMPOSITION_ROOT = {Path("sagesched/cli.py"), Path("sagesched/__main__.py")}


def _product_files() -> Iterator[Path]:
    for folder in COMPONENTS:
        for path in sorted((ROOT / folder).rglob("*.py")):  # rglob does not follow sagesched/'s links
            yield path.relative_to(ROOT)


def _imports(path: Path) -> Iterator[tuple[int, str, int]]:
    """(line, module, relative level) of every import statement in the file."""
    for node in ast.walk(ast.parse((ROOT / path).read_text())):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name, 0) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            yield node.lineno, node.module or "", node.level


def _component_of_module(module: str) -> str:
    parts = module.split(".")
    names = {name: folder for folder, name in COMPONENTS.items() if name}
    return names.get(parts[1], "sagesched") if len(parts) > 1 else "sagesched"


def test_imports_are_absolute():
    files = [*_product_files(), *(p.relative_to(ROOT) for p in sorted((ROOT / "tests").rglob("*.py")))]
    relative = [f"{path}:{line}" for path in files for line, _, level in _imports(path) if level]
    assert not relative, f"relative imports (use `from sagesched.<...> import`): {relative}"


def test_every_import_names_a_real_path():
    missing = []
    for path in _product_files():
        for line, module, _ in _imports(path):
            if module.split(".")[0] != "sagesched":
                continue
            target = ROOT.joinpath(*module.split("."))
            if not (target.is_dir() or target.with_suffix(".py").is_file()):
                missing.append(f"{path}:{line} {module}")
    assert not missing, f"imports with no file or folder at their path: {missing}"


def test_component_folders_form_layers_without_cycles():
    graph: dict[str, set[str]] = {folder: set() for folder in COMPONENTS}
    for path in _product_files():
        if path in COMPOSITION_ROOT:
            continue
        for _, module, _ in _imports(path):
            if module.split(".")[0] == "sagesched" and (target := _component_of_module(module)) != path.parts[0]:
                graph[path.parts[0]].add(target)
    order = list(graphlib.TopologicalSorter(graph).static_order())  # raises CycleError on a cycle
    assert order[0] == "sagesched" and order[-1] == "bench", order


def test_the_repository_root_shadows_no_standard_module():
    """`-S`: no site packages, so nothing is imported before the working directory is on sys.path."""
    for flags in (["-S"], []):
        out = subprocess.run([sys.executable, *flags, "-c", "import operator, collections; print(operator.__file__)"],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        assert not Path(out).resolve().is_relative_to(ROOT), out


def test_links_under_sagesched_point_at_the_component_folders():
    for folder, name in COMPONENTS.items():
        if name:
            assert (ROOT / "sagesched" / name).resolve() == ROOT / folder
