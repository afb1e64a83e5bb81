"""SLO ladders in the data plane: which variant answers each request of a model that declares a ladder.

The choice is :func:`~peregrine.server.scheduling.ladder.route`'s, over the rungs that are ready now (the
model itself first, then its ``[ladder] rungs`` in order; a rung not loaded, or of another kind than the
model, is skipped). What a request still needs before it reaches a queue (its images decoded) is learned per
model as a moving average and counted against its deadline; so are each rung's estimate corrections (what
its requests took against what was expected) and the ladder's recent rate and demand on its device (what
keeps its mix sustainable). The answer names the variant that made it (see
:class:`~peregrine.server.core.types.InferResponse` and ``FrameResult``); :attr:`Ladders.routed` counts
requests per model and variant, :attr:`Ladders.missed` those of them that missed their deadline.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import Counter
from typing import Any

from ..core.types import DetectRequest, InferRequest
from ..models.base import ModelVersion
from ..scheduling.ladder import element_cost, route, sustainable_share
from .repository import ModelRepository

CORRECTION_FADE_S = 5.0
DEMAND_WINDOW_S = 2.0  # the time constant of a ladder's recent arrival rate and demand
CORRECTION_QUANTILE = 0.95
CORRECTION_STEP = 0.05


class Ladders:
    def __init__(self, repository: ModelRepository) -> None:
        self.repository = repository
        self.routed: Counter[tuple[str, str]] = Counter()  # (model, variant that answered) -> requests
        self.missed: Counter[tuple[str, str]] = Counter()  # (model, variant) -> requests past their deadline
        self._lead: dict[str, float] = {}  # model -> seconds from routing to its queue (decoding)
        # (model, rung) -> how many times its estimate its requests have lately taken (95th percentile), and
        # when that was last observed: unobserved, it fades back to 1 (a rung corrected out of use comes back)
        self._correction: dict[tuple[str, str], tuple[float, float]] = {}
        # model -> (requests, device seconds they asked for, when): sums decaying with DEMAND_WINDOW_S, so
        # that divided by it they are the recent arrival rate and demand
        self._paced: dict[str, tuple[float, float, float]] = {}

    def choose(self, model: ModelVersion, request: InferRequest) -> tuple[ModelVersion, float]:
        """The variant of ``model`` (a ladder's top) that runs ``request``: ``model`` itself unless its
        deadline is expected to pass there and a rung below is expected to meet it; and the seconds from now
        to the answer, as estimated (INF: no estimate)."""
        ladder = model.config.ladder
        assert ladder is not None
        if request.deadline is None:
            self.routed[model.name, model.name] += 1
            return model, math.inf
        rungs = [model]
        for name in ladder.rungs:
            rung = self.repository.newest_ready(name)
            if rung is not None and rung.name != model.name and type(rung) is type(model):
                rungs.append(rung)
        chosen, expected = model, math.inf
        if len(rungs) > 1:
            now = time.monotonic()
            outlooks = [dataclasses.replace(r.outlook(now), correction=self.correction(model.name, r.name, now))
                        for r in rungs]
            lead = self._lead.get(model.name, 0.0)
            size = _elements(model, request)
            requests, demand = self._pace(model.name, now)
            sustainable = ladder.sustainable or sustainable_share(outlooks[0].device)
            choice = route(outlooks, size, request.deadline, now, lead, ladder.headroom,
                           demand=demand / DEMAND_WINDOW_S, rate=requests / DEMAND_WINDOW_S, sustainable=sustainable)
            chosen, expected = rungs[choice.rung], lead + choice.expected
            picked = outlooks[choice.rung]
            self._paced[model.name] = (requests + 1, demand + (element_cost(picked) * size if picked.known else 0.0),
                                       now)
        self.routed[model.name, chosen.name] += 1
        return chosen, expected

    def observe_answer(self, model_name: str, rung_name: str, expected: float, seconds: float,
                       missed: bool = False) -> None:
        """A request of ``model_name``'s ladder routed to ``rung_name``, expected to take ``expected``
        seconds from routing to its answer, took ``seconds`` (or, ``missed``, failed after them, its
        deadline passed): the rung's correction moves toward the 95th percentile of their ratios (kept within
        0.5..8), and a miss is counted against the rung."""
        if missed:
            self.missed[model_name, rung_name] += 1
        if not (0 < expected < math.inf) or seconds <= 0:
            return
        now = time.monotonic()
        ratio = seconds / expected
        q = self.correction(model_name, rung_name, now)
        # The 95th percentile of the ratio, tracked by stochastic approximation: a deadline is missed by
        # the slow requests, not by the average one.
        q += CORRECTION_STEP * (CORRECTION_QUANTILE if ratio >= q else CORRECTION_QUANTILE - 1.0)
        self._correction[model_name, rung_name] = (min(max(q, 0.5), 8.0), now)

    def _pace(self, model_name: str, now: float) -> tuple[float, float]:
        """The requests routed and the device seconds they asked for, as sums decayed to ``now``."""
        requests, demand, at = self._paced.get(model_name, (0.0, 0.0, now))
        keep = math.exp(-max(now - at, 0.0) / DEMAND_WINDOW_S)
        return requests * keep, demand * keep

    def correction(self, model_name: str, rung_name: str, now: float) -> float:
        """The factor ``rung_name``'s estimates are multiplied by at ``now``: fading toward 1 with a time
        constant of :data:`CORRECTION_FADE_S` since it was last observed."""
        value, at = self._correction.get((model_name, rung_name), (1.0, now))
        return 1.0 + (value - 1.0) * math.exp(-max(now - at, 0.0) / CORRECTION_FADE_S)

    def observe_lead(self, model_name: str, seconds: float) -> None:
        """A request of ``model_name``'s ladder took ``seconds`` from routing to its queue."""
        previous = self._lead.get(model_name)
        self._lead[model_name] = seconds if previous is None else 0.9 * previous + 0.1 * seconds

    def counts(self) -> list[tuple[str, str, int, int]]:
        """(model, variant, requests, of them past their deadline) for every pair routed so far."""
        return [(model, variant, n, self.missed[model, variant]) for (model, variant), n in sorted(self.routed.items())]


def _elements(model: ModelVersion, request: InferRequest) -> int:
    """The batch elements ``request`` will carry, before it is validated (1 when it cannot tell yet)."""
    if isinstance(request, DetectRequest):
        return max(len(request.images), 1)
    if not getattr(model, "max_batch_size", 0):
        return 1
    first: Any = next(iter(request.inputs.values()), None)
    shape = getattr(first, "shape", None)
    return int(shape[0]) if shape and isinstance(shape[0], int) and shape[0] > 0 else 1

