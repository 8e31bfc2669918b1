"""deploy/: the JSON Schema is current, the Prometheus rules and the dashboard use only metrics
the gateway exports, and the Kubernetes manifest carries a valid policy."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from lvm_gateway.config.load import json_schema, parse_config
from lvm_gateway.gateway.metrics import MetricsRecorder, RolloutCollector

DEPLOY = Path(__file__).parents[2] / "deploy"


def exported_names() -> set[str]:
    registry = CollectorRegistry()
    MetricsRecorder(registry)
    registry.register(RolloutCollector(lambda: {"r": 10.0}, lambda: True))
    names = set()
    for family in registry.collect():
        names.add(family.name + ("_total" if family.type == "counter" else ""))
        if family.type == "histogram":
            names |= {family.name + s for s in ("_bucket", "_count", "_sum")}
    return names


def used_names(text: str) -> set[str]:
    # Recording-rule names (level:metric:operations) are not exported metrics: skip `:x:`.
    return set(re.findall(r"(?<![\w:])lvmgw_[a-z0-9_]+(?![\w:])", text))


def test_committed_schema_is_current() -> None:
    committed = json.loads((DEPLOY / "schema" / "lvm-gateway.schema.json").read_text())
    assert committed == json_schema(), "run `make schema` and commit the result"


def test_rules_and_dashboard_use_exported_metrics() -> None:
    exported = exported_names()
    rules = (DEPLOY / "prometheus" / "rules.yml").read_text()
    dashboard = (DEPLOY / "grafana" / "lvm-gateway.json").read_text()
    for text in (rules, dashboard):
        used = used_names(text)
        assert used and used <= exported, used - exported
    panels = json.loads(dashboard)["panels"]
    assert all(p["targets"] and p["targets"][0]["expr"] for p in panels)


def test_prometheus_rules_check_and_unit_tests() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (.ci/run installs Debian's prometheus)")
    for args in (["check", "rules", "rules.yml"], ["test", "rules", "tests.yml"]):
        done = subprocess.run([promtool, *args], cwd=DEPLOY / "prometheus", capture_output=True)
        assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()


def test_kubernetes_manifest_carries_a_valid_policy() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "lvm-gateway.yaml").read_text()))
    assert [d["kind"] for d in docs] == ["ConfigMap", "Deployment", "Service"]
    config = parse_config(yaml.safe_load(docs[0]["data"]["lvm.yaml"]))
    assert config.routes["/infer"].rollout == "phase2"
    container = docs[1]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:2] == ["lvm-gateway", "serve"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
