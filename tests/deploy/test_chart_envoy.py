"""The chart's Envoy (gateway.envoy): the config it ships is the one router/gateway/envoy_config.py
renders (the one the gateway tests run against real Envoy) and real Envoy accepts it."""
from __future__ import annotations

import subprocess

import pytest
import yaml

from sagesched.router.gateway.envoy_config import EnvoyGateway, bootstrap
from tests.gateway.conftest import envoy_binary
from tests.deploy.conftest import NAMESPACE, VALUE_SETS, Rendered


def _render(chart, values: dict) -> Rendered:
    return Rendered(chart.render(values, name="sagesched", namespace=NAMESPACE))


def envoy_config(rendered) -> str:
    (config_map,) = [o for o in rendered.of_kind("ConfigMap") if o["metadata"]["name"] == "sagesched-envoy"]
    return config_map["data"]["envoy.yaml"]


def test_envoy_config_is_what_envoy_config_py_renders_for_the_values(render):
    expected = EnvoyGateway(listen_port=8080, picker_host=f"sagesched-router.{NAMESPACE}.svc", picker_port=9002,
                            pool=((f"sagesched-pool.{NAMESPACE}.svc", 8000),), pool_dns=True,
                            body_mode="BUFFERED", fail_open=True, timeout_s=45, max_streams=20000)
    assert yaml.safe_load(envoy_config(render("gateway-envoy"))) == bootstrap(expected)


def test_defaults_are_the_documented_full_duplex_fail_closed_config(chart):
    values = {**VALUE_SETS["gateway-envoy"], "gateway": {"inferencePool": {"selector": {"app": "x"}},
                                                          "envoy": {"enabled": True}}}
    config = yaml.safe_load(envoy_config(_render(chart, values)))
    assert config == bootstrap(EnvoyGateway(picker_host=f"sagesched-router.{NAMESPACE}.svc",
                                            pool=((f"sagesched-pool.{NAMESPACE}.svc", 8000),)))


def test_envoy_validates_the_charts_config(render, tmp_path):
    path = tmp_path / "envoy.yaml"
    path.write_text(envoy_config(render("gateway-envoy")))
    checked = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr[-2000:]


def test_envoy_balances_over_the_pools_pods_and_reaches_the_picker(render):
    rendered = render("gateway-envoy")
    pool = rendered.one("Service", "sagesched-pool")
    assert pool["spec"]["clusterIP"] == "None" and pool["spec"]["selector"] == {"app": "llama3-8b"}
    assert [p["port"] for p in pool["spec"]["ports"]] == [8000]
    router_ports = {p["name"] for p in rendered.one("Service", "sagesched-router")["spec"]["ports"]}
    assert "ext-proc" in router_ports
    pod = rendered.one("Deployment", "sagesched-envoy")["spec"]["template"]["spec"]
    assert pod["volumes"][0]["configMap"]["name"] == "sagesched-envoy"
    assert "--disable-hot-restart" in pod["containers"][0]["args"]


@pytest.mark.parametrize("values", [
    {"gateway": {"inferencePool": {"selector": {"app": "x"}}, "envoy": {"enabled": True}}},
    {"router": {"extProc": {"enabled": True}}, "gateway": {"envoy": {"enabled": True}}},
], ids=["without ext_proc", "without a pool selector"])
def test_render_fails_without_what_envoy_needs(chart, values):
    with pytest.raises(Exception, match="gateway"):
        _render(chart, values)
