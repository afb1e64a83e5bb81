"""What a loaded model version is to the rest of the server: the :class:`ModelVersion` interface.

Kinds of model (:mod:`.registry`) implement it by composition: a version holds its instances (runtime),
its scheduler (dynamic batcher) and, for a detection pipeline, its pre/post stages; none subclasses another.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from ..config.model import ModelConfig
from ..core.stats import ModelStats
from ..core.types import InferRequest, InferResponse, ModelDescription, TensorSpec
from ..runtime.instances import Instances
from ..scheduling.ladder import RungOutlook


class ModelVersion(Protocol):
    """One loaded version of a model.

    Lifecycle: ``load`` (blocking, off the event loop) -> :meth:`start` (on the loop) -> requests ->
    :meth:`stop` (on the loop: queued and running requests finish first). Serving: :meth:`validate` runs in
    the caller's thread (it may decode images), :meth:`infer` on the event loop.
    """

    name: str
    version: int
    config: ModelConfig
    stats: ModelStats
    validate_decodes: bool  # validate() decodes (images): the data plane runs it off the event loop

    @classmethod
    def load(cls, name: str, version: int, version_dir: Path, config: ModelConfig) -> ModelVersion:
        """Open the version's sessions and resolve its tensors (blocking). Raises ModelLoadError."""
        ...

    def describe(self) -> ModelDescription:
        """The version as metadata, configuration and statistics calls report it."""
        ...

    def validate(self, request: InferRequest) -> InferRequest:
        """Check a decoded request against the model; returns the request to pass to :meth:`infer` (the
        same one, or what the model makes of it). Raises InvalidArgument naming the field."""
        ...

    async def infer(self, request: InferRequest) -> InferResponse:
        """Queue, run and answer a request :meth:`validate` returned."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    @property
    def queue_depth(self) -> int: ...

    def outlook(self, now: float) -> RungOutlook:
        """Its queue's load at ``now`` (time.monotonic()), for the SLO ladder's routing."""
        ...


def describe(name: str, version: int, platform: str, inputs: list[TensorSpec], outputs: list[TensorSpec],
             max_batch_size: int, config: ModelConfig, instances: Instances,
             details: tuple[tuple[str, str], ...] = ()) -> ModelDescription:
    """The ModelDescription of a version served by ``instances``."""
    sessions = instances.sessions
    on_gpu = instances.device == "cuda"
    return ModelDescription(
        name=name, version=version, platform=platform, inputs=tuple(inputs), outputs=tuple(outputs),
        max_batch_size=max_batch_size, config=config, instances=len(sessions), device=instances.device,
        gpus=tuple(sorted({s.device_id for s in sessions})) if on_gpu else (),
        providers=tuple(instances.providers), provider_note=sessions[0].provider_note,
        batch_buckets=instances.buckets, details=details,
    )
