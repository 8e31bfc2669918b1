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


def test_every_alert_has_a_promtool_test() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((DEPLOY / "prometheus" / "tests.yml").read_text())["tests"]
    fired = {
        t["alertname"]
        for group in tests
        for t in group.get("alert_rule_test", [])
        if t.get("exp_alerts")  # a test that expects the alert to fire, not only silence
    }
    assert alerts - fired == set()


def manifest() -> dict[tuple[str, str], dict[str, object]]:
    docs = yaml.safe_load_all((DEPLOY / "kubernetes" / "lvm-gateway.yaml").read_text())
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def test_kubernetes_manifest_carries_a_valid_policy() -> None:
    docs = manifest()
    config = parse_config(
        yaml.safe_load(docs["ConfigMap", "lvm-gateway-policy"]["data"]["lvm.yaml"])
    )
    assert config.routes["/infer"].rollout == "phase2"
    assert config.spec.notifications[0].secret_env == "LVMGW_WEBHOOK_SECRET"
    pod = docs["Deployment", "lvm-gateway"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"][:2] == ["lvm-gateway", "serve"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"


def test_kubernetes_manifest_is_production_shaped() -> None:
    docs = manifest()
    deployment = docs["Deployment", "lvm-gateway"]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    # The image is the one the Dockerfile builds, run as the user it creates.
    dockerfile = (DEPLOY.parent / "Dockerfile").read_text()
    version = re.search(r'^version = "(.+)"', (DEPLOY.parent / "pyproject.toml").read_text(), re.M)
    assert version and container["image"] == f"lvm-gateway:{version.group(1)}"
    assert f"docker build -t {container['image']} ." in dockerfile
    assert f'image.version="{version.group(1)}"' in dockerfile
    assert f"USER {pod['securityContext']['runAsUser']}" in dockerfile
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    # Tokens come from the Secret, never from the manifest's plain env values.
    secret = docs["Secret", "lvm-gateway-tokens"]
    refs = {e["valueFrom"]["secretKeyRef"]["key"] for e in container["env"] if "valueFrom" in e}
    assert refs == set(secret["stringData"])
    # The PDB and the ServiceMonitor select the gateway pods / Service.
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert docs["PodDisruptionBudget", "lvm-gateway"]["spec"]["selector"]["matchLabels"] == labels
    monitor = docs["ServiceMonitor", "lvm-gateway"]["spec"]
    service = docs["Service", "lvm-gateway"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    # Redis keeps its data on a volume, at the address the Secret names.
    redis = docs["StatefulSet", "lvm-gateway-redis"]["spec"]
    assert redis["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    assert "--appendonly" in redis["template"]["spec"]["containers"][0]["args"]
    assert f"{redis['serviceName']}:6379" in secret["stringData"]["redis-url"]


def test_dashboard_filters_by_rollout_and_instance_and_marks_transitions() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "lvm-gateway.json").read_text())
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"rollout", "instance"} <= variables
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert all('instance=~"$instance"' in e for e in exprs)
    assert any('rollout=~"$rollout"' in e for e in exprs)
    (annotation,) = dashboard["annotations"]["list"]
    assert "lvmgw_rollout_phase" in annotation["expr"]
