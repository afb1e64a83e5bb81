"""Open Inference Protocol metadata messages from plain descriptions: server and model metadata, model
configuration (Triton's ``ModelConfig``), statistics, repository index, shared-memory status."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from peregrine.proto import grpc_service_pb2 as pb
from peregrine.proto import model_config_pb2 as mc

from ..core import datatypes
from ..core.stats import ModelStats
from ..core.types import ModelDescription

if TYPE_CHECKING:
    from ..dataplane.shm import RegionStatus


def shared_memory_status(kind: str, regions: list[RegionStatus]) -> Any:
    """A System- or CudaSharedMemoryStatusResponse listing ``regions``."""
    if kind == "system":
        msg: Any = pb.SystemSharedMemoryStatusResponse()
        for r in regions:
            msg.regions[r.name].CopyFrom(pb.SystemSharedMemoryStatusResponse.RegionStatus(
                name=r.name, key=r.key, offset=r.offset, byte_size=r.byte_size))
        return msg
    msg = pb.CudaSharedMemoryStatusResponse()
    for r in regions:
        msg.regions[r.name].CopyFrom(pb.CudaSharedMemoryStatusResponse.RegionStatus(
            name=r.name, device_id=r.device_id, byte_size=r.byte_size))
    return msg


# -- model metadata, configuration and statistics -------------------------------------------------
def model_metadata(model: ModelDescription, versions: list[int]) -> pb.ModelMetadataResponse:
    msg = pb.ModelMetadataResponse(name=model.name, versions=[str(v) for v in sorted(versions)],
                                   platform=model.config.platform)
    for spec, field in ((model.inputs, msg.inputs), (model.outputs, msg.outputs)):
        for t in spec:
            field.add(name=t.name, datatype=t.datatype, shape=t.shape)
    return msg


def _dims(model: ModelDescription, shape: tuple[int, ...]) -> tuple[int, ...]:
    return shape[1:] if model.max_batch_size else shape


_FORMATS = {"none": mc.ModelInput.FORMAT_NONE, "nhwc": mc.ModelInput.FORMAT_NHWC, "nchw": mc.ModelInput.FORMAT_NCHW}


def model_config(model: ModelDescription, tier: str = "") -> mc.ModelConfig:
    cfg = model.config
    msg = mc.ModelConfig(
        name=model.name,
        platform=cfg.platform,
        backend="onnxruntime",
        max_batch_size=model.max_batch_size,
        default_model_filename=cfg.default_model_filename,
    )
    policy = cfg.version_policy
    if policy == "all":
        msg.version_policy.all.SetInParent()
    elif policy == "latest":
        msg.version_policy.latest.num_versions = 1
    elif isinstance(policy, dict) and "latest" in policy:
        msg.version_policy.latest.num_versions = int(policy["latest"])  # type: ignore[arg-type]
    elif isinstance(policy, dict):
        msg.version_policy.specific.versions.extend(policy["specific"])  # type: ignore[arg-type]
    configured = {t.name: t for t in (*cfg.input, *cfg.output)}
    for t in model.inputs:
        entry = msg.input.add(name=t.name, data_type=datatypes.from_name(t.datatype).config,
                              dims=_dims(model, t.shape), optional=t.optional)
        c = configured.get(t.name)
        if c is not None:
            entry.format = _FORMATS[c.format]  # clients such as Triton's image_client read the layout here
            if c.reshape is not None:
                entry.reshape.shape.extend(c.reshape)
    for t in model.outputs:
        entry = msg.output.add(name=t.name, data_type=datatypes.from_name(t.datatype).config,
                               dims=_dims(model, t.shape))
        c = configured.get(t.name)
        if c is not None and c.reshape is not None:
            entry.reshape.shape.extend(c.reshape)
    on_gpu = model.device == "cuda"
    msg.instance_group.add(
        name=f"{model.name}_0",
        kind=mc.ModelInstanceGroup.KIND_GPU if on_gpu else mc.ModelInstanceGroup.KIND_CPU,
        count=model.instances,
        gpus=list(model.gpus),
    )
    if cfg.response_cache:
        msg.response_cache.enable = True  # perf_analyzer reads it to report cache hits and misses
    # Triton's ONNX Runtime backend reads optimization.graph.level as -1 basic, 1 extended, anything else
    # all (it has no "disable": reported as basic, the least it names).
    level = {"disable": -1, "basic": -1, "extended": 1, "all": 0}[cfg.onnxruntime.graph_optimization_level]
    msg.optimization.graph.level = level
    if "TensorrtExecutionProvider" in model.providers:
        msg.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
    db = cfg.dynamic_batching
    if db is not None and model.max_batch_size:
        dyn = msg.dynamic_batching
        dyn.preferred_batch_size.extend(db.preferred_batch_sizes)
        dyn.max_queue_delay_microseconds = db.max_queue_delay_us
        dyn.preserve_ordering = db.preserve_ordering
        dyn.priority_levels = db.priority_levels
        dyn.default_priority_level = db.default_priority_level
        _queue_policy(dyn.default_queue_policy, db.default_queue_policy, db.max_queue_size)
        for level_, p in db.priority_queue_policy.items():
            _queue_policy(dyn.priority_queue_policy[level_], p, 0)
        msg.parameters["batching_window"].string_value = db.window
        if model.batch_buckets:  # Peregrine only: the sizes batches are padded up to
            msg.parameters["batch_buckets"].string_value = ",".join(str(b) for b in model.batch_buckets)
    msg.parameters["execution_providers"].string_value = ",".join(model.providers)
    note = model.provider_note
    if note:
        msg.parameters["execution_provider_note"].string_value = note
    if tier:
        msg.parameters["kernel_tier"].string_value = tier
    for k, v in model.details:
        msg.parameters[k].string_value = v
    for k, v in cfg.parameters.items():
        msg.parameters[k].string_value = v
    return msg


def _queue_policy(msg: mc.ModelQueuePolicy, p: Any, max_queue_size: int) -> None:
    msg.timeout_action = mc.ModelQueuePolicy.DELAY if p.timeout_action == "delay" else mc.ModelQueuePolicy.REJECT
    msg.default_timeout_microseconds = p.default_timeout_us
    msg.allow_timeout_override = p.allow_timeout_override
    msg.max_queue_size = p.max_queue_size or max_queue_size


def model_statistics(model: ModelDescription, s: ModelStats) -> pb.ModelStatistics:
    msg = pb.ModelStatistics(
        name=model.name,
        version=str(model.version),
        last_inference=s.last_inference_ms,
        inference_count=s.inference_count,
        execution_count=s.execution_count,
    )
    st = msg.inference_stats
    for name in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit",
                 "cache_miss"):
        d = getattr(s, name)
        getattr(st, name).count = d.count
        getattr(st, name).ns = d.ns
    for size in sorted(s.batches):
        b = s.batches[size]
        entry = msg.batch_stats.add(batch_size=size)
        for name in ("compute_input", "compute_infer", "compute_output"):
            d = getattr(b, name)
            getattr(entry, name).count = d.count
            getattr(entry, name).ns = d.ns
    return msg


def repository_index(rows: list[tuple[str, str, str, str]]) -> pb.RepositoryIndexResponse:
    """A RepositoryIndexResponse of (name, version, state, reason) rows."""
    msg = pb.RepositoryIndexResponse()
    for name, version, state, reason in rows:
        msg.models.add(name=name, version=version, state=state, reason=reason)
    return msg
