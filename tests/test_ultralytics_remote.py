"""ultralytics' own Triton client, ``YOLO("grpc://host:8001/<model>")`` or ``http://host:8002/<model>`` (its
TritonRemoteModel), served by Peregrine: it reads the model's configuration, takes the ultralytics metadata
(class names, stride, input size, task) from its ``metadata`` parameter with ``ast.literal_eval``, and runs
the raw model with FP32 ``images``. Triton has users write that parameter into config.pbtxt by hand;
Peregrine publishes it from the export's own ONNX metadata. The steps below are the ones TritonRemoteModel
takes (ultralytics/utils/triton.py), against a real server over gRPC and HTTP."""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from peregrine.modelgen import yolov8_detector
from peregrine.server.app import PeregrineServer
from peregrine.server.models.tensor import ultralytics_metadata
from support import onnx_models


def _remote_model_config(server: PeregrineServer, scheme: str, model: str) -> tuple[Any, dict[str, Any]]:
    if scheme == "http":
        client: Any = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
        return client, client.get_model_config(model)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    return client, client.get_model_config(model, as_json=True)["config"]


def test_an_ultralytics_export_is_served_as_ultralytics_triton_client_reads_it(
        tmp_path: Path, start_server: Callable[..., PeregrineServer]) -> None:
    onnx_models.write(tmp_path, "yolo", yolov8_detector(0, imgsz=320), "max_batch_size = 1\n")
    onnx_models.write(tmp_path, "plain", onnx_models.identity("FP32", ["N", 4]))
    server = start_server(tmp_path, http_port=0)
    x = np.random.default_rng(0).random((1, 3, 320, 320), dtype=np.float32)
    answers = []
    for scheme, client_module in (("grpc", grpcclient), ("http", httpclient)):
        client, config = _remote_model_config(server, scheme, "yolo")
        metadata = ast.literal_eval(config.get("parameters", {}).get("metadata", {}).get("string_value", "None"))
        assert metadata["names"][0] == "person" and len(metadata["names"]) == 80
        assert metadata["stride"] == 32 and metadata["imgsz"] == [320, 320] and metadata["task"] == "detect"
        assert metadata["batch"] == 1 and metadata["args"]["imgsz"] == 320
        assert [t["data_type"] for t in config["input"]] == ["TYPE_FP32"]
        outputs = [t["name"] for t in sorted(config["output"], key=lambda t: t.get("name"))]
        inp = client_module.InferInput(config["input"][0]["name"], list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer(model_name="yolo", inputs=[inp],
                              outputs=[client_module.InferRequestedOutput(n) for n in outputs])
        answers.append(result.as_numpy(outputs[0]))
        _, plain = _remote_model_config(server, scheme, "plain")
        assert "metadata" not in plain.get("parameters", {})  # not an ultralytics export
        client.close()
    assert answers[0].shape == (1, 84, 2100)
    np.testing.assert_array_equal(answers[0], answers[1])


def test_a_configured_metadata_parameter_wins(tmp_path: Path, start_server: Callable[..., PeregrineServer]) -> None:
    onnx_models.write(tmp_path, "yolo", yolov8_detector(0, imgsz=320),
                      'max_batch_size = 1\n[parameters]\nmetadata = "{\'names\': {0: \'plate\'}, \'stride\': 32}"\n')
    server = start_server(tmp_path)
    _, config = _remote_model_config(server, "grpc", "yolo")
    assert ast.literal_eval(config["parameters"]["metadata"]["string_value"]) == {"names": {0: "plate"}, "stride": 32}


def test_metadata_values_are_the_literals_their_strings_hold() -> None:
    text = ultralytics_metadata({"names": "{0: 'a'}", "stride": "32", "end2end": "False", "task": "detect",
                                 "date": "2026-12-05T10:00:00", "imgsz": "[640, 640]", "bad": "[1, 2"})
    assert text is not None
    assert ast.literal_eval(text) == {"names": {0: "a"}, "stride": 32, "end2end": False, "task": "detect",
                                      "date": "2026-12-05T10:00:00", "imgsz": [640, 640], "bad": "[1, 2"}
    assert ultralytics_metadata({"description": "not an ultralytics export"}) is None
