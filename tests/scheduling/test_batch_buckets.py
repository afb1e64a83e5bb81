"""Batch buckets: batches padded up to a few fixed sizes so that a GPU provider sees few shapes.

No GPU here: the buckets are forced on the CPU with an explicit ``batch_buckets`` list, and padding,
splitting and statistics are checked on real ONNX Runtime CPU sessions and over real gRPC. The one
place that needs a GPU session, the choice of warm-up sizes, reads the session's ``device``
attribute; that test wraps a real CPU session and reports "cuda" (a stand-in, said where it is used).
"""

from __future__ import annotations

import concurrent.futures
import re
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as tc
from peregrine.server.app import PeregrineServer
from peregrine.server.config import ServerConfig, parse_model_config
from peregrine.server.core.errors import ModelLoadError
from peregrine.server.core.stats import ModelStats
from peregrine.server.core.types import InferRequest, TensorSpec
from peregrine.server.models.loading import resolve_batch_buckets
from peregrine.server.models.tensor import TensorModel
from peregrine.server.runtime.executor import TensorExecutor
from peregrine.server.runtime.instances import Instances, open_bucket_sessions
from peregrine.server.runtime.onnx import OnnxSession
from support import onnx_models


# -- which buckets a model gets ------------------------------------------------------------------
def buckets(config: str, max_batch: int, device: str) -> tuple[int, ...]:
    return resolve_batch_buckets(parse_model_config(config), max_batch, device, "m/1")


def test_auto_buckets_are_powers_of_two_and_the_maximum_on_a_gpu() -> None:
    table = "[dynamic_batching]\n"
    assert buckets(table, 16, "cuda") == (1, 2, 4, 8, 16)
    assert buckets(table, 12, "cuda") == (1, 2, 4, 8, 12)
    assert buckets(table, 1, "cuda") == (1,)
    # Preferred sizes are sizes the model runs best at: they are buckets of their own, not padded.
    assert buckets(table + "preferred_batch_sizes = [6]\n", 12, "cuda") == (1, 2, 4, 6, 8, 12)


def test_auto_means_no_buckets_on_the_cpu_and_without_batching() -> None:
    assert buckets("[dynamic_batching]\n", 16, "cpu") == ()
    assert buckets("[dynamic_batching]\n", 0, "cuda") == ()
    assert buckets("", 16, "cuda") == ()  # no [dynamic_batching]: every request runs alone, as sent


def test_explicit_buckets_apply_on_any_device_and_always_hold_the_maximum() -> None:
    assert buckets("[dynamic_batching]\nbatch_buckets = [4, 8]\n", 8, "cpu") == (4, 8)
    assert buckets("[dynamic_batching]\nbatch_buckets = [8, 2, 2]\n", 16, "cpu") == (2, 8, 16)
    assert buckets("[dynamic_batching]\nbatch_buckets = []\n", 16, "cuda") == ()  # off, also on a GPU


def test_explicit_buckets_above_an_inferred_maximum_fail_the_load() -> None:
    # max_batch_size not in the file: it is inferred from the graph at load (8 here), checked then.
    with pytest.raises(ModelLoadError) as e:
        buckets("[dynamic_batching]\nbatch_buckets = [4, 16]\n", 8, "cpu")
    assert "m/1" in e.value.message and "batch_buckets" in e.value.message
    assert "1..max_batch_size (8)" in e.value.message and "[4, 16]" in e.value.message
    with pytest.raises(ModelLoadError) as e:
        buckets("[dynamic_batching]\nbatch_buckets = [4]\n", 0, "cpu")
    assert "max_batch_size is 0" in e.value.message


# -- the executor on a real CPU session ------------------------------------------------------------
class RecordingSession:
    """A real ONNX Runtime session that remembers the feed of every run (copies of its arrays)."""

    def __init__(self, session: OnnxSession, device: str | None = None) -> None:
        self.session = session
        self.device = device or session.device  # "cuda" only in the warm-up test, see the module doc
        self.feeds: list[dict[str, np.ndarray]] = []

    def run(self, inputs: dict[str, Any], output_names: list[str]) -> list[Any]:
        self.feeds.append({k: np.array(v, copy=True) for k, v in inputs.items()})
        return self.session.run(inputs, output_names)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)


def identity_session(tmp_path: Path, datatype: str = "FP32", width: int = 3) -> RecordingSession:
    d = onnx_models.write(tmp_path, f"id_{datatype}", onnx_models.identity(datatype, ["N", width]))
    return RecordingSession(OnnxSession(d / "1" / "model.onnx", parse_model_config("[instance_group]\ndevice = 'cpu'")))


def executor(session: RecordingSession, buckets: tuple[int, ...], datatype: str = "FP32",
             width: int = 3, per_bucket: dict[int, RecordingSession] | None = None) -> TensorExecutor:
    spec = TensorSpec("INPUT0", datatype, (-1, width))
    out = TensorSpec("OUTPUT0", datatype, (-1, width))
    instances = Instances([session], buckets, [per_bucket] if per_bucket else [])  # type: ignore[list-item]
    return TensorExecutor("id", instances, [spec], [out], 8, ModelStats())


def rows(start: int, n: int, width: int = 3) -> InferRequest:
    data = np.arange(start * width, (start + n) * width, dtype=np.float32).reshape(n, width)
    return InferRequest("id", inputs={"INPUT0": data})


def test_a_batch_is_padded_with_its_last_row_and_only_real_rows_come_back(tmp_path: Path) -> None:
    session = identity_session(tmp_path)
    ex = executor(session, (4, 8))
    requests = [rows(0, 2), rows(10, 3)]  # 5 elements: run at 8
    results = ex.execute(0, requests)
    feed = session.feeds[-1]["INPUT0"]
    assert feed.shape == (8, 3)
    np.testing.assert_array_equal(feed[:5], np.concatenate([r.inputs["INPUT0"] for r in requests]))
    np.testing.assert_array_equal(feed[5:], np.repeat(feed[4:5], 3, axis=0))
    for r, out in zip(requests, results, strict=True):
        np.testing.assert_array_equal(out["OUTPUT0"], r.inputs["INPUT0"])
    assert results[1]["OUTPUT0"].base is not None  # a view of the batch's output, not a copy
    assert (ex.stats.inference_count, ex.stats.padding_count, sorted(ex.stats.batches)) == (5, 3, [8])


def test_padding_is_written_into_the_instance_buffer(tmp_path: Path) -> None:
    session = identity_session(tmp_path)
    ex = executor(session, (4, 8))
    ex.execute(0, [rows(0, 1), rows(1, 1)])
    buffer = ex._buffers[0]["INPUT0"]
    assert buffer.shape == (8, 3)
    np.testing.assert_array_equal(buffer[:4], np.array([[0, 1, 2], [3, 4, 5], [3, 4, 5], [3, 4, 5]], np.float32))
    ex.execute(0, [rows(5, 3)])  # one request that is not a bucket size is copied in and padded too
    assert ex._buffers[0]["INPUT0"] is buffer
    np.testing.assert_array_equal(session.feeds[-1]["INPUT0"][3], session.feeds[-1]["INPUT0"][2])


def test_a_single_request_of_a_bucket_size_runs_on_its_own_array(tmp_path: Path) -> None:
    session = identity_session(tmp_path)
    ex = executor(session, (4, 8))
    request = rows(0, 4)
    feed = ex._assemble(0, [request], ex.executed_size(4))
    assert feed["INPUT0"] is request.inputs["INPUT0"]
    assert ex.execute(0, [request])[0]["OUTPUT0"].shape == (4, 3)
    assert ex.stats.padding_count == 0


def test_without_buckets_batches_run_at_their_own_size(tmp_path: Path) -> None:
    session = identity_session(tmp_path)
    ex = executor(session, ())
    ex.execute(0, [rows(0, 2), rows(2, 1)])
    assert session.feeds[-1]["INPUT0"].shape == (3, 3)
    assert (ex.stats.inference_count, ex.stats.padding_count, sorted(ex.stats.batches)) == (3, 0, [3])


def test_bytes_inputs_are_padded_too(tmp_path: Path) -> None:
    session = identity_session(tmp_path, "BYTES", width=2)
    ex = executor(session, (4,), "BYTES", width=2)
    a = InferRequest("id", inputs={"INPUT0": np.array([[b"a", b"b"]], dtype=object)})
    b = InferRequest("id", inputs={"INPUT0": np.array([[b"c", b"d"], [b"e", b"f"]], dtype=object)})
    results = ex.execute(0, [a, b])
    assert session.feeds[-1]["INPUT0"].shape == (4, 2)
    assert list(session.feeds[-1]["INPUT0"][3]) == [b"e", b"f"]
    assert [r["OUTPUT0"].shape for r in results] == [(1, 2), (2, 2)]
    assert ex.stats.padding_count == 1


def test_with_a_session_per_bucket_every_session_keeps_one_shape(tmp_path: Path) -> None:
    # What GPU instances do (ORT's CUDA convolutions re-plan whenever the shape changes), on real CPU
    # sessions: whatever the batch sizes, each session only ever runs its own bucket.
    per_bucket = {b: identity_session(tmp_path / str(b)) for b in (2, 4, 8)}
    ex = executor(per_bucket[8], (2, 4, 8), per_bucket=per_bucket)
    for n in (1, 5, 3, 8, 2, 4, 7, 1):
        request = rows(0, n)
        np.testing.assert_array_equal(ex.execute(0, [request])[0]["OUTPUT0"], request.inputs["INPUT0"])
    assert {b: sorted({f["INPUT0"].shape[0] for f in s.feeds}) for b, s in per_bucket.items()} == {
        2: [2], 4: [4], 8: [8]}
    assert [len(s.feeds) for s in per_bucket.values()] == [3, 2, 3]


class DeviceArray:
    """Stands in for a CuPy array from CUDA shared memory (no GPU here): only its length and the
    ``__cuda_array_interface__`` attribute matter to the executor's choice of size and session."""

    __cuda_array_interface__: dict[str, Any] = {}

    def __init__(self, rows: int) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return self.rows


def test_device_inputs_are_never_padded(tmp_path: Path) -> None:
    per_bucket = {b: identity_session(tmp_path / str(b)) for b in (4, 8)}
    ex = executor(per_bucket[8], (4, 8), per_bucket=per_bucket)
    on_device = [InferRequest("id", inputs={"INPUT0": DeviceArray(3)})]  # type: ignore[dict-item]
    assert ex.sizes(on_device) == (3, 3)  # fed to IO binding as it is
    assert ex.session_for(0, 3) is per_bucket[8]  # not a bucket: the instance's own session
    assert ex.sizes([InferRequest("id", inputs={"INPUT0": DeviceArray(4)})]) == (4, 4)  # type: ignore[dict-item]
    assert ex.session_for(0, 4) is per_bucket[4]
    assert ex.sizes([rows(0, 3)]) == (3, 4)  # host arrays are padded


def test_gpu_instances_get_a_session_per_bucket_and_cpu_instances_share_one(tmp_path: Path) -> None:
    # Stand-ins: real CPU sessions, two of them reporting device "cuda" (no GPU here).
    opened: list[int] = []

    def open_session(instance: int) -> Any:
        opened.append(instance)
        return identity_session(tmp_path / f"extra{len(opened)}")

    gpu = [identity_session(tmp_path / "g0"), identity_session(tmp_path / "g1")]
    for s in gpu:
        s.device = "cuda"
    per = open_bucket_sessions(gpu, (1, 4, 8), open_session)  # type: ignore[arg-type]
    assert [sorted(m) for m in per] == [[1, 4, 8], [1, 4, 8]]
    assert per[0][8] is gpu[0] and per[1][8] is gpu[1]  # the instance's session takes the largest bucket
    assert sorted(opened) == [0, 0, 1, 1] and len({id(s) for m in per for s in m.values()}) == 6
    cpu = [identity_session(tmp_path / "c0")]
    assert open_bucket_sessions(cpu, (1, 4, 8), open_session) == []  # type: ignore[arg-type]
    assert open_bucket_sessions(gpu, (), open_session) == []  # type: ignore[arg-type]


def test_warm_up_runs_each_bucket_on_its_own_session(tmp_path: Path) -> None:
    # Stand-in "cuda" sessions, as above.
    per_bucket = {b: identity_session(tmp_path / str(b)) for b in (1, 2, 4)}
    for s in per_bucket.values():
        s.device = "cuda"
    cfg = parse_model_config("max_batch_size = 4\n[dynamic_batching]\n")
    instances = Instances([per_bucket[4]], (1, 2, 4), [per_bucket])  # type: ignore[list-item]
    model = TensorModel("w", 1, cfg, instances, [TensorSpec("INPUT0", "FP32", (-1, 3))],
                        [TensorSpec("OUTPUT0", "FP32", (-1, 3))], 4)
    model.warm_up()
    assert {b: [f["INPUT0"].shape[0] for f in s.feeds] for b, s in per_bucket.items()} == {1: [1], 2: [2], 4: [4]}


def test_statistics_refuse_an_executed_size_below_the_batch() -> None:
    with pytest.raises(ValueError):
        ModelStats().record_batch(5, 2, 0, 0, 0, executed=4)


# -- warm-up ---------------------------------------------------------------------------------------
def warmed_sizes(tmp_path: Path, config: str, device: str) -> list[int]:
    d = onnx_models.write(tmp_path, "w", onnx_models.identity("FP32", ["N", 3]), config)
    cfg = parse_model_config(config)
    session = RecordingSession(OnnxSession(d / "1" / "model.onnx", cfg), device=device)
    max_batch = cfg.max_batch_size or 8
    instances = Instances([session], resolve_batch_buckets(cfg, max_batch, device, "w/1"))  # type: ignore[list-item]
    model = TensorModel("w", 1, cfg, instances, [TensorSpec("INPUT0", "FP32", (-1, 3))],
                        [TensorSpec("OUTPUT0", "FP32", (-1, 3))], max_batch)
    model.warm_up()
    return [f["INPUT0"].shape[0] for f in session.feeds]


def test_warm_up_runs_every_bucket_on_a_gpu(tmp_path: Path) -> None:
    # The session is a CPU one reporting device "cuda": what is tested is which sizes run.
    assert warmed_sizes(tmp_path, "max_batch_size = 16\n[dynamic_batching]\n", "cuda") == [1, 2, 4, 8, 16]
    assert warmed_sizes(tmp_path, "max_batch_size = 16\n[dynamic_batching]\nbatch_buckets = []\n",
                        "cuda") == [1, 16]


def test_warm_up_runs_only_the_smallest_size_on_the_cpu(tmp_path: Path) -> None:
    assert warmed_sizes(tmp_path, "max_batch_size = 16\n[dynamic_batching]\n", "cpu") == [1]
    assert warmed_sizes(tmp_path, "max_batch_size = 16\n[dynamic_batching]\nbatch_buckets = [4, 8]\n",
                        "cpu") == [4]


# -- end to end over gRPC --------------------------------------------------------------------------
# A batch forms when it reaches 3 elements (the largest preferred size); the window is far longer
# than any test, so batch sizes are exact. Buckets are forced on the CPU.
PADDED = """
max_batch_size = 8
[instance_group]
device = "cpu"
[dynamic_batching]
max_queue_delay_us = 20_000_000
preferred_batch_sizes = [3]
batch_buckets = [4, 8]
"""
PLAIN = 'max_batch_size = 8\n[instance_group]\ndevice = "cpu"\n'  # every request alone, at its own size


@dataclass
class Served:
    server: PeregrineServer
    url: str
    metrics_url: str

    def client(self) -> tc.InferenceServerClient:
        return tc.InferenceServerClient(self.url)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    repo = tmp_path_factory.mktemp("models")
    onnx_models.write(repo, "padded", onnx_models.add_sub(["N", 16]), PADDED)
    onnx_models.write(repo, "plain", onnx_models.add_sub(["N", 16]), PLAIN)
    onnx_models.write(repo, "padded_bytes", onnx_models.identity("BYTES", ["N", 2]), PADDED)
    onnx_models.write(repo, "auto_cpu", onnx_models.identity("FP32", ["N", 2]),
                      'max_batch_size = 8\n[instance_group]\ndevice = "cpu"\n[dynamic_batching]\n')
    onnx_models.write(repo, "max_added", onnx_models.identity("FP32", ["N", 2]),
                      'max_batch_size = 8\n[dynamic_batching]\nbatch_buckets = [2]\n')
    server = PeregrineServer(ServerConfig(model_repository=repo, grpc_port=0, http_port=0))
    port = server.start()
    yield Served(server, f"127.0.0.1:{port}", f"http://127.0.0.1:{server.http_port}/metrics")
    server.stop(grace=1.0)


def add_sub_inputs(a: np.ndarray, b: np.ndarray) -> list[tc.InferInput]:
    out = []
    for name, x in (("INPUT0", a), ("INPUT1", b)):
        t = tc.InferInput(name, list(x.shape), "INT32")
        t.set_data_from_numpy(x)
        out.append(t)
    return out


def infer_concurrently(served: Served, model: str, inputs: list[list[tc.InferInput]]) -> list[Any]:
    def one(i: int) -> Any:
        client = served.client()
        try:
            return client.infer(model, inputs[i])
        finally:
            client.close()

    with concurrent.futures.ThreadPoolExecutor(len(inputs)) as pool:
        return list(pool.map(one, range(len(inputs))))


def padding_metric(served: Served, model: str) -> float:
    text = urllib.request.urlopen(served.metrics_url, timeout=5).read().decode()
    m = re.search(rf'^peregrine_inference_padding_count_total{{model="{model}",version="1"}} (\S+)$', text, re.M)
    assert m, "no padding counter for the model on the metrics port"
    return float(m.group(1))


def test_padded_batches_answer_what_unpadded_requests_answer(served: Served) -> None:
    rng = np.random.default_rng(3)
    client = served.client()
    before = client.get_inference_statistics("padded").model_stats[0]
    metric_before = padding_metric(served, "padded")
    sent = [(rng.integers(-1000, 1000, (n, 16), dtype=np.int32), rng.integers(-1000, 1000, (n, 16), dtype=np.int32))
            for n in (2, 1)]
    padded = infer_concurrently(served, "padded", [add_sub_inputs(a, b) for a, b in sent])  # 3 rows, run at 4
    single = rng.integers(-1000, 1000, (5, 16), dtype=np.int32), rng.integers(-1000, 1000, (5, 16), dtype=np.int32)
    padded.append(client.infer("padded", add_sub_inputs(*single)))  # 5 rows, run at 8
    sent.append(single)
    for (a, b), got in zip(sent, padded, strict=True):
        alone = client.infer("plain", add_sub_inputs(a, b))
        for name in ("OUTPUT0", "OUTPUT1"):
            np.testing.assert_array_equal(got.as_numpy(name), alone.as_numpy(name))
        np.testing.assert_array_equal(got.as_numpy("OUTPUT0"), a + b)

    # Statistics: inference_count counts real rows; batch_stats are keyed by the executed (padded)
    # size; the padding rows are counted apart on the metrics port.
    after = client.get_inference_statistics("padded").model_stats[0]
    assert after.execution_count - before.execution_count == 2
    assert after.inference_count - before.inference_count == 8
    runs = {b.batch_size: b.compute_infer.count for b in after.batch_stats}
    ran_before = {b.batch_size: b.compute_infer.count for b in before.batch_stats}
    assert {k: v - ran_before.get(k, 0) for k, v in runs.items()} == {4: 1, 8: 1}
    assert padding_metric(served, "padded") - metric_before == 1 + 3


def test_padded_bytes_batches_answer_each_request_its_own_rows(served: Served) -> None:
    def bytes_input(values: list[bytes]) -> list[tc.InferInput]:
        x = np.array([values], dtype=object)
        t = tc.InferInput("INPUT0", list(x.shape), "BYTES")
        t.set_data_from_numpy(x)
        return [t]

    sent = [[b"a%d" % i, b"b%d" % i] for i in range(3)]
    results = infer_concurrently(served, "padded_bytes", [bytes_input(v) for v in sent])
    assert [list(r.as_numpy("OUTPUT0")[0]) for r in results] == sent


def test_model_config_reports_the_buckets_in_use(served: Served) -> None:
    client = served.client()

    def reported(model: str) -> str | None:
        params = client.get_model_config(model).config.parameters
        return params["batch_buckets"].string_value if "batch_buckets" in params else None

    assert reported("padded") == "4,8"
    assert reported("max_added") == "2,8"  # max_batch_size is always a bucket
    assert reported("auto_cpu") is None  # "auto" on the CPU: no buckets
