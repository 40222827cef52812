"""The Helm chart, rendered and linted by Helm's own Go engine (helm-python-sdk), every object
validated against the Kubernetes OpenAPI schemas (kubernetes-validate) or, for custom resources,
against the CRD's own schema."""
from __future__ import annotations

import copy
import json
import subprocess

import helm_python
import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.deploy.conftest import CHART, NAMESPACE, ROOT, VALUE_SETS

KUBE_VERSION = kubernetes_validate.latest_version()  # the newest Kubernetes the validator knows
SETS = sorted(VALUE_SETS)

# kube-prometheus-stack and Gateway API Inference Extension kinds have no schema in
# kubernetes-validate. These minimal schemas hold the fields their CRDs require plus the fields our
# wiring depends on (monitoring.coreos.com/v1: ServiceMonitor spec.endpoints[].port/relabelings,
# spec.selector; PrometheusRule spec.groups[].rules[]; inference.networking.k8s.io/v1 InferencePool:
# selector.matchLabels, targetPorts[].number (1..8 items), endpointPickerRef.name/port.number,
# failureMode FailOpen|FailClose). Rule contents are checked by promtool below.
_META = {"type": "object", "required": ["name", "namespace"]}
THIRD_PARTY_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "type": "object", "required": ["metadata", "spec"],
        "properties": {"metadata": _META, "spec": {
            "type": "object", "required": ["selector", "endpoints"], "additionalProperties": False,
            "properties": {
                "selector": {"type": "object", "required": ["matchLabels"]},
                "namespaceSelector": {"type": "object", "properties": {"matchNames": {"type": "array", "items": {"type": "string"}}}},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["port"], "additionalProperties": False,
                    "properties": {"port": {"type": "string"}, "path": {"type": "string"},
                                   "interval": {"type": "string", "pattern": "^([0-9]+(ms|s|m|h))+$"},
                                   "scrapeTimeout": {"type": "string", "pattern": "^([0-9]+(ms|s|m|h))+$"},
                                   "relabelings": {"type": "array", "items": {
                                       "type": "object", "additionalProperties": False,
                                       "properties": {"action": {"enum": ["replace", "keep", "drop", "labelmap"]},
                                                      "targetLabel": {"type": "string"},
                                                      "replacement": {"type": "string"},
                                                      "sourceLabels": {"type": "array"}}}}}}}}}}},
    ("monitoring.coreos.com/v1", "PrometheusRule"): {
        "type": "object", "required": ["metadata", "spec"],
        "properties": {"metadata": _META, "spec": {
            "type": "object", "required": ["groups"], "additionalProperties": False,
            "properties": {"groups": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["name", "rules"],
                "properties": {"rules": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["expr"],
                    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}]}}}}}}}}},
    ("inference.networking.k8s.io/v1", "InferencePool"): {
        "type": "object", "required": ["metadata", "spec"],
        "properties": {"metadata": _META, "spec": {
            "type": "object", "required": ["selector", "targetPorts", "endpointPickerRef"],
            "additionalProperties": False,
            "properties": {
                "selector": {"type": "object", "required": ["matchLabels"], "additionalProperties": False,
                             "properties": {"matchLabels": {"type": "object", "minProperties": 1,
                                                            "additionalProperties": {"type": "string"}}}},
                "targetPorts": {"type": "array", "minItems": 1, "maxItems": 8, "items": {
                    "type": "object", "required": ["number"], "additionalProperties": False,
                    "properties": {"number": {"type": "integer", "minimum": 1, "maximum": 65535}}}},
                "appProtocol": {"enum": ["http", "kubernetes.io/h2c"]},
                "endpointPickerRef": {
                    "type": "object", "required": ["name", "port"], "additionalProperties": False,
                    "properties": {"group": {"type": "string"}, "kind": {"const": "Service"},
                                   "name": {"type": "string", "minLength": 1},
                                   "port": {"type": "object", "required": ["number"],
                                            "properties": {"number": {"type": "integer", "minimum": 1, "maximum": 65535}}},
                                   "failureMode": {"enum": ["FailOpen", "FailClose"]}}}}}}},
}


def crd_schema() -> tuple[str, str, dict]:
    crd = yaml.safe_load((CHART / "crds" / "sageschedpolicies.yaml").read_text())
    version = next(v for v in crd["spec"]["versions"] if v["storage"])
    return f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"], version["schema"]["openAPIV3Schema"]


def validate_object(obj: dict) -> None:
    key = (obj["apiVersion"], obj["kind"])
    policy_api, policy_kind, policy_schema = crd_schema()
    if key in THIRD_PARTY_SCHEMAS:
        jsonschema.validate(obj, THIRD_PARTY_SCHEMAS[key])
    elif key == (policy_api, policy_kind):
        jsonschema.validate(obj, policy_schema)
    else:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def pod_specs(rendered) -> dict[str, dict]:
    return {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in rendered.of_kind("Deployment")}


# --- rendering, linting, validation -------------------------------------------------------------

@pytest.mark.parametrize("set_name", SETS)
def test_chart_lints_clean_in_strict_mode(set_name):
    report = helm_python.lint(CHART, VALUE_SETS[set_name], strict=True, namespace=NAMESPACE,
                              kube_version=f"v{KUBE_VERSION}")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("set_name", SETS)
def test_every_rendered_object_is_valid_for_current_kubernetes(render, set_name):
    rendered = render(set_name)
    assert rendered.objects
    for obj in rendered.objects:
        validate_object(obj)
        if obj["kind"] not in {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}:
            assert obj["metadata"].get("namespace") in {NAMESPACE, "monitoring"}, obj["metadata"]


def test_validator_rejects_a_misspelt_field(render):
    """The validation above must be able to fail: a typo in a Deployment is caught."""
    deployment = copy.deepcopy(render("defaults").one("Deployment", "sagesched-router"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"port": "http"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_object(deployment)


def test_crds_ship_and_validate():
    crd = yaml.safe_load((CHART / "crds" / "sageschedpolicies.yaml").read_text())
    kubernetes_validate.validate(crd, KUBE_VERSION, strict=True)
    with helm_python.Chart.load(CHART) as chart:
        assert [c["name"] for c in chart.crds] == ["crds/sageschedpolicies.yaml"]


def test_default_render_has_each_component(render):
    rendered = render("defaults")
    assert sorted(d["metadata"]["name"] for d in rendered.of_kind("Deployment")) == [
        "sagesched-operator", "sagesched-predictor", "sagesched-redis", "sagesched-router"]
    assert {d["metadata"]["name"] for d in rendered.of_kind("Service")} == {
        "sagesched-operator", "sagesched-predictor", "sagesched-redis", "sagesched-router"}
    assert rendered.one("Deployment", "sagesched-router")["spec"]["replicas"] == 2
    assert rendered.of_kind("HorizontalPodAutoscaler") == []
    assert rendered.of_kind("ServiceMonitor") == rendered.of_kind("PrometheusRule") == []
    assert rendered.of_kind("InferencePool") == rendered.of_kind("SageSchedPolicy") == []


def test_operator_runs_one_standalone_replica_that_never_overlaps(render):
    for set_name in ("defaults", "namespaced-external-redis"):
        op = render(set_name).one("Deployment", "sagesched-operator")
        assert op["spec"]["replicas"] == 1
        assert op["spec"]["strategy"] == {"type": "Recreate"}
        assert "--standalone" in op["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--all-namespaces" in render("defaults").one("Deployment", "sagesched-operator")["spec"]["template"]["spec"]["containers"][0]["args"]
    args = render("namespaced-external-redis").one("Deployment", "sagesched-operator")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=inference" in args and "--namespace=inference-canary" in args
    assert "--all-namespaces" not in args


def test_container_args_parse_with_the_real_cli(render):
    """The args the chart gives each container are accepted by `sagesched`'s own parser."""
    from sagesched.cli import build_parser

    parser = build_parser()
    for set_name in ("defaults", "namespaced-external-redis"):
        for name in ("sagesched-router", "sagesched-operator"):
            container = render(set_name).one("Deployment", name)["spec"]["template"]["spec"]["containers"][0]
            args = [a.replace("$(SAGESCHED_REDIS_URL)", "redis://r:6379/0") for a in container["args"]]
            parsed = parser.parse_args(args)
            assert parsed.redis_url == "redis://r:6379/0"
            env = {e["name"] for e in container["env"]}
            assert "SAGESCHED_REDIS_URL" in env
        predictor = render(set_name).one("Deployment", "sagesched-predictor")["spec"]["template"]["spec"]["containers"][0]
        parsed = parser.parse_args(predictor["args"])
        assert parsed.listen == "0.0.0.0:50061" and parsed.metrics_port == 9461
        assert "SAGESCHED_REDIS_URL" not in {e["name"] for e in predictor["env"]}
    persistent = render("namespaced-external-redis").one("Deployment", "sagesched-predictor")
    assert str(parser.parse_args(persistent["spec"]["template"]["spec"]["containers"][0]["args"]).checkpoint_dir) == \
        "/var/lib/sagesched/checkpoints"


def test_semantic_gpu_predictor_gets_the_gpu_redis_and_cli_flags_it_parses(render):
    """predictor.gpu requests the GPU and embeds on it; a semantic mode shares history through Redis,
    which the network policy lets the predictor reach. The default stays CPU-only and Redis-free."""
    from sagesched.cli import build_parser

    rendered = render("predictor-semantic-gpu")
    container = rendered.one("Deployment", "sagesched-predictor")["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "2Gi", "nvidia.com/gpu": "1"}
    args = [a.replace("$(SAGESCHED_REDIS_URL)", "redis://r:6379/0") for a in container["args"]]
    parsed = build_parser().parse_args(args)
    assert (parsed.mode, parsed.embedder, parsed.embedder_device, parsed.redis_url) == \
        ("semantic-history", "minilm", "cuda", "redis://r:6379/0")
    env = {e["name"]: e for e in container["env"]}
    assert env["SAGESCHED_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "sagesched-redis", "key": "url"}
    allowed = [p["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
               for p in rendered.one("NetworkPolicy", "sagesched-redis")["spec"]["ingress"][0]["from"]]
    assert allowed == ["router", "operator", "predictor"]
    default = render("defaults").one("Deployment", "sagesched-predictor")["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in default["resources"]["limits"]
    assert build_parser().parse_args(default["args"]).mode == "network"


def test_router_config_file_is_valid_router_settings(render, tmp_path):
    from sagesched.router.settings import RouterSettings

    for set_name, expect_queue in (("defaults", 8192), ("gateway-monitoring", 2048)):
        config = render(set_name).one("ConfigMap", "sagesched-router")["data"]["router.yaml"]
        path = tmp_path / f"{set_name}.yaml"
        path.write_text(config)
        settings = RouterSettings.from_yaml(path)
        assert settings.port == 8080 and settings.grpc_port == 50051
        assert settings.max_queue_per_model == expect_queue
        assert settings.predictor_address == f"sagesched-predictor.{NAMESPACE}.svc:50061"


@pytest.mark.parametrize("set_name", SETS)
def test_router_drain_ends_before_kubernetes_kills_the_router(render, set_name, tmp_path):
    from sagesched.router.settings import RouterSettings

    router = [o for o in render(set_name).objects
              if o["metadata"]["labels"].get("app.kubernetes.io/component") == "router"]
    path = tmp_path / "router.yaml"
    path.write_text(next(o for o in router if o["kind"] == "ConfigMap")["data"]["router.yaml"])
    grace = RouterSettings.from_yaml(path).shutdown_grace_s
    kill_after = next(o for o in router if o["kind"] == "Deployment")["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"]
    assert 0 < grace <= kill_after - 10


def test_router_drain_follows_the_termination_grace_period(chart):
    rendered = chart.render({"router": {"terminationGracePeriodSeconds": 120}}, name="sagesched", namespace=NAMESPACE)
    config = yaml.safe_load(next(text for path, text in rendered.items() if path.endswith("router-configmap.yaml")))
    deployment = yaml.safe_load(next(text for path, text in rendered.items() if path.endswith("router-deployment.yaml")))
    assert yaml.safe_load(config["data"]["router.yaml"])["shutdown_grace_s"] == 110
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 120


def test_render_fails_when_the_configured_drain_outlasts_the_grace_period(chart):
    with pytest.raises(helm_python.HelmError, match="shutdown_grace_s"):
        chart.render({"router": {"config": {"shutdown_grace_s": 30}}}, name="sagesched", namespace=NAMESPACE)


# --- security -----------------------------------------------------------------------------------

@pytest.mark.parametrize("set_name", SETS)
def test_every_container_is_non_root_read_only_and_bounded(render, set_name):
    for name, spec in pod_specs(render(set_name)).items():
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert c["resources"]["requests"] and c["resources"]["limits"], name
            assert "livenessProbe" in c and "readinessProbe" in c, name


@pytest.mark.parametrize("set_name", SETS)
def test_only_the_operator_gets_an_api_token(render, set_name):
    rendered = render(set_name)
    for name, spec in pod_specs(rendered).items():
        assert spec["automountServiceAccountToken"] is name.endswith("operator"), name
    for sa in rendered.of_kind("ServiceAccount"):
        assert sa["automountServiceAccountToken"] is sa["metadata"]["name"].endswith("operator")


# --- RBAC ---------------------------------------------------------------------------------------

EXPECTED_OPERATOR_GRANTS = {
    ("", "pods", "get"), ("", "pods", "list"), ("", "pods", "watch"),
    ("sagesched.io", "sageschedpolicies", "get"), ("sagesched.io", "sageschedpolicies", "list"),
    ("sagesched.io", "sageschedpolicies", "watch"), ("sagesched.io", "sageschedpolicies", "patch"),
    ("sagesched.io", "sageschedpolicies/status", "get"), ("sagesched.io", "sageschedpolicies/status", "patch"),
    ("inference.networking.k8s.io", "inferencepools", "get"),
    ("inference.networking.k8s.io", "inferencepools", "list"),
    ("inference.networking.k8s.io", "inferencepools", "watch"),
    ("", "events", "create"),
}


def grants(role: dict) -> set[tuple[str, str, str]]:
    out = set()
    for rule in role["rules"]:
        assert "nonResourceURLs" not in rule and "resourceNames" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert "*" not in (group, resource, verb), rule
                    out.add((group, resource, verb))
    return out


def bindings_by_subject(rendered) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for b in rendered.of_kind("ClusterRoleBinding") + rendered.of_kind("RoleBinding"):
        for s in b["subjects"]:
            found.setdefault(s["name"], []).append(b)
    return found


def test_operator_rbac_is_exactly_the_least_privilege_set_cluster_wide(render):
    rendered = render("defaults")
    (role,) = rendered.of_kind("ClusterRole")
    assert grants(role) == EXPECTED_OPERATOR_GRANTS
    assert rendered.of_kind("Role") == []
    by_subject = bindings_by_subject(rendered)
    assert set(by_subject) == {"sagesched-operator"}
    (binding,) = by_subject["sagesched-operator"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "sagesched-operator", "namespace": NAMESPACE}]


def test_operator_rbac_is_namespaced_when_namespaces_are_listed(render):
    rendered = render("namespaced-external-redis")
    assert rendered.of_kind("ClusterRole") == rendered.of_kind("ClusterRoleBinding") == []
    roles = rendered.of_kind("Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["inference", "inference-canary"]
    for role in roles:
        assert grants(role) == EXPECTED_OPERATOR_GRANTS
    assert sorted(b["metadata"]["namespace"] for b in rendered.of_kind("RoleBinding")) == ["inference", "inference-canary"]


@pytest.mark.parametrize("set_name", SETS)
def test_router_and_predictor_are_bound_to_nothing(render, set_name):
    by_subject = bindings_by_subject(render(set_name))
    assert all(name.endswith("-operator") for name in by_subject), by_subject
    assert not any(k in {"leases", "secrets", "kopfpeerings", "clusterkopfpeerings"}
                   for role in render(set_name).of_kind("ClusterRole") + render(set_name).of_kind("Role")
                   for _, k, _ in grants(role))


# --- wiring between objects ---------------------------------------------------------------------

@pytest.mark.parametrize("set_name", SETS)
def test_services_select_pods_and_target_named_container_ports(render, set_name):
    rendered = render(set_name)
    deployments = rendered.of_kind("Deployment")
    # A headless Service (gateway.envoy's pool) lists the engine pods, which the chart does not deploy.
    for svc in (s for s in rendered.of_kind("Service") if s["spec"].get("clusterIP") != "None"):
        selector = svc["spec"]["selector"]
        matches = [d for d in deployments
                   if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(matches) == 1, svc["metadata"]["name"]
        ports = {p["name"] for c in matches[0]["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in ports, (svc["metadata"]["name"], port)
    for d in deployments:
        assert d["spec"]["selector"]["matchLabels"].items() <= d["spec"]["template"]["metadata"]["labels"].items()


def test_gateway_mode_wires_the_pool_to_the_router_ext_proc_port(render):
    rendered = render("gateway-monitoring")
    (pool,) = rendered.of_kind("InferencePool")
    svc = rendered.one("Service", pool["spec"]["endpointPickerRef"]["name"])
    ports = {p["name"]: p["port"] for p in svc["spec"]["ports"]}
    assert ports["ext-proc"] == pool["spec"]["endpointPickerRef"]["port"]["number"] == 9002
    assert pool["spec"]["targetPorts"] == [{"number": 8000}, {"number": 8001}]
    assert pool["spec"]["selector"] == {"matchLabels": {"app": "llama3-8b"}}
    router = rendered.one("Deployment", "sagesched-router")
    assert "replicas" not in router["spec"]  # the HPA owns it
    hpa = rendered.one("HorizontalPodAutoscaler", "sagesched-router")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    assert "ext-proc" not in {p["name"] for p in render("defaults").one("Service", "sagesched-router")["spec"]["ports"]}


def test_service_monitors_scrape_existing_service_ports_and_fix_job_names(render):
    rendered = render("gateway-monitoring")
    monitors = rendered.of_kind("ServiceMonitor")
    assert {m["metadata"]["name"] for m in monitors} == {"sagesched-router", "sagesched-operator", "sagesched-predictor"}
    for m in monitors:
        assert m["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        svc = rendered.one("Service", m["metadata"]["name"])
        assert m["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
        (endpoint,) = m["spec"]["endpoints"]
        assert endpoint["port"] in {p["name"] for p in svc["spec"]["ports"]}
        component = m["metadata"]["labels"]["app.kubernetes.io/component"]
        assert endpoint["relabelings"] == [{"action": "replace", "targetLabel": "job",
                                            "replacement": f"sagesched-{component}"}]


def test_prometheus_rule_carries_the_promtool_checked_rules(render, tmp_path):
    (rule,) = render("gateway-monitoring").of_kind("PrometheusRule")
    assert rule["spec"] == yaml.safe_load((ROOT / "manifests" / "prometheus" / "rules.yaml").read_text())
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"]))
    subprocess.run(["promtool", "check", "rules", str(path)], check=True, capture_output=True)


def test_routers_read_the_chart_policys_pods_under_the_operators_prefix(render, tmp_path):
    """An EPP for one pool must not hand out another policy's pods, and a prefix the router does
    not share would leave it without pods."""
    from sagesched.cli import build_parser
    from sagesched.router.settings import RouterSettings

    for set_name, store_policy in (("defaults", None), ("gateway-monitoring", f"{NAMESPACE}/llama3-8b")):
        rendered = render(set_name)
        path = tmp_path / f"{set_name}.yaml"
        path.write_text(rendered.one("ConfigMap", "sagesched-router")["data"]["router.yaml"])
        settings = RouterSettings.from_yaml(path)
        args = rendered.one("Deployment", "sagesched-operator")["spec"]["template"]["spec"]["containers"][0]["args"]
        assert settings.store_policy == store_policy
        assert settings.redis_prefix == build_parser().parse_args(args).redis_prefix == "sagesched"


def test_policy_renders_with_the_crd_storage_version_and_validates(render):
    api, kind, schema = crd_schema()
    (policy,) = render("gateway-monitoring").of_kind(kind)
    assert policy["apiVersion"] == api
    assert policy["metadata"] == {**policy["metadata"], "name": "llama3-8b", "namespace": NAMESPACE}
    jsonschema.validate(policy, schema)


def test_dashboards_are_sidecar_configmaps_with_each_dashboard(render):
    sources = sorted(p.name for p in (ROOT / "manifests" / "dashboards").glob("*.json"))
    rendered = render("gateway-monitoring")
    maps = [c for c in rendered.of_kind("ConfigMap") if c["metadata"]["labels"].get("grafana_dashboard") == "1"]
    assert sorted(k for c in maps for k in c["data"]) == sources
    for c in maps:
        assert c["metadata"]["namespace"] == "monitoring"
        assert c["metadata"]["annotations"] == {"grafana_folder": "SageSched"}
        for name, text in c["data"].items():
            assert json.loads(text) == json.loads((ROOT / "manifests" / "dashboards" / name).read_text())
    assert not any("grafana_dashboard" in c["metadata"]["labels"] for c in render("minimal").of_kind("ConfigMap"))


def test_redis_url_reaches_every_component_from_a_secret(render):
    defaults = render("defaults")
    secret = defaults.one("Secret", "sagesched-redis")
    assert secret["stringData"]["url"] == f"redis://sagesched-redis.{NAMESPACE}.svc:6379/0"
    external = render("namespaced-external-redis")
    assert external.one("Secret", "sagesched-redis")["stringData"]["url"] == "rediss://:secret@redis.example.internal:6380/2"
    assert [d for d in external.of_kind("Deployment") if d["metadata"]["name"].endswith("redis")] == []
    minimal = render("minimal")
    assert minimal.of_kind("Secret") == []
    for set_name, secret_name, key in (("defaults", "sagesched-redis", "url"), ("minimal", "my-redis", "connection-url")):
        for name, spec in pod_specs(render(set_name)).items():
            if name.endswith(("redis", "predictor")):
                continue
            env = {e["name"]: e for e in spec["containers"][0]["env"]}
            assert env["SAGESCHED_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": secret_name, "key": key}


def test_redis_persistence_and_network_policy(render):
    rendered = render("bundled-redis-persistence")
    redis = rendered.one("Deployment", "sched-redis")
    volume = {v["name"]: v for v in redis["spec"]["template"]["spec"]["volumes"]}["data"]
    assert volume == {"name": "data", "persistentVolumeClaim": {"claimName": "sched-redis"}}
    assert rendered.one("PersistentVolumeClaim", "sched-redis")["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert "--appendonly" in redis["spec"]["template"]["spec"]["containers"][0]["args"]
    assert all(o["metadata"]["labels"]["team"] == "ml-platform" for o in rendered.objects)
    netpol = rendered.one("NetworkPolicy", "sched-redis")
    allowed = [p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in netpol["spec"]["ingress"][0]["from"]]
    assert sorted(allowed) == ["operator", "router"]


def test_pdb_uses_max_unavailable_when_set(render):
    assert render("defaults").one("PodDisruptionBudget", "sagesched-router")["spec"]["minAvailable"] == 1
    pdb = render("namespaced-external-redis").one("PodDisruptionBudget", "sagesched-router")["spec"]
    assert pdb["maxUnavailable"] == "25%" and "minAvailable" not in pdb
    assert render("minimal").of_kind("PodDisruptionBudget") == []


def test_notes_tell_how_to_reach_the_router_and_dashboards(render):
    notes = render("defaults").notes
    assert f"kubectl -n {NAMESPACE} port-forward svc/sagesched-router 8080:8080 50051:50051" in notes
    assert "grafana_dashboard=1" in notes
    gateway_notes = render("gateway-monitoring").notes
    assert f"sagesched-router.{NAMESPACE}.svc:9002" in gateway_notes
    assert 'SageSchedPolicy "llama3-8b" was created' in gateway_notes


# --- values schema ------------------------------------------------------------------------------

@pytest.mark.parametrize("set_name", SETS)
def test_schema_accepts_every_value_set(chart, set_name):
    chart.validate_schema(chart.merge_values(VALUE_SETS[set_name]))


BAD_VALUES = {
    "unknown top-level key": {"routr": {"replicas": 2}},
    "zero router replicas": {"router": {"replicas": 0}},
    "port out of range": {"router": {"ports": {"http": 70000}}},
    "bad pull policy": {"image": {"pullPolicy": "Sometimes"}},
    "replicas as a string": {"router": {"replicas": "3"}},
    "bad resource quantity": {"router": {"resources": {"limits": {"memory": "lots"}}}},
    "no redis at all": {"redis": {"enabled": False}},
    "non-redis url": {"redis": {"enabled": False}, "externalRedis": {"url": "http://redis:6379"}},
    "pool without ext_proc": {"gateway": {"inferencePool": {"enabled": True, "selector": {"app": "x"}}}},
    "pool without selector": {"router": {"extProc": {"enabled": True}},
                              "gateway": {"inferencePool": {"enabled": True}}},
    "bad failure mode": {"gateway": {"inferencePool": {"failureMode": "Maybe"}}},
    "invalid namespace name": {"operator": {"watchNamespaces": ["Inference_Prod"]}},
    "bad scrape interval": {"metrics": {"serviceMonitor": {"interval": "fast"}}},
    "no time left for a drain": {"router": {"terminationGracePeriodSeconds": 10}},
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_schema_rejects_bad_values_and_render_fails(chart, case):
    with pytest.raises(helm_python.HelmValuesError):
        chart.validate_schema(chart.merge_values(BAD_VALUES[case]))
    with pytest.raises(helm_python.HelmError):
        chart.render(BAD_VALUES[case], name="sagesched", namespace=NAMESPACE)
