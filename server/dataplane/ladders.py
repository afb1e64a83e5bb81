"""SLO ladders in the data plane: which variant answers each request of a model that declares a ladder.

The choice is :func:`~peregrine.server.scheduling.ladder.route`'s, over the rungs that are ready now (the
model itself first, then its ``[ladder] rungs`` in order; a rung not loaded, or of another kind than the
model, is skipped). What a request still needs before it reaches a queue (its images decoded) is learned per
model as a moving average and counted against its deadline. The answer names the variant that made it
(see :class:`~peregrine.server.core.types.InferResponse` and ``FrameResult``); :attr:`Ladders.routed`
counts requests per model and variant.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from ..core.types import DetectRequest, InferRequest
from ..models.base import ModelVersion
from ..scheduling.ladder import route
from .repository import ModelRepository


class Ladders:
    def __init__(self, repository: ModelRepository) -> None:
        self.repository = repository
        self.routed: Counter[tuple[str, str]] = Counter()  # (model, variant that answered) -> requests
        self._lead: dict[str, float] = {}  # model -> seconds from routing to its queue (decoding)

    def choose(self, model: ModelVersion, request: InferRequest) -> ModelVersion:
        """The variant of ``model`` (a ladder's top) that runs ``request``: ``model`` itself unless its
        deadline is expected to pass there and a rung below is expected to meet it."""
        ladder = model.config.ladder
        assert ladder is not None
        if request.deadline is None:
            self.routed[model.name, model.name] += 1
            return model
        rungs = [model]
        for name in ladder.rungs:
            rung = self.repository.newest_ready(name)
            if rung is not None and rung.name != model.name and type(rung) is type(model):
                rungs.append(rung)
        chosen = model
        if len(rungs) > 1:
            now = time.monotonic()
            outlooks = [r.outlook(now) for r in rungs]
            choice = route(outlooks, _elements(model, request), request.deadline, now,
                           self._lead.get(model.name, 0.0), ladder.headroom)
            chosen = rungs[choice.rung]
        self.routed[model.name, chosen.name] += 1
        return chosen

    def observe_lead(self, model_name: str, seconds: float) -> None:
        """A request of ``model_name``'s ladder took ``seconds`` from routing to its queue."""
        previous = self._lead.get(model_name)
        self._lead[model_name] = seconds if previous is None else 0.9 * previous + 0.1 * seconds

    def counts(self) -> list[tuple[str, str, int]]:
        """(model, variant, requests) for every pair routed so far."""
        return [(model, variant, n) for (model, variant), n in sorted(self.routed.items())]


def _elements(model: ModelVersion, request: InferRequest) -> int:
    """The batch elements ``request`` will carry, before it is validated (1 when it cannot tell yet)."""
    if isinstance(request, DetectRequest):
        return max(len(request.images), 1)
    if not getattr(model, "max_batch_size", 0):
        return 1
    first: Any = next(iter(request.inputs.values()), None)
    shape = getattr(first, "shape", None)
    return int(shape[0]) if shape and isinstance(shape[0], int) and shape[0] > 0 else 1

