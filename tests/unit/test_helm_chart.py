"""deploy/helm/relayx: `helm lint` and `helm template` pass, the rendered objects match Kubernetes'
schemas, and the chart keeps what lets a gateway finish its calls and scale on them.

helm comes from scripts/setup.sh (.venv/bin/helm) and the schemas from kubernetes-validate; each
check that needs one skips, saying so, where it is missing. The checks on the chart's own files
(values, Chart.yaml, the templates' text) run everywhere.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "relayx"
TEST_VALUES = CHART / "ci" / "test-values.yaml"
TEMPLATES = CHART / "templates"
ACTIVE_CALLS = "relayx_gateway_active_calls"
SECRET_KEYS = {"DATABASE_URL", "RELAYX_API_KEY", "WEBHOOK_SECRET", "TWILIO_AUTH_TOKEN", "TWILIO_ACCOUNT_SID",
               "OPENAI_API_KEY", "SUPABASE_SERVICE_ROLE_KEY", "METRICS_TOKEN"}
CUSTOM_KINDS = {"ScaledObject", "ServiceMonitor"}  # CRDs (KEDA, Prometheus Operator): no bundled schema
MIN_KUBERNETES = "1.27.0"  # Chart.yaml's kubeVersion floor


def _helm() -> str | None:
    local = Path(sys.executable).parent / "helm"
    return str(local) if local.is_file() else shutil.which("helm")


HELM = _helm()
needs_helm = pytest.mark.skipif(HELM is None, reason="helm is not installed (scripts/setup.sh puts it in .venv/bin)")


def _run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    assert HELM is not None
    return subprocess.run([HELM, *args], check=False, capture_output=True, text=True, timeout=60)


def _template(*args: str) -> list[dict[str, Any]]:
    result = _run_helm("template", "rx", str(CHART), "--namespace", "calls", *args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    """Every optional part on (tests' values: autoscaling with the HPA, recordings, ServiceMonitor)."""
    if HELM is None:
        pytest.skip("helm is not installed (scripts/setup.sh puts it in .venv/bin)")
    return _template("--values", str(TEST_VALUES))


# --- the chart's files, without helm ---------------------------------------------------------------


def test_chart_metadata_is_a_helm_3_application_chart() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "relayx" and chart["type"] == "application"
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["version"])
    assert chart["kubeVersion"] == f">={MIN_KUBERNETES}-0"


def test_every_top_level_value_is_documented() -> None:
    """Each top-level key, or the run of keys it belongs to (nameOverride, fullnameOverride), has a
    comment above it."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^[a-zA-Z]\w*:", line):
            above = i - 1
            while above >= 0 and re.match(r"^[a-zA-Z]\w*:", lines[above]):
                above -= 1
            assert above >= 0 and lines[above].startswith("#"), f"values.yaml: {line!r} has no comment"


def test_no_credential_is_a_plain_setting(values: dict[str, Any]) -> None:
    assert not SECRET_KEYS & set(values["config"]), "credentials belong under secrets:, not config:"
    assert values["secrets"]["databaseUrl"] == "" and values["secrets"]["apiKey"] == ""


def test_gateway_grace_period_covers_the_drain(values: dict[str, Any]) -> None:
    gateway = values["gateway"]
    assert gateway["drainTimeoutSeconds"] == 600  # the gateway's GATEWAY_DRAIN_TIMEOUT_S default
    needed = gateway["preStopSleepSeconds"] + gateway["drainTimeoutSeconds"] + 60
    assert gateway["terminationGracePeriodSeconds"] >= needed
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/health"


def test_templates_name_the_invariants_helm_cannot_check() -> None:
    """The text of the templates, for a machine without helm: probes, drain, hooks, the metric."""
    gateway = (TEMPLATES / "gateway.yaml").read_text()
    assert "terminationGracePeriodSeconds: {{ $g.terminationGracePeriodSeconds }}" in gateway
    assert re.search(r"preStop:\s+exec:\s+command: \[\"sleep\"", gateway)
    assert "maxUnavailable: 0" in gateway  # a rollout starts new pods before old ones drain
    autoscaling = (TEMPLATES / "gateway-autoscaling.yaml").read_text()
    assert f"name: {ACTIVE_CALLS}" in autoscaling and "type: Pods" in autoscaling
    assert "kind: ScaledObject" in autoscaling
    job = (TEMPLATES / "migrations-job.yaml").read_text()
    assert "helm.sh/hook: pre-install,pre-upgrade" in job and '["relayx", "migrate"]' in job
    for name in ("backend.yaml", "gateway.yaml", "worker.yaml", "migrations-job.yaml"):
        assert 'include "relayx.envFrom"' in (TEMPLATES / name).read_text(), name


# --- helm lint and helm template ----------------------------------------------------------------


@needs_helm
def test_helm_lint_strict_passes() -> None:
    result = _run_helm("lint", str(CHART), "--strict", "--values", str(TEST_VALUES))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_helm
def test_helm_lint_of_the_defaults_passes_and_asks_for_the_database() -> None:
    result = _run_helm("lint", str(CHART))
    assert result.returncode == 0, result.stdout + result.stderr
    template = _run_helm("template", "rx", str(CHART))
    assert template.returncode != 0 and "secrets.databaseUrl is required" in template.stderr


def test_rendered_chart_has_every_part(rendered: list[dict[str, Any]]) -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in rendered}
    for kind, name in [("Deployment", "rx-relayx-backend"), ("Service", "rx-relayx-backend"),
                       ("Deployment", "rx-relayx-gateway"), ("Service", "rx-relayx-gateway"),
                       ("Deployment", "rx-relayx-worker"), ("Job", "rx-relayx-migrations"),
                       ("Secret", "rx-relayx-secrets"), ("ConfigMap", "rx-relayx-config"),
                       ("Ingress", "rx-relayx-backend"), ("Ingress", "rx-relayx-gateway"),
                       ("HorizontalPodAutoscaler", "rx-relayx-gateway"),
                       ("PodDisruptionBudget", "rx-relayx-gateway"),
                       ("PersistentVolumeClaim", "rx-relayx-recordings"), ("ServiceMonitor", "rx-relayx")]:
        assert (kind, name) in kinds, f"{kind} {name} not rendered"
    assert not any(d["kind"] == "ScaledObject" for d in rendered)  # the HPA, not both


def test_gateway_drains_before_it_stops(rendered: list[dict[str, Any]]) -> None:
    deployment = _one(rendered, "Deployment", "rx-relayx-gateway")
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    sleep = container["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep" and int(sleep[1]) > 0
    config = _one(rendered, "ConfigMap", "rx-relayx-config")["data"]
    drain = float(config["GATEWAY_DRAIN_TIMEOUT_S"])
    assert pod["terminationGracePeriodSeconds"] >= int(sleep[1]) + drain + 60
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert config["SPOOL_DIR"] in mounts


def test_gateway_scales_on_active_calls_per_pod(rendered: list[dict[str, Any]], values: dict[str, Any]) -> None:
    hpa = _one(rendered, "HorizontalPodAutoscaler", "rx-relayx-gateway")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "rx-relayx-gateway"}
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == ACTIVE_CALLS
    target = metric["pods"]["target"]
    assert target["type"] == "AverageValue"
    assert int(target["averageValue"]) == values["gateway"]["autoscaling"]["targetActiveCallsPerPod"]
    assert int(target["averageValue"]) <= values["gateway"]["maxCalls"]  # scale before the pods are full
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300


@needs_helm
def test_keda_replaces_the_hpa_when_asked() -> None:
    docs = _template("--values", str(TEST_VALUES), "--set", "gateway.autoscaling.keda.enabled=true")
    assert not any(d["kind"] == "HorizontalPodAutoscaler" for d in docs)
    scaled = _one(docs, "ScaledObject", "rx-relayx-gateway")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == "rx-relayx-gateway"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    assert trigger["metadata"]["query"] == (
        f'sum({ACTIVE_CALLS}{{namespace="calls", pod=~"rx-relayx-gateway-.*"}})'
    )


def test_credentials_only_in_the_secret(rendered: list[dict[str, Any]]) -> None:
    config = _one(rendered, "ConfigMap", "rx-relayx-config")["data"]
    secret = _one(rendered, "Secret", "rx-relayx-secrets")
    assert not SECRET_KEYS & set(config)
    assert {"DATABASE_URL", "RELAYX_API_KEY", "WEBHOOK_SECRET", "TWILIO_AUTH_TOKEN", "METRICS_TOKEN"} <= set(secret["data"])
    (endpoint,) = _one(rendered, "ServiceMonitor", "rx-relayx")["spec"]["endpoints"]
    assert endpoint["authorization"]["credentials"] == {"name": "rx-relayx-secrets", "key": "METRICS_TOKEN"}
    test_values = yaml.safe_load(TEST_VALUES.read_text())
    assert test_values["secrets"]["databaseUrl"] not in config.values()
    for name in ("rx-relayx-backend", "rx-relayx-gateway", "rx-relayx-worker"):
        env_from = _container(_one(rendered, "Deployment", name))["envFrom"]
        assert {"secretRef": {"name": "rx-relayx-secrets"}} in env_from, name
        assert {"configMapRef": {"name": "rx-relayx-config"}} in env_from, name
    job = _one(rendered, "Job", "rx-relayx-migrations")
    assert {"secretRef": {"name": "rx-relayx-secrets"}} in job["spec"]["template"]["spec"]["containers"][0]["envFrom"]


def test_migrations_run_first_and_their_inputs_exist_by_then(rendered: list[dict[str, Any]]) -> None:
    job = _one(rendered, "Job", "rx-relayx-migrations")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["relayx", "migrate"]
    for kind, name in (("Secret", "rx-relayx-secrets"), ("ConfigMap", "rx-relayx-config")):
        hook = _one(rendered, kind, name)["metadata"]["annotations"]
        assert "pre-install" in hook["helm.sh/hook"] and "pre-upgrade" in hook["helm.sh/hook"]
        assert int(hook["helm.sh/hook-weight"]) < int(annotations["helm.sh/hook-weight"])


def test_ingress_carries_websockets_for_a_whole_call(rendered: list[dict[str, Any]]) -> None:
    ingress = _one(rendered, "Ingress", "rx-relayx-gateway")
    annotations = ingress["metadata"]["annotations"]
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= 3600
    assert "http_503" in annotations["nginx.ingress.kubernetes.io/proxy-next-upstream"]
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    assert path["path"] == "/media" and path["backend"]["service"]["name"] == "rx-relayx-gateway"
    config = _one(rendered, "ConfigMap", "rx-relayx-config")["data"]
    assert config["PUBLIC_GATEWAY_URL"] == f"wss://{rule['host']}"
    assert config["GATEWAY_INTERNAL_URL"] == "http://rx-relayx-gateway:8001"


@needs_helm
@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("gateway.terminationGracePeriodSeconds=600", "must be at least preStopSleepSeconds + drainTimeoutSeconds + 60"),
        ("config.DATABASE_URL=postgresql://x", "config.DATABASE_URL is a credential"),
        ("config.GATEWAY_DRAIN_TIMEOUT_S=5", "comes from gateway.drainTimeoutSeconds"),
    ],
)
def test_chart_refuses_values_that_would_cut_calls_or_leak_credentials(flag: str, message: str) -> None:
    result = _run_helm("template", "rx", str(CHART), "--values", str(TEST_VALUES), "--set", flag)
    assert result.returncode != 0 and message in result.stderr, result.stderr


@needs_helm
def test_an_existing_secret_replaces_the_charts() -> None:
    docs = _template("--set", "secrets.existingSecret=relayx-credentials")
    assert not any(d["kind"] == "Secret" for d in docs)
    env_from = _container(_one(docs, "Deployment", "rx-relayx-gateway"))["envFrom"]
    assert {"secretRef": {"name": "relayx-credentials"}} in env_from


# --- Kubernetes' schemas ------------------------------------------------------------------------


def _validator() -> Callable[..., Any]:
    try:
        from kubernetes_validate import utils
    except ImportError:
        pytest.skip("kubernetes-validate is not installed (scripts/setup.sh installs it)")
    return utils.validate  # type: ignore[no-any-return]


@needs_helm
@pytest.mark.parametrize(
    ("args", "custom"),
    [
        (["--set", "secrets.databaseUrl=postgresql://db/relayx"], set()),
        # KEDA's variant differs only by the ScaledObject, a CRD without a bundled schema.
        (["--values", str(TEST_VALUES)], {"ServiceMonitor"}),
    ],
    ids=["defaults", "every-part"],
)
def test_rendered_objects_match_kubernetes_schemas(args: list[str], custom: set[str]) -> None:
    validate = _validator()
    from kubernetes_validate import utils

    docs = _template(*args, "--kube-version", MIN_KUBERNETES)
    unchecked = set()
    for version in (MIN_KUBERNETES, utils.latest_version()):
        for doc in docs:
            if doc["kind"] in CUSTOM_KINDS:
                unchecked.add(doc["kind"])
                continue
            try:
                validate(doc, version, strict=True)
            except utils.ValidationError as exc:
                pytest.fail(f"{doc['kind']} {doc['metadata']['name']} on Kubernetes {version}: {exc.message}")
    assert unchecked == custom
