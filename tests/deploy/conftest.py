"""Rendering the chart with Helm's own engine (helm-python-sdk) for the deploy tests."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "sagesched"
NAMESPACE = "sagesched-system"


def load_generate():
    """manifests/install/generate.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("sagesched_generate_install",
                                                  ROOT / "manifests" / "install" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def example_policy_spec() -> dict:
    return yaml.safe_load((ROOT / "manifests" / "examples" / "sageschedpolicy-vllm.yaml").read_text())["spec"]


# Value sets that together switch every optional part of the chart on and off.
VALUE_SETS: dict[str, dict] = {
    "defaults": {},
    "gateway-monitoring": {
        "router": {"extProc": {"enabled": True}, "autoscaling": {"enabled": True, "minReplicas": 3,
                                                                 "maxReplicas": 12},
                   "config": {"max_queue_per_model": 2048, "queue_timeout_s": 60.0}},
        "gateway": {"inferencePool": {"enabled": True, "selector": {"app": "llama3-8b"},
                                      "targetPorts": [8000, 8001]}},
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
                    "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}}},
        "policy": {"create": True, "name": "llama3-8b", "spec": example_policy_spec()},
        "dashboards": {"namespace": "monitoring", "annotations": {"grafana_folder": "SageSched"}},
    },
    "gateway-envoy": {
        "router": {"extProc": {"enabled": True}},
        "gateway": {"inferencePool": {"selector": {"app": "llama3-8b"}, "failureMode": "FailOpen"},
                    "envoy": {"enabled": True, "bodyMode": "BUFFERED", "timeoutSeconds": 45, "maxStreams": 20000}},
    },
    "namespaced-external-redis": {
        "operator": {"watchNamespaces": ["inference", "inference-canary"]},
        "redis": {"enabled": False},
        "externalRedis": {"url": "rediss://:secret@redis.example.internal:6380/2"},
        "predictor": {"persistence": {"enabled": True, "size": "5Gi", "storageClassName": "fast"}},
        "router": {"replicas": 4, "podDisruptionBudget": {"maxUnavailable": "25%"}},
    },
    "minimal": {
        "operator": {"enabled": False},
        "predictor": {"enabled": False},
        "redis": {"enabled": False},
        "externalRedis": {"existingSecret": "my-redis", "existingSecretKey": "connection-url"},
        "dashboards": {"enabled": False},
        "networkPolicy": {"enabled": False},
        "router": {"podDisruptionBudget": {"enabled": False}, "serviceAccount": {"create": False}},
    },
    "predictor-semantic-gpu": {
        "predictor": {"mode": "semantic-history", "embedder": "minilm", "replicas": 2,
                      "gpu": {"enabled": True, "count": 1}},
    },
    "bundled-redis-persistence": {
        "redis": {"persistence": {"enabled": True, "size": "10Gi"}},
        "fullnameOverride": "sched",
        "commonLabels": {"team": "ml-platform"},
    },
}


@pytest.fixture(scope="session")
def chart():
    import helm_python

    loaded = helm_python.Chart.load(CHART)
    yield loaded
    loaded.close()


class Rendered:
    """One render: template path -> text, and the parsed objects (NOTES.txt excluded)."""

    def __init__(self, manifests: dict[str, str]) -> None:
        self.manifests = manifests
        self.objects = [doc for path in sorted(manifests) if not path.endswith("NOTES.txt")
                        for doc in yaml.safe_load_all(manifests[path]) if doc]

    @property
    def notes(self) -> str:
        return next(text for path, text in self.manifests.items() if path.endswith("NOTES.txt"))

    def of_kind(self, kind: str) -> list[dict]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str) -> dict:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind}/{name}: found {len(found)} in {[o['metadata']['name'] for o in self.of_kind(kind)]}"
        return found[0]


@pytest.fixture(scope="session")
def render(chart):
    cache: dict[str, Rendered] = {}

    def _render(set_name: str) -> Rendered:
        if set_name not in cache:
            cache[set_name] = Rendered(chart.render(VALUE_SETS[set_name], name="sagesched", namespace=NAMESPACE))
        return cache[set_name]
    return _render
