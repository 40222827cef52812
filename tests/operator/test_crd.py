"""The CRD and the example CRs, validated offline."""
from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "manifests" / "crds" / "sageschedpolicies.yaml"
EXAMPLES = sorted((ROOT / "manifests" / "examples").glob("sageschedpolicy-*.yaml"))


@pytest.fixture(scope="module")
def crd() -> dict:
    return yaml.safe_load(CRD_PATH.read_text())


@pytest.fixture(scope="module")
def schema(crd) -> dict:
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    return _to_jsonschema(version["schema"]["openAPIV3Schema"])


def _to_jsonschema(node):
    """OpenAPI v3 vocabulary the apiserver knows, minus the x-kubernetes-* extensions."""
    if isinstance(node, dict):
        return {k: _to_jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if isinstance(node, list):
        return [_to_jsonschema(v) for v in node]
    return node


def test_crd_is_a_valid_kubernetes_object(crd):
    kubernetes_validate.validate(crd, "1.30", strict=True)


def test_crd_serves_v1alpha1_with_status_subresource_and_printer_columns(crd):
    (version,) = crd["spec"]["versions"]
    assert version["served"] and version["storage"] and "status" in version["subresources"]
    assert {c["name"] for c in version["additionalPrinterColumns"]} >= {"Policy", "Ready-Pods", "Ready"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_match_the_crds_own_schema(path, schema):
    assert EXAMPLES, "no examples found"
    jsonschema.validate(yaml.safe_load(path.read_text()), schema)


@pytest.mark.parametrize("change, where", [
    (lambda s: s["policy"].update(name="random"), "policy.name enum"),
    (lambda s: s.update(scrapeIntervalSeconds=0.01), "scrape interval minimum"),
    (lambda s: s.update(engine="trt"), "engine enum"),
    (lambda s: s.update(metricsPort=70000), "port range"),
    (lambda s: s["policy"].update(admissionQuantile=1.5), "quantile range"),
    (lambda s: s.pop("policy"), "policy required"),
])
def test_schema_rejects_what_it_can(schema, change, where):
    cr = yaml.safe_load(EXAMPLES[-1].read_text())
    spec = copy.deepcopy(cr["spec"])
    change(spec)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(dict(cr, spec=spec), schema)
