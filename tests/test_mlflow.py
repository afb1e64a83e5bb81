"""MLflow: an ONNX model saved by MLflow is served from the repository; reports become MLflow runs."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from support import onnx_models

mlflow = pytest.importorskip("mlflow", reason="the mlflow extra (mlflow-skinny) is not installed")
mlflow_onnx = pytest.importorskip("mlflow.onnx", reason="mlflow's onnx flavor needs pandas")

REPORT = """# Per-request overhead (issue 15)

`python benchmarks/bench_overhead.py --rounds 3`

Machine: AMD EPYC, 2 cores

| server | c=1 infer/s | p50 |
|---|---|---|
| peregrine | 1,594 | 0.585 |
| kserve | 1,520 | 0.612 |
"""


def test_an_mlflow_saved_onnx_model_is_served_as_a_version(tmp_path: Path, start_server: Any) -> None:
    with warnings.catch_warnings():  # MLflow's own advice about type hints
        warnings.simplefilter("ignore")
        mlflow_onnx.save_model(onnx_models.identity("FP32", ["N", None]), str(tmp_path / "from_mlflow" / "1"))
    (tmp_path / "from_mlflow" / "1" / "model.onnx").rename(tmp_path / "from_mlflow" / "1" / "weights.onnx")
    mlmodel = tmp_path / "from_mlflow" / "1" / "MLmodel"
    mlmodel.write_text(mlmodel.read_text().replace("data: model.onnx", "data: weights.onnx"))
    (tmp_path / "from_mlflow" / "config.toml").write_text("max_batch_size = 8\n")
    server = start_server(tmp_path)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    x = grpcclient.InferInput("INPUT0", [1, 3], "FP32")
    x.set_data_from_numpy(np.arange(3, dtype=np.float32).reshape(1, 3))
    np.testing.assert_array_equal(client.infer("from_mlflow", [x]).as_numpy("OUTPUT0"), [[0, 1, 2]])


def test_an_mlmodel_without_the_onnx_flavor_is_a_load_error_naming_it(tmp_path: Path, start_server: Any) -> None:
    version = tmp_path / "sklearn_model" / "1"
    version.mkdir(parents=True)
    (version / "MLmodel").write_text("flavors:\n  sklearn:\n    pickled_model: model.pkl\n")
    server = start_server(tmp_path)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    (row,) = [m for m in client.get_model_repository_index().models if m.name == "sklearn_model"]
    assert row.state == "UNAVAILABLE" and "onnx flavor" in row.reason and "sklearn" in row.reason


def test_a_report_is_logged_as_a_run_with_its_numbers(tmp_path: Path) -> None:
    from peregrine.server.observability.mlflow_runs import main, report_metrics

    assert report_metrics(REPORT) == {"1.peregrine.c1_infer/s": 1594.0, "1.peregrine.p50": 0.585,
                                      "1.kserve.c1_infer/s": 1520.0, "1.kserve.p50": 0.612}
    report = tmp_path / "overhead.md"
    report.write_text(REPORT)
    uri = (tmp_path / "mlruns").as_uri()
    with warnings.catch_warnings():  # MLflow's notices about its file store
        warnings.simplefilter("ignore")
        assert main([str(report), "--tracking-uri", uri, "--experiment", "bench"]) == 0
        mlflow.set_tracking_uri(uri)
        (run,) = mlflow.search_runs(experiment_names=["bench"], output_format="list")
        artifacts = [a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)]
    assert run.data.metrics["1.peregrine.p50"] == 0.585
    assert run.data.params["command"] == "python benchmarks/bench_overhead.py --rounds 3"
    assert run.info.run_name == "Per-request overhead (issue 15)"
    assert artifacts == ["overhead.md"]
