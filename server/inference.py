"""Plain data passed between the layers: tensor specs, requests and responses.

Nothing here knows about protobuf or ONNX Runtime; the transport builds these from the wire with
:mod:`peregrine.server.codecs`, the scheduler queues them, and the runtime reads their arrays.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output. ``shape`` includes the batch dimension when the model batches;
    -1 marks a dynamic dimension."""

    name: str
    datatype: str  # OIP datatype name
    shape: tuple[int, ...]
    reject_non_finite: bool = False
    optional: bool = False  # an input a request may leave out (Triton's ModelInput.optional)

    def describe(self) -> str:
        return f"{self.datatype} [{','.join('N' if d == -1 else str(d) for d in self.shape)}]"


@dataclass
class InferRequest:
    """One decoded inference request.

    ``inputs`` hold arrays that may be read-only views of the request's bytes; nothing downstream
    writes to them. ``deadline`` is on the :func:`time.monotonic` clock, ``None`` for no deadline.
    """

    model_name: str
    model_version: str = ""
    id: str = ""
    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    requested_outputs: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    deadline: float | None = None
    priority: int = 0
    # Requests that share a key keep their order when the model preserves ordering (one stream, one client).
    ordering_key: str = ""
    arrival: float = field(default_factory=time.monotonic)
    typed_contents: bool = False  # the client sent typed `contents`, so it is answered in kind
    queue_ns: int | None = None  # set by the scheduler when the request leaves the queue
    trace: Any = None  # a tracing.Trace when this request is traced (Triton's trace extension)


@dataclass
class InferResponse:
    model_name: str
    model_version: str
    id: str
    outputs: dict[str, np.ndarray]
    typed_contents: bool = False
