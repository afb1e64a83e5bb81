"""deploy/grafana and deploy/prometheus: every query of the dashboard and every alerting rule names a metric a
running server serves (drift on, a detection model answered), with the labels it groups by (issue 19, item 5)."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import yaml
from peregrine.proto import detection_pb2 as det
from peregrine.proto import detection_pb2_grpc as det_grpc
from peregrine.server.app import PeregrineServer
from prometheus_client.parser import text_string_to_metric_families
from support import jobs

ROOT = Path(__file__).resolve().parents[2]
NAME = re.compile(r"\b((?:nv|peregrine)_[a-z0-9_]+)\b")
BY = re.compile(r"by \(([^)]*)\)")


def expressions() -> list[str]:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "peregrine.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "peregrine-rules.yaml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule["alert"] and rule["expr"] and rule["labels"]["severity"] and rule["annotations"]["summary"]
            exprs.append(rule["expr"])
    return exprs


def test_every_query_names_a_served_metric_and_its_labels(tmp_path: Path,
                                                          start_server: Callable[..., PeregrineServer]) -> None:
    server = start_server(jobs.repository(tmp_path / "models"), http_port=0, drift_sample_rate=1.0, drift_window=10)
    stub = det_grpc.DetectionServiceStub(grpc.insecure_channel(f"127.0.0.1:{server.port}"))
    for name in jobs.PHOTOS * 4:  # a reference window and a compared one
        stub.Detect(det.DetectRequest(model_name="cam", images=[det.Image(encoded=jobs.photo(name))]))
    assert server.drift is not None
    server.drift.flush()
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/metrics", timeout=10).read().decode()
    labels: dict[str, set[str]] = {}  # every sample name served, with the labels it carries
    for family in text_string_to_metric_families(text):  # parses: the exposition is well formed
        labels.setdefault(family.name, set())
    sampled: set[str] = set()
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? ", line)
        if m:
            sampled.add(m.group(1))
            labels.setdefault(m.group(1), set()).update(re.findall(r'(\w+)="', m.group(2) or ""))
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):  # families with nothing counted yet
        for suffix in {"counter": ("", "_total"), "histogram": ("_bucket", "_sum", "_count")}.get(kind, ("",)):
            labels.setdefault(name + suffix, set())
    documented_gpu = set(re.findall(r"^\| `(nv_gpu_\w+|nv_energy_\w+)`", (ROOT / "docs" / "METRICS.md").read_text(),
                                    re.M))
    exprs = expressions()
    assert len(exprs) >= 12
    for expr in exprs:
        names = NAME.findall(expr)
        assert names, expr
        for name in names:
            if name in documented_gpu:  # no GPU here: documented, served where NVML finds one
                continue
            assert name in labels, f"{name} (in {expr!r}) is not served"
            if name not in sampled:  # served, nothing counted yet (no cold start here): its labels are unseen
                continue
            for group in BY.findall(expr):
                wanted = {g.strip() for g in group.split(",")} - {"le"}
                assert wanted <= labels[name] | {"le"}, f"{expr!r}: {name} has labels {labels[name]}, not {wanted}"


def test_the_latency_panel_draws_the_objective() -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "peregrine.json").read_text())
    latency = next(p for p in dashboard["panels"] if p["title"].startswith("Latency p99"))
    steps = latency["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps[-1]["value"] == 0.020 and latency["fieldConfig"]["defaults"]["unit"] == "s"
