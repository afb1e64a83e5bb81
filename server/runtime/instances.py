"""A model version's execution instances: one ONNX Runtime session per instance, and on GPU providers one
session per batch bucket.

ORT's CUDA convolutions keep the plan of the last input shape they ran and rebuild it (cuDNN frontend
graph and plans) whenever the shape differs from the previous run's, so one session alternating between
buckets would pay for it on every change of bucket; a session that only ever sees one shape plans once,
at warm-up. Each session holds its own copy of the weights and its own memory arena. On the CPU, where a
new shape costs nothing to plan, an instance's one session runs every bucket.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..config.model import ModelConfig
from .onnx import OnnxSession


def instance_gpu(config: ModelConfig, instance: int) -> int:
    """The GPU an instance runs on: the configured GPUs in turn."""
    gpus = config.instance_group.gpus or [0]
    return gpus[instance % len(gpus)]


def open_sessions(path: Path, config: ModelConfig) -> list[OnnxSession]:
    """One session per configured instance (blocking; raises ModelLoadError)."""
    return [OnnxSession(path, config, device_id=instance_gpu(config, i)) for i in range(config.instance_group.count)]


def open_bucket_sessions(sessions: Sequence[OnnxSession], buckets: tuple[int, ...],
                         open_session: Callable[[int], OnnxSession]) -> list[dict[int, OnnxSession]]:
    """Per instance, the session that runs each batch bucket; empty when every batch of an instance runs
    on its one session (no buckets, or a CPU provider). The instance's own session takes the largest
    bucket; ``open_session(instance)`` opens the others."""
    if not buckets or sessions[0].device != "cuda":
        return []
    return [
        {b: (session if b == buckets[-1] else open_session(i)) for b in buckets}
        for i, session in enumerate(sessions)
    ]


@dataclass
class Instances:
    """The sessions of a model version's instances. ``buckets`` are the sizes batches are padded up to
    (ascending; empty: each batch at its own size); ``bucket_sessions`` per instance, bucket -> the
    session that runs it (GPU providers), or empty: ``sessions`` run everything."""

    sessions: list[OnnxSession]
    buckets: tuple[int, ...] = ()
    bucket_sessions: list[dict[int, OnnxSession]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.bucket_sessions and any(set(m) != set(self.buckets) for m in self.bucket_sessions):
            raise ValueError(f"bucket sessions must cover exactly the buckets {self.buckets}")

    @classmethod
    def with_buckets(cls, sessions: list[OnnxSession], buckets: tuple[int, ...], path: Path,
                     config: ModelConfig) -> Instances:
        """The instances of ``sessions`` executing at ``buckets``; on GPU providers each bucket but the
        largest gets a session of its own, opened here from ``path`` (blocking; raises ModelLoadError)."""
        per_bucket = open_bucket_sessions(sessions, buckets,
                                          lambda i: OnnxSession(path, config, device_id=instance_gpu(config, i)))
        return cls(sessions, buckets, per_bucket)

    def __len__(self) -> int:
        return len(self.sessions)

    def open_instance(self, path: Path, config: ModelConfig) -> None:
        """Open one more instance (its session, and on GPU providers its bucket sessions); blocking."""
        i = len(self.sessions)
        session = OnnxSession(path, config, device_id=instance_gpu(config, i))
        per_bucket = open_bucket_sessions([session], self.buckets, lambda _: OnnxSession(
            path, config, device_id=instance_gpu(config, i))) if self.bucket_sessions else []
        self.bucket_sessions.extend(per_bucket)  # before the session: an instance is in use once it is listed
        self.sessions.append(session)

    def close_last(self) -> None:
        """Drop the last instance's sessions (it is out of service); their memory goes with them."""
        self.sessions.pop()
        if self.bucket_sessions:
            self.bucket_sessions.pop()

    @property
    def first(self) -> OnnxSession:
        return self.sessions[0]

    @property
    def device(self) -> str:
        """Where the instances run: "cpu" or "cuda"."""
        return self.sessions[0].device

    @property
    def providers(self) -> list[str]:
        return self.sessions[0].providers

    def session_for(self, instance: int, rows: int) -> OnnxSession:
        """The session that runs a batch of ``rows`` rows on ``instance``: its bucket's session, or the
        instance's own session (no buckets, or a batch of another size)."""
        per_bucket: Mapping[int, OnnxSession] = self.bucket_sessions[instance] if self.bucket_sessions else {}
        return per_bucket.get(rows, self.sessions[instance])

    def runners(self, rows: int) -> list[OnnxSession]:
        """Per instance, the session that runs ``rows`` rows (what warm-up runs)."""
        return [self.session_for(i, rows) for i in range(len(self.sessions))]
