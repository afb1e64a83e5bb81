"""Plain data returned by the metadata and repository calls."""

from __future__ import annotations

from dataclasses import dataclass

from peregrine.proto import grpc_service_pb2 as pb


@dataclass(frozen=True)
class TensorMetadata:
    """An input or output of a model. ``shape`` uses -1 for a dynamic dimension (the batch one included)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorMetadata, ...]
    outputs: tuple[TensorMetadata, ...]

    def input(self, name: str) -> TensorMetadata:
        """The input called ``name``. Raises KeyError if the model has none."""
        for t in self.inputs:
            if t.name == name:
                return t
        raise KeyError(f"model '{self.name}' has no input '{name}'; inputs: {[t.name for t in self.inputs]}")

    @classmethod
    def from_proto(cls, msg: pb.ModelMetadataResponse) -> ModelMetadata:
        def tensors(ts: object) -> tuple[TensorMetadata, ...]:
            return tuple(TensorMetadata(t.name, t.datatype, tuple(int(d) for d in t.shape)) for t in ts)  # type: ignore[attr-defined]

        return cls(msg.name, tuple(msg.versions), msg.platform, tensors(msg.inputs), tensors(msg.outputs))


@dataclass(frozen=True)
class ServerMetadata:
    name: str
    version: str
    extensions: tuple[str, ...]

    @classmethod
    def from_proto(cls, msg: pb.ServerMetadataResponse) -> ServerMetadata:
        return cls(msg.name, msg.version, tuple(msg.extensions))


@dataclass(frozen=True)
class RepositoryModel:
    """One entry of the repository index. ``state`` is e.g. READY, UNAVAILABLE, LOADING; ``reason`` says why
    a model is not ready."""

    name: str
    version: str
    state: str
    reason: str

    @classmethod
    def list_from_proto(cls, msg: pb.RepositoryIndexResponse) -> list[RepositoryModel]:
        return [cls(m.name, m.version, m.state, m.reason) for m in msg.models]


@dataclass(frozen=True)
class SharedMemoryStatus:
    """One registered shared-memory region. System regions have ``key`` and ``offset`` (into the POSIX
    shared-memory object); CUDA regions have ``device_id``. Sizes in bytes."""

    name: str
    byte_size: int
    key: str = ""
    offset: int = 0
    device_id: int | None = None

    @classmethod
    def list_from_proto(cls, msg: pb.SystemSharedMemoryStatusResponse | pb.CudaSharedMemoryStatusResponse
                        ) -> list[SharedMemoryStatus]:
        out = []
        for name in sorted(msg.regions):
            r = msg.regions[name]
            if isinstance(msg, pb.CudaSharedMemoryStatusResponse):
                out.append(cls(r.name, int(r.byte_size), device_id=int(r.device_id)))
            else:
                out.append(cls(r.name, int(r.byte_size), key=r.key, offset=int(r.offset)))
        return out
