"""``peregrine-server --check-repository DIR``: validate a model repository without serving it, for CI.

Every directory is checked as the server would load it: its configuration file is read and mapped
(config.toml or config.pbtxt; under ``--strict-model-config`` a config.pbtxt field with no equivalent is an
error), its version directories are selected by the version policy, each selected version's model file
must be present, and each ONNX file is opened on the CPU (graph optimizations off, no warm-up: cheap) so
that the configuration's inputs, outputs and batching are checked against the graph. One line per
directory; the result is failed when any directory is not a model or any model would fail to load.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config.files import read_model_config
from ..config.model import InstanceGroupConfig, ModelConfig
from ..core.errors import PeregrineError
from ..models.loading import apply_overrides, model_file, resolve_batch_buckets, resolve_batching
from ..runtime.onnx import OnnxSession
from .repository import directory_problem, ignored_contents, model_name_problem, version_numbers


@dataclass
class CheckResult:
    """One directory's verdict: ``status`` is "OK", "WARN" (served, with notes) or "FAIL"."""

    name: str
    status: str
    detail: str

    def line(self) -> str:
        return f"{self.status:<4} {self.name}: {self.detail}"


def check_repository(root: Path, strict: bool = False) -> list[CheckResult]:
    """Check every directory of the repository at ``root`` (see the module docstring)."""
    results = []
    for path in sorted(root.iterdir()):
        if not path.is_dir() or path.name.startswith("."):
            continue
        problem = model_name_problem(path.name)
        if problem is not None:
            results.append(CheckResult(repr(path.name), "FAIL", f"not a model name: {problem}"))
            continue
        problem = directory_problem(path)
        if problem is not None:
            results.append(CheckResult(path.name, "FAIL", f"not served: {problem}"))
            continue
        try:
            results.append(_check_model(root, path, strict))
        except PeregrineError as e:
            results.append(CheckResult(path.name, "FAIL", e.message))
        except Exception as e:  # a check must say what it found, whatever the files hold
            results.append(CheckResult(path.name, "FAIL", f"{type(e).__name__}: {e}"))
    return results


def _check_model(root: Path, model_dir: Path, strict: bool) -> CheckResult:
    name = model_dir.name
    file = read_model_config(model_dir, strict)
    config = file.config
    notes = list(ignored_contents(model_dir))
    if file.unmapped:
        notes.append(f"{file.filename} sets field(s) with no Peregrine equivalent: {', '.join(file.unmapped)}")
    if config.name and config.name != name:
        return CheckResult(name, "FAIL", f"{name}/{file.filename}: name is '{config.name}' but the directory is "
                                         f"'{name}'")
    detector = config.detection.detector if config.detection else None
    files_dir = root / detector if detector else model_dir
    if detector and (model_name_problem(detector) is not None or not files_dir.is_dir()):
        return CheckResult(name, "FAIL", f"detection.detector '{detector}' is not a model directory in the "
                                         "repository")
    available = version_numbers(files_dir)
    if not available:
        return CheckResult(name, "FAIL", f"{files_dir.name}: no version directory (expected e.g. "
                                         f"{files_dir.name}/1/model.onnx)")
    wanted = config.select_versions(available)
    if not wanted:
        return CheckResult(name, "FAIL", f"version_policy selects none of the versions {sorted(available)}")
    summary = ""
    for v in wanted:
        path = model_file(name, v, files_dir / str(v), config)
        summary = _check_graph(name, v, path, config)
    source = f" ({file.filename})" if file.filename else ""
    detail = f"versions {wanted}{source}{summary}"
    if notes:
        return CheckResult(name, "WARN", f"{detail}; {'; '.join(notes)}")
    return CheckResult(name, "OK", detail)


def _check_graph(name: str, version: int, path: Path, config: ModelConfig) -> str:
    """Open the ONNX file on the CPU and check the configuration against its graph; a summary."""
    cheap = config.model_copy(update={
        "instance_group": InstanceGroupConfig(count=1, device="cpu"),
        "onnxruntime": config.onnxruntime.model_copy(update={"graph_optimization_level": "disable",
                                                            "execution_providers": None}),
    })
    session = OnnxSession(path, cheap)
    if config.platform != "onnxruntime_onnx":  # a pipeline: its own load checks the head's layout
        return ", detection pipeline"
    source = f"{name}/{version}"
    graph_in, graph_out = session.tensor_specs()
    max_batch = resolve_batching(config, graph_in, graph_out, source)
    inputs = apply_overrides(graph_in, config.input, max_batch > 0, "input", source)
    outputs = apply_overrides(graph_out, config.output, max_batch > 0, "output", source)
    resolve_batch_buckets(config, max_batch, "cpu", source)
    batching = "dynamic batching" if config.dynamic_batching is not None and max_batch else "no dynamic batching"
    tensors = ", ".join(f"{t.name} {t.describe()}" for t in inputs) + " -> " + \
        ", ".join(f"{t.name} {t.describe()}" for t in outputs)
    return f", max_batch_size {max_batch}, {batching}, {tensors}"
