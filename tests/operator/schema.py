"""What a real API server does with the CRD's structural schema and kmock does not: defaulting and
CEL validation rules (`x-kubernetes-validations`), applied by walking the schema beside the object."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "manifests" / "crds" / "sageschedpolicies.yaml"


def crd_schema() -> dict:
    crd = yaml.safe_load(CRD_PATH.read_text())
    return next(v for v in crd["spec"]["versions"] if v["storage"])["schema"]["openAPIV3Schema"]


def _children(schema: dict, value: Any):
    """(sub-schema, sub-value) pairs of the object's present fields and list items."""
    if isinstance(value, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key in value:
                yield sub, value[key]
    elif isinstance(value, list) and "items" in schema:
        for item in value:
            yield schema["items"], item


def with_defaults(schema: dict, value: Any) -> Any:
    """A copy of `value` with the schema's defaults filled in where fields are absent, as the API
    server stores it."""
    value = copy.deepcopy(value)
    _default(schema, value)
    return value


def _default(schema: dict, value: Any) -> None:
    if isinstance(value, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
    for sub, child in _children(schema, value):
        _default(sub, child)


def cel_violations(schema: dict, value: Any) -> list[str]:
    """Messages of the CEL rules `value` breaks, evaluated with cel-python where each rule sits."""
    import celpy

    env = celpy.Environment()
    out = []
    for rule in schema.get("x-kubernetes-validations") or []:
        program = env.program(env.compile(rule["rule"]))
        if not program.evaluate({"self": celpy.json_to_cel(value)}):
            out.append(rule["message"])
    for sub, child in _children(schema, value):
        out += cel_violations(sub, child)
    return out
