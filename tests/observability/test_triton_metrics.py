"""Triton's Prometheus families on /metrics: every family docs/METRICS.md lists, with its type and labels,
against a real server over loopback; values equal to the requests made and to the statistics extension;
failure reasons; the summaries and histogram behind --metrics-config; the GPU families through NVML.

Requests that must wait (a full queue, a cancellation) are held by a model whose batches form only when full
(a 60 s window): the test waits for what the server reports (the pending-request gauge), never for a guessed
time. The GPU families are checked against a stand-in NVML module here (no GPU on these machines); on a
machine with one, the served families are checked too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from peregrine.server.app import PeregrineServer
from peregrine.server.cli import parse_args
from peregrine.server.config import ServerConfig
from peregrine.server.core.errors import (
    Cancelled,
    DeadlineExceeded,
    InvalidArgument,
    ModelExecutionError,
    ResourceExhausted,
    Unavailable,
)
from peregrine.server.core.stats import ModelStats, failure_reason
from peregrine.server.observability.gpu_metrics import open_gpus
from peregrine.server.observability.triton_metrics import MetricsSettings, SlidingQuantiles, render
from prometheus_client.parser import text_string_to_metric_families
from support import onnx_models
from tritonclient.utils import InferenceServerException

DOC = Path(__file__).resolve().parents[2] / "docs" / "METRICS.md"
FLAGS = {"summary_latencies": "true", "histogram_latencies": "true"}
REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")

# Lone requests wait for a batch of 4 (up to 60 s) in a queue of one: a second request is refused at once.
HELD = """
max_batch_size = 4
[dynamic_batching]
max_queue_delay_us = 60_000_000  # the most a model may wait
max_queue_size = 1
"""


# -- the documented table ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Documented:
    name: str  # as on the "# TYPE" line
    type: str
    labels: frozenset[str]
    shown: str

    @property
    def parsed_name(self) -> str:
        """The name prometheus_client's parser gives the family (a counter's without ``_total``)."""
        return self.name.removesuffix("_total") if self.type == "counter" else self.name

    def expected(self, summaries: bool, histograms: bool, gpu: bool) -> bool:
        """Whether a server with these settings (and a model with the response cache on) shows the family."""
        if "GPU" in self.shown:
            return gpu
        if "drift" in self.shown:  # these servers sample no drift (tests/observability/test_drift.py does)
            return False
        if "summary_latencies" in self.shown and not summaries:
            return False
        return not ("histogram_latencies" in self.shown and not histograms)


def documented() -> list[Documented]:
    text = DOC.read_text()
    section = text.split("\n## Families\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for cells in (line.split("|")[1:-1] for line in section.splitlines() if line.startswith("| `")):
        name, kind, _unit, labels, shown = (c.strip() for c in cells[:5])
        rows.append(Documented(name.strip("`"), kind, frozenset(re.findall(r"`(\w+)`", labels)), shown))
    return rows


def test_the_table_lists_each_family_once_with_a_known_type() -> None:
    rows = documented()
    assert len(rows) >= 50  # the table was found and read, not an empty match
    assert len({r.name for r in rows}) == len(rows)
    assert {r.type for r in rows} == {"counter", "gauge", "summary", "histogram"}
    assert sum(r.name.startswith("nv_") for r in rows) == 28


# -- a served repository ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("metrics_models")
    onnx_models.write(root, "simple", onnx_models.add_sub(["N", 16]), "max_batch_size = 8\n")
    onnx_models.write(root, "gather", onnx_models.gather(), "max_batch_size = 4\n[instance_group]\ndevice = 'cpu'\n")
    onnx_models.write(root, "held", onnx_models.identity("FP32", ["N", 4]), HELD)
    onnx_models.write(root, "cached", onnx_models.identity("FP32", ["N", 4]),
                      "max_batch_size = 4\nresponse_cache = true\n")
    return root


@dataclass
class Served:
    server: PeregrineServer
    client: grpcclient.InferenceServerClient

    def scrape(self) -> Scrape:
        return scrape(self.server)


def scrape(server: PeregrineServer) -> Scrape:
    """GET /metrics over loopback."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/metrics", timeout=10) as answer:
        return Scrape(answer.read().decode())


@pytest.fixture(scope="module")
def served(repo: Path) -> Iterator[Served]:
    """A server with Triton's summaries and first-response histogram on."""
    server = PeregrineServer(ServerConfig(model_repository=repo, grpc_port=0, http_port=0, metrics_config=FLAGS))
    server.start()
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    yield Served(server, client)
    client.close()
    server.stop(grace=1.0)


class Scrape:
    """One /metrics answer: its text and its families as prometheus_client's parser reads them."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}

    def value(self, name: str, suffix: str = "", **labels: str) -> float:
        """The one sample of family ``name`` (its sample ``name + suffix``) with exactly ``labels``."""
        family = self.families[name]
        sample = family.name + (suffix or ("_total" if family.type == "counter" else ""))
        found = [s.value for s in family.samples if s.name == sample and s.labels == labels]
        assert len(found) == 1, f"{sample}{labels}: {len(found)} samples"
        return found[0]

    def model(self, name: str, model: str, suffix: str = "", **labels: str) -> float:
        return self.value(name, suffix, model=model, version="1", **labels)


def tensor(name: str, array: np.ndarray) -> grpcclient.InferInput:
    t = grpcclient.InferInput(name, list(array.shape), {np.float32: "FP32", np.int32: "INT32",
                                                        np.int64: "INT64"}[array.dtype.type])
    t.set_data_from_numpy(array)
    return t


def simple_inputs(rows: int, dtype: Any = np.int32) -> list[grpcclient.InferInput]:
    x = np.arange(rows * 16, dtype=dtype).reshape(rows, 16)
    return [tensor("INPUT0", x), tensor("INPUT1", x)]


def status(call: Callable[[], Any]) -> str:
    """'OK' or the gRPC status name of the call's error."""
    try:
        call()
    except InferenceServerException as e:
        return str(e.status()).removeprefix("StatusCode.")
    return "OK"


class Pending:
    """An asynchronous infer: ``status()`` waits for its answer."""

    def __init__(self, client: grpcclient.InferenceServerClient, model: str, inputs: list[Any], **kw: Any) -> None:
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.context = client.async_infer(model, inputs, self._done, **kw)

    def _done(self, result: Any, error: InferenceServerException | None) -> None:
        if error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(result)

    def status(self) -> str:
        return status(lambda: self.future.result(30))


def poll(condition: Callable[[], bool], what: str, limit_s: float = 20.0) -> None:
    """Wait until the server reports ``condition`` (bounded: a failure, never a hang)."""
    end = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def use_every_model(served: Served) -> None:
    """At least one answer from each model, so that every per-model family has samples."""
    c = served.client
    assert status(lambda: c.infer("simple", simple_inputs(1))) == "OK"
    data = np.arange(4, dtype=np.float32).reshape(1, 4)
    assert status(lambda: c.infer("gather", [tensor("DATA", data), tensor("INDEX", np.array([[1]], np.int64))])) == "OK"
    assert status(lambda: c.infer("cached", [tensor("INPUT0", data)])) == "OK"


def check_against_the_table(scrape: Scrape, summaries: bool, histograms: bool, gpu: bool) -> None:
    rows = documented()
    for row in rows:
        shown = f"# TYPE {row.name} {row.type}\n" in scrape.text
        assert shown == row.expected(summaries, histograms, gpu), f"{row.name}: served {shown}"
        if not shown:
            continue
        family = scrape.families[row.parsed_name]
        assert family.type == row.type, row.name
        if family.samples:  # a family with nothing counted yet (no refusals, no cold start) has none
            labels = {k for s in family.samples for k in s.labels} - {"quantile", "le"}
            assert labels == row.labels, row.name
    # prometheus_client adds a <histogram>_created gauge to each of Peregrine's histograms (see the doc).
    served = {name.removesuffix("_created") for name in re.findall(r"^# TYPE (\S+) ", scrape.text, re.M)}
    assert served <= {r.name for r in rows}, f"served but not in docs/METRICS.md: {served - {r.name for r in rows}}"


def test_every_documented_family_is_served_with_its_type_and_labels(served: Served) -> None:
    use_every_model(served)
    gpu = served.server.metrics.gpus is not None
    check_against_the_table(served.scrape(), summaries=True, histograms=True, gpu=gpu)


def test_without_metrics_config_the_summaries_and_histogram_are_absent(repo: Path, start_server: Any) -> None:
    server = start_server(repo, http_port=0)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    try:
        use_every_model(Served(server, client))
    finally:
        client.close()
    answer = scrape(server)
    check_against_the_table(answer, summaries=False, histograms=False, gpu=server.metrics.gpus is not None)
    assert "nv_inference_request_summary_us" not in answer.text
    assert "nv_inference_request_success" in answer.families


# -- values ------------------------------------------------------------------------------------------------
def test_counters_are_the_requests_made_and_the_statistics_extension(served: Served) -> None:
    c = served.client
    before = served.scrape()
    for rows in (1, 2, 3):
        assert status(lambda rows=rows: c.infer("simple", simple_inputs(rows))) == "OK"
    # Neither an unknown model nor a request that fails validation reaches a model's statistics (as in Triton).
    assert status(lambda: c.infer("no_such_model", simple_inputs(1))) == "NOT_FOUND"
    assert status(lambda: c.infer("simple", simple_inputs(1, np.float32))) == "INVALID_ARGUMENT"
    after = served.scrape()

    def delta(name: str, **labels: str) -> float:
        return after.model(name, "simple", **labels) - before.model(name, "simple", **labels)

    assert delta("nv_inference_request_success") == 3
    assert delta("nv_inference_count") == 6  # rows
    assert delta("nv_inference_exec_count") == 3
    assert all(delta("nv_inference_request_failure", reason=r) == 0 for r in REASONS)
    assert after.model("nv_inference_pending_request_count", "simple") == 0
    # As Triton writes them: no _total on the counters.
    success = int(after.model("nv_inference_request_success", "simple"))
    assert f'\nnv_inference_request_success{{model="simple",version="1"}} {success}\n' in after.text

    stats = c.get_inference_statistics("simple").model_stats[0]
    st = stats.inference_stats
    assert after.model("nv_inference_request_success", "simple") == st.success.count
    assert sum(after.model("nv_inference_request_failure", "simple", reason=r) for r in REASONS) == st.fail.count
    assert after.model("nv_inference_count", "simple") == stats.inference_count
    assert after.model("nv_inference_exec_count", "simple") == stats.execution_count
    assert after.model("nv_inference_request_duration_us", "simple") == st.success.ns // 1000
    for stage in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert after.model(f"nv_inference_{stage}_duration_us", "simple") == getattr(st, stage).ns // 1000


def test_failures_are_counted_under_tritons_reasons(served: Served) -> None:
    c = served.client
    before = served.scrape()
    row = np.ones((1, 4), np.float32)

    waiting = Pending(c, "held", [tensor("INPUT0", row)])
    poll(lambda: served.scrape().model("nv_inference_pending_request_count", "held") == 1, "a request to queue")
    assert status(lambda: c.infer("held", [tensor("INPUT0", row)])) == "UNAVAILABLE"  # the queue of one is full
    waiting.context.cancel()
    assert waiting.status() == "CANCELLED"
    poll(lambda: served.scrape().model("nv_inference_request_failure", "held", reason="CANCELED")
         > before.model("nv_inference_request_failure", "held", reason="CANCELED"), "the cancellation to be counted")
    # A queue timeout (microseconds) that passes while the request waits for its batch: Triton's REJECTED.
    assert Pending(c, "held", [tensor("INPUT0", row)], timeout=1000).status() == "DEADLINE_EXCEEDED"
    data = np.arange(4, dtype=np.float32).reshape(1, 4)  # an index out of range fails the model's run
    poisoned = [tensor("DATA", data), tensor("INDEX", np.array([[99]], np.int64))]
    assert status(lambda: c.infer("gather", poisoned)) == "INTERNAL"
    after = served.scrape()

    def failures(model: str) -> dict[str, float]:
        return {r: after.model("nv_inference_request_failure", model, reason=r)
                - before.model("nv_inference_request_failure", model, reason=r) for r in REASONS}

    assert failures("held") == {"REJECTED": 2, "CANCELED": 1, "BACKEND": 0, "OTHER": 0}
    assert failures("gather") == {"REJECTED": 0, "CANCELED": 0, "BACKEND": 1, "OTHER": 0}
    assert after.model("nv_inference_pending_request_count", "held") == 0
    for model in ("held", "gather"):
        fail = c.get_inference_statistics(model).model_stats[0].inference_stats.fail.count
        assert sum(after.model("nv_inference_request_failure", model, reason=r) for r in REASONS) == fail
    # Nothing of the held model ran.
    assert after.model("nv_inference_exec_count", "held") == before.model("nv_inference_exec_count", "held")


def test_cache_families_count_hits_and_misses(served: Served) -> None:
    c = served.client
    before = served.scrape()
    once, twice = np.full((1, 4), 7, np.float32), np.full((1, 4), 8, np.float32)
    for x in (once, twice, twice):
        assert status(lambda x=x: c.infer("cached", [tensor("INPUT0", x)])) == "OK"
    after = served.scrape()
    hits = after.model("nv_cache_num_hits_per_model", "cached") - before.model("nv_cache_num_hits_per_model", "cached")
    misses = (after.model("nv_cache_num_misses_per_model", "cached")
              - before.model("nv_cache_num_misses_per_model", "cached"))
    assert (hits, misses) == (1, 2)
    st = c.get_inference_statistics("cached").model_stats[0].inference_stats
    assert after.model("nv_cache_hit_duration_per_model", "cached") == st.cache_hit.ns // 1000
    assert after.model("nv_cache_miss_duration_per_model", "cached") == st.cache_miss.ns // 1000
    assert "nv_cache_num_hits_per_model" not in [
        f.name for f in after.families.values() if any(s.labels.get("model") == "simple" for s in f.samples)]


def test_summaries_and_histogram_agree_with_the_counters(served: Served) -> None:
    c = served.client
    for rows in (1, 4):
        assert status(lambda rows=rows: c.infer("simple", simple_inputs(rows))) == "OK"
    scrape = served.scrape()
    summary = scrape.families["nv_inference_request_summary_us"]
    assert summary.type == "summary"
    success = scrape.model("nv_inference_request_success", "simple")
    assert scrape.model("nv_inference_request_summary_us", "simple", "_count") == success
    total_us = scrape.model("nv_inference_request_summary_us", "simple", "_sum")
    assert total_us == scrape.model("nv_inference_request_duration_us", "simple")
    for stage in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert (scrape.model(f"nv_inference_{stage}_summary_us", "simple", "_sum")
                == scrape.model(f"nv_inference_{stage}_duration_us", "simple"))
    quantiles = {s.labels["quantile"]: s.value for s in summary.samples
                 if s.name == "nv_inference_request_summary_us" and s.labels["model"] == "simple"}
    assert list(quantiles) == ["0.5", "0.9", "0.95", "0.99", "0.999"]
    assert all(math.isnan(v) or 0 <= v <= total_us * 1.01 + 1 for v in quantiles.values())

    histogram = scrape.families["nv_inference_first_response_histogram_ms"]
    assert histogram.type == "histogram"
    answered = success + sum(scrape.model("nv_inference_request_failure", "simple", reason=r) for r in REASONS)
    assert scrape.model("nv_inference_first_response_histogram_ms", "simple", "_count") == answered
    buckets = [(s.labels["le"], s.value) for s in histogram.samples
               if s.name.endswith("_bucket") and s.labels["model"] == "simple"]
    assert [le for le, _ in buckets] == ["100", "500", "2000", "5000", "+Inf"]  # as Triton writes them
    counts = [n for _, n in buckets]
    assert counts == sorted(counts) and counts[-1] == answered


def test_metrics_can_be_turned_off(repo: Path, start_server: Any) -> None:
    server = start_server(repo, http_port=0, allow_metrics=False)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/metrics", timeout=10)
    refused.value.close()
    assert refused.value.code == 404


# -- options -----------------------------------------------------------------------------------------------
def test_tritons_metric_options_on_the_command_line() -> None:
    config = parse_args(["--metrics-config", "summary_latencies=true", "--metrics-config", "histogram_latencies=true",
                         "--allow-gpu-metrics=false"])
    assert config.metrics_config == FLAGS
    assert (config.allow_metrics, config.allow_gpu_metrics) == (True, False)
    assert parse_args(["--allow-metrics", "false"]).allow_metrics is False
    settings = MetricsSettings.parse(config.metrics_config)
    assert (settings.counter_latencies, settings.summary_latencies, settings.histogram_latencies) == (True, True, True)
    assert MetricsSettings.parse({"summary_quantiles": "0.5:0.05,0.99:0.001"}).quantiles == (0.5, 0.99)
    assert MetricsSettings.parse({}) == MetricsSettings()
    for bad in ({"summary_latency": "true"}, {"summary_latencies": "yes please"}, {"summary_quantiles": "2:0.1"}):
        with pytest.raises(ValueError):
            MetricsSettings.parse(bad)


def test_counter_latencies_false_leaves_out_the_duration_counters(repo: Path, start_server: Any) -> None:
    server = start_server(repo, http_port=0, metrics_config={"counter_latencies": "false"})
    text = scrape(server).text
    assert "# TYPE nv_inference_request_success counter" in text
    assert "nv_inference_request_duration_us" not in text and "nv_cache_num_hits_per_model" not in text


# -- parts ---------------------------------------------------------------------------------------------------
def test_failure_reasons_from_errors() -> None:
    assert failure_reason(Unavailable("queue is full")) == "REJECTED"
    assert failure_reason(ResourceExhausted("no room")) == "REJECTED"
    assert failure_reason(DeadlineExceeded("expired while queued")) == "REJECTED"
    assert failure_reason(Cancelled("cancelled")) == "CANCELED"
    assert failure_reason(asyncio.CancelledError()) == "CANCELED"
    assert failure_reason(ModelExecutionError("m", "bad index")) == "BACKEND"
    assert failure_reason(InvalidArgument("priority")) == "OTHER"
    assert failure_reason(RuntimeError("?")) == "OTHER"
    stats = ModelStats()
    stats.record_request(False, 10, None, "BACKEND")
    stats.record_request(False, 10, None)
    stats.record_request(True, 10, 1)
    assert stats.failures == {"REJECTED": 0, "CANCELED": 0, "BACKEND": 1, "OTHER": 1}
    assert stats.fail.count == 2 and stats.success.count == 1


def test_sliding_quantiles_are_within_one_percent_and_forget_old_values() -> None:
    now = [0.0]
    sketch = SlidingQuantiles(max_age=60, age_buckets=5, clock=lambda: now[0])
    rng = np.random.default_rng(3)
    values = rng.lognormal(mean=6, sigma=1.5, size=5000)  # microseconds, over four decades
    for v in values:
        sketch.observe(float(v))
    sketch.observe(0.0, count=10)  # a cache hit's queue time
    qs = (0.5, 0.9, 0.99, 0.999)
    exact = np.sort(np.concatenate([values, np.zeros(10)]))
    for q, got in zip(qs, sketch.quantiles(qs), strict=True):
        want = exact[int(q * (len(exact) - 1))]
        assert abs(got - want) <= 0.0101 * want, q
    assert sketch.quantiles([0.0]) == [0.0]
    now[0] = 30.0
    sketch.observe(5.0)
    now[0] = 61.0  # the first part (t = 0) has aged out; the one of t = 30 has not
    assert sketch.quantiles([0.5]) == pytest.approx([5.0], rel=0.01)
    now[0] = 200.0
    assert all(math.isnan(v) for v in sketch.quantiles(qs))


class FakeNvml:
    """A stand-in for the pynvml module (no GPU here): two devices, one without an energy counter."""

    class NVMLError(Exception):
        pass

    def __init__(self) -> None:
        self.energy_mj = {0: 1_000_000, 1: None}
        self.shut_down = False

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        self.shut_down = True

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetUUID(self, h: int) -> bytes:
        return f"GPU-0000000{h}-aaaa".encode()  # older nvidia-ml-py releases answer bytes

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:
        return SimpleNamespace(gpu=37, memory=5)  # percent

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        return SimpleNamespace(total=80 << 30, used=3 << 30, free=77 << 30)

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        return 123_456  # milliwatts

    def nvmlDeviceGetPowerManagementLimit(self, h: int) -> int:
        if h == 1:
            raise self.NVMLError("not supported")
        return 700_000

    def nvmlDeviceGetTotalEnergyConsumption(self, h: int) -> int:  # millijoules since the driver loaded
        energy = self.energy_mj[h]
        if energy is None:
            raise self.NVMLError("not supported")
        return energy


def test_gpu_families_through_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    nvml = FakeNvml()
    gpus = open_gpus(nvml)
    assert gpus is not None and len(gpus) == 2
    nvml.energy_mj[0] += 2_500  # 2.5 J since the server started
    gpu_scrape = Scrape(render(gpus.families()))
    first, second = {"gpu_uuid": "GPU-00000000-aaaa"}, {"gpu_uuid": "GPU-00000001-aaaa"}
    assert gpu_scrape.families["nv_gpu_utilization"].type == "gauge"
    assert gpu_scrape.value("nv_gpu_utilization", **first) == pytest.approx(0.37)
    assert gpu_scrape.value("nv_gpu_memory_total_bytes", **first) == 80 << 30
    assert gpu_scrape.value("nv_gpu_memory_used_bytes", **second) == 3 << 30
    assert gpu_scrape.value("nv_gpu_power_usage", **second) == pytest.approx(123.456)
    assert gpu_scrape.value("nv_gpu_power_limit", **first) == 700
    assert [s.labels for s in gpu_scrape.families["nv_gpu_power_limit"].samples] == [first]  # the other cannot tell
    assert gpu_scrape.families["nv_energy_consumption"].type == "counter"
    assert gpu_scrape.value("nv_energy_consumption", **first) == pytest.approx(2.5)
    assert "\nnv_energy_consumption{" in gpu_scrape.text  # no _total, as Triton writes it
    gpus.close()
    assert nvml.shut_down

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-00000001")
    visible = open_gpus(FakeNvml())
    assert visible is not None and len(visible) == 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert open_gpus(FakeNvml()) is None


def test_no_gpu_means_no_gpu_families_and_no_error() -> None:
    class NoDriver(FakeNvml):
        def nvmlInit(self) -> None:
            raise self.NVMLError("driver not loaded")

    assert open_gpus(NoDriver()) is None
    try:
        import pynvml  # noqa: F401
    except ImportError:
        assert open_gpus() is None  # the package is absent: nothing to report, nothing raised
