"""Keep the chart and the plain manifests in step, from one source each.

    python manifests/install/generate.py          # copy sources into the chart, write sagesched.yaml
    python manifests/install/generate.py --check  # exit 1 if anything is out of date (CI, tests)

Sources of truth: the CRD in manifests/crds/ (operator), dashboards in manifests/dashboards/, alert
rules in manifests/prometheus/. Helm can only read files inside the chart, so they are copied into
charts/sagesched/{crds,files}/. manifests/install/sagesched.yaml is the chart rendered with its
default values (through helm-python-sdk, Helm's own Go engine) plus the Namespace and the CRDs, so
`kubectl apply -f manifests/install/` installs what `helm install` would.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "sagesched"
INSTALL = ROOT / "manifests" / "install" / "sagesched.yaml"
RELEASE = "sagesched"
NAMESPACE = "sagesched-system"

# What is copied where: (source, destination) pairs, resolved at call time.
def copies() -> list[tuple[Path, Path]]:
    pairs = [(ROOT / "manifests" / "crds" / "sageschedpolicies.yaml", CHART / "crds" / "sageschedpolicies.yaml"),
             (ROOT / "manifests" / "prometheus" / "rules.yaml", CHART / "files" / "prometheus" / "rules.yaml")]
    for src in sorted((ROOT / "manifests" / "dashboards").glob("*.json")):
        pairs.append((src, CHART / "files" / "dashboards" / src.name))
    return pairs


def stale_chart_files() -> list[str]:
    """Chart copies that differ from their source, and dashboards the chart has but the source lacks."""
    stale = [str(dst.relative_to(ROOT)) for src, dst in copies()
             if not dst.exists() or dst.read_bytes() != src.read_bytes()]
    sources = {src.name for src, _ in copies()}
    stale += [str(p.relative_to(ROOT)) for p in (CHART / "files" / "dashboards").glob("*.json")
              if p.name not in sources]
    return stale


def sync_chart_files() -> None:
    for src, dst in copies():
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(src.read_bytes())
    sources = {src.name for src, _ in copies()}
    for extra in (CHART / "files" / "dashboards").glob("*.json"):
        if extra.name not in sources:
            extra.unlink()


CRD = ROOT / "manifests" / "crds" / "sageschedpolicies.yaml"
_ENGINE_ENUM = re.compile(r"(\n {16}engine:\n(?: {18}.*\n)*? {18}enum: )\[[^\]]*\]")
_POLICY_ENUM = re.compile(r"( {22}description: The scheduling policy\.\n {22}enum:\n)(?: {22}- .*\n)+")


def crd_with_registries(text: str) -> str:
    """The CRD with its engine and policy enums written from the registries, so that a new engine or
    policy needs no hand edit here (tests/test_registries.py checks the result)."""
    from sagesched.engines import AUTO, ENGINES
    from sagesched.scheduling.policies import POLICIES

    text = _ENGINE_ENUM.sub(lambda m: m.group(1) + "[" + ", ".join([*ENGINES, AUTO]) + "]", text, count=1)
    return _POLICY_ENUM.sub(lambda m: m.group(1) + "".join(f"{' ' * 22}- {n}\n" for n in sorted(POLICIES)),
                            text, count=1)


# Apply order: what others depend on first (kubectl applies a file top to bottom).
KIND_ORDER = ["Namespace", "CustomResourceDefinition", "ServiceAccount", "Secret", "ConfigMap",
              "PersistentVolumeClaim", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
              "Service", "NetworkPolicy", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget"]


def render_objects(values: dict | None = None, *, name: str = RELEASE, namespace: str = NAMESPACE) -> list[dict]:
    """The chart's rendered objects (templates only, no CRDs), parsed, NOTES.txt left out."""
    import helm_python

    with helm_python.Chart.load(CHART) as chart:
        rendered = chart.render(values or {}, name=name, namespace=namespace)
    objects = []
    for path in sorted(rendered):
        if path.endswith("NOTES.txt"):
            continue
        objects += [doc for doc in yaml.safe_load_all(rendered[path]) if doc]
    return objects


def install_text() -> str:
    """manifests/install/sagesched.yaml as it should be."""
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": NAMESPACE, "labels": {"app.kubernetes.io/part-of": "sagesched",
                                      "pod-security.kubernetes.io/enforce": "restricted"}}}
    crds = [yaml.safe_load((CHART / "crds" / p.name).read_text()) for p in sorted((CHART / "crds").glob("*.yaml"))]
    objects = sorted(render_objects(), key=lambda o: (KIND_ORDER.index(o["kind"]) if o["kind"] in KIND_ORDER
                                                      else len(KIND_ORDER), o["metadata"]["name"]))
    header = ("# Generated from charts/sagesched with its default values by manifests/install/generate.py;\n"
              f"# do not edit. Release \"{RELEASE}\", namespace \"{NAMESPACE}\".\n"
              "#   kubectl apply --server-side -f manifests/install/sagesched.yaml\n")
    body = yaml.safe_dump_all([namespace, *crds, *objects], sort_keys=False, width=100)
    return header + "---\n" + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report what is out of date, change nothing")
    args = parser.parse_args(argv)
    if args.check:
        problems = stale_chart_files()
        if CRD.read_text() != crd_with_registries(CRD.read_text()):
            problems.append(str(CRD.relative_to(ROOT)))
        if not INSTALL.exists() or INSTALL.read_text() != install_text():
            problems.append(str(INSTALL.relative_to(ROOT)))
        for p in problems:
            print(f"out of date: {p}", file=sys.stderr)
        return 1 if problems else 0
    CRD.write_text(crd_with_registries(CRD.read_text()))
    sync_chart_files()
    INSTALL.write_text(install_text())
    print(f"wrote {INSTALL.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
