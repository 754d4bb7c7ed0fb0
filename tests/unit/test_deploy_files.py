"""Deployment files checked without a cluster: every Kubernetes manifest against the Kubernetes API schemas
(kubernetes-validate ships them, no network), the worker and the server with probes and resource requests, secrets
only through the Secret; the Grafana dashboard's queries against the metrics the services really export."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))
DASHBOARD = ROOT / "deploy" / "grafana" / "streamrec-dashboard.json"
SECRET_VARS = {"STREAMREC_REDIS_PASSWORD", "STREAMREC_KAFKA_SASL_PASSWORD", "STREAMREC_API_KEY"}


def documents() -> list[dict[str, Any]]:
    return [doc for path in K8S for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.mark.parametrize("doc", documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_each_manifest_is_valid_against_the_kubernetes_schemas(doc: dict[str, Any]) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(doc, "1.30", strict=True)  # raises ValidationError naming the field


def test_worker_and_server_have_probes_requests_and_secrets_from_the_secret() -> None:
    deployments = {d["metadata"]["name"]: d for d in documents() if d["kind"] == "Deployment"}
    assert set(deployments) == {"streamrec-server", "streamrec-worker"}
    secret = next(d for d in documents() if d["kind"] == "Secret")
    assert set(secret["stringData"]) == SECRET_VARS
    for name, deployment in deployments.items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", name
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", name
        requests = container["resources"]["requests"]
        assert requests["cpu"] and requests["memory"], name
        # No secret as a literal env var: they come from the Secret only.
        literal = {e["name"] for e in container.get("env", [])}
        assert not literal & SECRET_VARS, name
        assert {"secretRef": {"name": secret["metadata"]["name"]}} in container["envFrom"], name


def exported_metrics() -> dict[str, set[str]]:
    """Every streamrec metric the server and the worker register: exposition name -> its label names."""
    from prometheus_client import REGISTRY

    import serving.app
    import serving.metrics  # noqa: F401
    import streams.metrics  # noqa: F401

    out: dict[str, set[str]] = {}
    for family in REGISTRY.collect():
        if not family.name.startswith("streamrec_"):
            continue
        labels = {label for sample in family.samples for label in sample.labels} - {"le"}
        labels |= set(getattr(REGISTRY._names_to_collectors.get(family.name), "_labelnames", ()))  # no samples yet
        for suffix in ({"_bucket", "_count", "_sum"} if family.type == "histogram" else
                       {"_total"} if family.type == "counter" else {""}):
            out[family.name + suffix] = labels
    return out


def test_every_dashboard_query_reads_a_metric_the_services_export() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["panels"]
    metrics = exported_metrics()
    seen: set[str] = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            names = set(re.findall(r"\bstreamrec_[a-z0-9_]+", expr))
            assert names, expr
            for name in names:
                assert name in metrics, f"{panel['title']}: {name} is not exported"
                for group in re.findall(r"by \(([^)]*)\)", expr):
                    used = {label.strip() for label in group.split(",")} - {"le"}
                    assert used <= metrics[name], f"{panel['title']}: {name} has no label {used - metrics[name]}"
            seen |= names
    # The issue's panels: latency by stage, shed and degraded answers, worker lag, throughput, dead letters.
    for needed in ("streamrec_serving_stage_seconds_bucket", "streamrec_http_admission_shed_total",
                   "streamrec_serving_degraded_total", "streamrec_worker_consumer_lag",
                   "streamrec_worker_events_total", "streamrec_worker_dead_letters_total"):
        assert needed in seen, needed


def test_every_compose_service_has_a_healthcheck_and_a_restart_policy() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for name, service in services.items():
        if service.get("restart") == "no":  # a one-shot (init-topics): it exits when done
            continue
        assert service.get("restart") in {"unless-stopped", "always", "on-failure"}, name
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
