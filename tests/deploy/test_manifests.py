"""Plain manifests, dashboards and alert rules: in sync with the chart, valid, and alerts that fire
on the failures they name (promtool)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import yaml

from tests.deploy.conftest import CHART, ROOT, load_generate

DASHBOARDS = sorted((ROOT / "manifests" / "dashboards").glob("*.json"))
RULES = ROOT / "manifests" / "prometheus" / "rules.yaml"


def test_chart_crd_is_byte_identical_to_the_operators_crd():
    source = ROOT / "manifests" / "crds" / "sageschedpolicies.yaml"
    assert (CHART / "crds" / "sageschedpolicies.yaml").read_bytes() == source.read_bytes()


def test_chart_copies_and_plain_install_are_up_to_date():
    """`python manifests/install/generate.py` was run after the last chart/dashboard/rule/CRD change."""
    generate = load_generate()
    assert generate.stale_chart_files() == []
    assert (ROOT / "manifests" / "install" / "sagesched.yaml").read_text() == generate.install_text()


def test_plain_install_is_valid_and_complete():
    docs = [d for d in yaml.safe_load_all((ROOT / "manifests" / "install" / "sagesched.yaml").read_text()) if d]
    version = kubernetes_validate.latest_version()
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)
    kinds = [d["kind"] for d in docs]
    assert kinds[:2] == ["Namespace", "CustomResourceDefinition"]  # applied before what uses them
    assert kinds.index("ServiceAccount") < kinds.index("ClusterRoleBinding") < kinds.index("Deployment")
    assert {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"} == {
        "sagesched-operator", "sagesched-predictor", "sagesched-redis", "sagesched-router"}


def test_rules_pass_promtool_check():
    out = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 10 rules found" in out.stdout


def test_alerts_fire_on_their_failures_and_stay_quiet_otherwise():
    out = subprocess.run(["promtool", "test", "rules", str(Path(__file__).parent / "rules_test.yaml")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_has_severity_summary_and_description():
    names = set()
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            names.add(rule["alert"])
            assert rule["labels"]["severity"] in {"critical", "warning"}
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]
            assert re.fullmatch(r"[0-9]+m", rule["for"])
    assert names == {"SageSchedRouterDown", "SageSchedQueueSaturated", "SageSchedQueueRejecting",
                     "SageSchedStalePodMetrics", "SageSchedPredictorFallbackRate", "SageSchedCalibrationDrift",
                     "SageSchedIntervalCoverageLow", "SageSchedOperatorDown", "SageSchedOperatorScrapeErrors",
                     "SageSchedPolicyDegraded"}


def test_dashboards_are_well_formed_grafana_json():
    assert [p.name for p in DASHBOARDS] == ["sagesched-engines.json", "sagesched-predictor.json",
                                            "sagesched-router.json"]
    uids = set()
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        assert board["uid"] not in uids and len(board["uid"]) <= 40
        uids.add(board["uid"])
        assert "sagesched" in board["tags"]
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), path.name
        cells: set[tuple[int, int]] = set()
        for panel in board["panels"]:
            g = panel["gridPos"]
            assert g["x"] + g["w"] <= 24, (path.name, panel["title"])
            mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
            assert not mine & cells, f"{path.name}: {panel['title']} overlaps another panel"
            cells |= mine
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] == "${datasource}"
            assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"])
            for t in panel["targets"]:
                # Every $variable a query uses is defined on the dashboard (or is Grafana's own).
                for var in re.findall(r"\$(\w+)", t["expr"]):
                    assert var in variables or var.startswith("__"), (path.name, var)


def test_dashboards_cover_what_the_issue_asks_for():
    exprs = " ".join(t["expr"] for path in DASHBOARDS for p in json.loads(path.read_text())["panels"]
                     for t in p.get("targets", []))
    for metric in ("sagesched_requests_total", "sagesched_errors_total", "sagesched_ttft_seconds_bucket",
                   "sagesched_ttlt_seconds_bucket", "sagesched_queue_depth", "sagesched_queue_wait_seconds_bucket",
                   "sagesched_dispatches_total", "vllm:kv_cache_usage_perc", "vllm:num_requests_running",
                   "vllm:num_requests_waiting", "vllm:num_preemptions_total", "sagesched_predicted_output_tokens_bucket",
                   "sagesched_actual_output_tokens_bucket", "sagesched_predictor_fallbacks_total",
                   "sagesched_pod_snapshot_age_seconds", "sagesched_predictor_interval_hits_total"):
        assert metric in exprs, metric


def test_dashboards_are_what_build_py_writes(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "manifests" / "dashboards" / "build.py"), str(tmp_path)], check=True)
    assert sorted(p.name for p in tmp_path.glob("*.json")) == [p.name for p in DASHBOARDS]
    for path in DASHBOARDS:
        assert (tmp_path / path.name).read_text() == path.read_text(), path.name
