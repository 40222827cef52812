"""The CRD and the example CRs, validated offline."""
from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from sagesched.operator.spec import InvalidSpec, parse_spec

from tests.operator.schema import CRD_PATH, ROOT, cel_violations, crd_schema, with_defaults

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
    (lambda s: s["policy"].update(admission={"memoryGateQuantile": 1.5}), "quantile range"),
    (lambda s: s["policy"].update(queue={"timeoutSeconds": 0}), "timeout minimum"),
    (lambda s: s.pop("policy"), "policy required"),
])
def test_schema_rejects_what_it_can(schema, change, where):
    cr = yaml.safe_load(EXAMPLES[-1].read_text())
    spec = copy.deepcopy(cr["spec"])
    change(spec)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(dict(cr, spec=spec), schema)


SPEC_SCHEMA = crd_schema()["properties"]["spec"]
SELECTOR = {"matchLabels": {"app": "llm"}}


@pytest.mark.parametrize("spec, valid", [
    ({"podSelector": SELECTOR}, True),
    ({"inferencePoolRef": {"name": "pool"}}, True),
    ({"podSelector": SELECTOR, "scrapeIntervalSeconds": 10}, True),
    ({"podSelector": SELECTOR, "inferencePoolRef": {"name": "pool"}}, False),
    ({}, False),
    ({"podSelector": {}}, False),
    ({"podSelector": {"matchLabels": {}, "matchExpressions": []}}, False),
    ({"podSelector": {"matchExpressions": [{"key": "app", "operator": "Exists"}]}}, True),
    ({"podSelector": {"matchExpressions": [{"key": "app", "operator": "In"}]}}, False),
    ({"podSelector": {"matchExpressions": [{"key": "app", "operator": "Exists", "values": ["x"]}]}}, False),
    ({"podSelector": SELECTOR, "scrapeIntervalSeconds": 1, "snapshotTTLSeconds": 1}, False),
    ({"podSelector": SELECTOR, "snapshotTTLSeconds": 0.1}, False),
    ({"podSelector": SELECTOR, "scrapeIntervalSeconds": 1, "snapshotTTLSeconds": 2}, True),
], ids=repr)
def test_cel_rules_admit_exactly_the_specs_the_operator_accepts(spec, valid):
    """Cross-field rules reject at admission on a real API server; the operator checks the same
    ones for servers without CEL, so the two must agree on every case."""
    spec = with_defaults(SPEC_SCHEMA, {"policy": {"name": "fcfs"}, **spec})
    assert (cel_violations(SPEC_SCHEMA, spec) == []) is valid
    if valid:
        parse_spec(spec)
    else:
        with pytest.raises(InvalidSpec):
            parse_spec(spec)


def test_defaulted_specs_keep_the_operators_derived_defaults():
    """Schema defaults that contradict the operator's would win on a real API server: a 10 s
    interval would get a 5 s TTL (InvalidSpec), a lone metricsPort a serving port of 8000."""
    spec = parse_spec(with_defaults(SPEC_SCHEMA, {"policy": {"name": "fcfs"}, "podSelector": SELECTOR,
                                                  "scrapeIntervalSeconds": 10, "metricsPort": 9000}))
    assert spec.snapshot_ttl == 100 and spec.scrape_timeout == 1.0
    assert spec.endpoint_ports() == [(9000, 9000)]
    assert parse_spec(with_defaults(SPEC_SCHEMA, {"policy": {"name": "fcfs"}, "podSelector": SELECTOR,
                                                  "servingPort": 8080})).endpoint_ports() == [(8080, 8080)]


def test_the_crds_policy_block_is_the_typed_scheduler_configuration(crd):
    """spec.policy is `SchedulerConfig` rendered as a structural schema: the two cannot drift."""
    from sagesched.scheduling.config import crd_schema as config_schema

    version = next(v for v in crd["spec"]["versions"] if v["storage"])
    assert version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["policy"] == config_schema()


@pytest.mark.parametrize("policy, reason", [
    ({"name": "fcfs", "params": {"levels": 3}}, "takes no parameters"),
    ({"name": "fastserve", "params": {"levelz": 3}}, "takes no parameters"),
    ({"name": "fcfs", "queue": {"maxPerModel": 10, "burst": 1}}, "queue.burst"),
])
def test_policy_parameters_the_schema_cannot_judge_are_an_invalid_spec(policy, reason):
    with pytest.raises(InvalidSpec, match=reason) as info:
        parse_spec({"podSelector": SELECTOR, "policy": policy})
    assert info.value.reason == "BadPolicy"


def test_static_endpoints_are_a_pod_source_of_their_own():
    spec = {"policy": {"name": "fcfs"}, "staticEndpoints": [{"address": "127.0.0.1:8001"}]}
    assert cel_violations(SPEC_SCHEMA, spec) == []
    assert [e.address for e in parse_spec(spec).static_endpoints] == ["127.0.0.1:8001"]
    both = dict(spec, podSelector=SELECTOR)
    assert cel_violations(SPEC_SCHEMA, both)
    with pytest.raises(InvalidSpec):
        parse_spec(both)


def test_router_flags_map_onto_the_same_configuration_and_bad_parameters_are_refused():
    from sagesched.router.settings import RouterSettings

    config = RouterSettings(policy="fastserve", policy_params={"levels": 3}, max_queue_per_model=7).scheduler_config()
    assert config.params == {"levels": 3} and config.queue.max_per_model == 7
    assert config.build().policy.levels == 3
    with pytest.raises(ValueError, match="takes no parameters"):
        RouterSettings(policy="fcfs", policy_params={"levels": 3}).scheduler_config()
