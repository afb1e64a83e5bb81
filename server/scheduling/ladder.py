"""The SLO ladder's routing policy: which variant of a model answers a request with a deadline.

A model may declare an ordered ladder of variants (``ladder`` in its config.toml: itself first, then
siblings made by ``peregrine quantize``, most accurate first). For each request the data plane asks
:func:`route` which rung to send it to: the most accurate one expected to finish before the request's
deadline. Without a deadline the top rung answers, always.

Pure and synchronous, as :mod:`.policy`: each rung's load is plain data (:class:`RungOutlook`, taken from its
batcher) and the clock is an argument, so the policy is tested with literal numbers. Times are seconds.

The estimate of a rung's completion time plays its queue forward: the elements waiting (real-time ones: a
background job's items go behind any new request) and then the new request's are cut into batches of the
rung's batch size (one by one on a rung that does not batch), and each batch goes to the instance that frees
first (a busy one when its batch is expected to end), costing what the rung's cost model says (its upper
estimate: never optimistic about a deadline). Rungs on one device share it as a CPU's processes do: a
request routed to a rung waits, besides its own rung's queue, for the work the other rungs on its device hold
now (what their running batches have left and their queues, at their costs alone: on a CPU each ONNX Runtime
session spreads over every core), and its own rung's batches take as many times longer as the device ran
batches at once lately (the work that will arrive beside it). The costs are each rung's alone on its device:
its batcher divides every batch's time by the mean number of batches that ran beside it
(:mod:`.device_load`), and starts from a timed warm-up run, so that a lower rung, which mostly runs while
the top one is busy, is not counted slower twice, nor judged by a cold first batch. What this model leaves
out (decoding beside the models, bursts) is corrected from what happened: each rung's estimate is multiplied
by its ``correction``, the 95th percentile of how much longer than estimated its requests have lately taken
(kept by the data plane, :mod:`~peregrine.server.dataplane.ladders`).

Each estimate sees the queues of now, not the requests still to come: under a sustained load every request
finds an upper rung that fits at its moment, and together they ask more of the device than it has, until
every rung's queue is late. So the routing also keeps the mix sustainable: given the ladder's recent
``demand`` (seconds of device time the requests it routed asked for, per second) and arrival ``rate``, when
the demand is over ``sustainable`` (a share of the device, leaving the rest to decoding and the unforeseen:
by default 0.6 of a CPU and 0.85 of a GPU, measured on the first),
a request may only go to a rung whose cost per element (:func:`element_cost`) fits the share one request can
afford, ``sustainable / rate``: the mix drifts down until the demand is back under, and up again after.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

INF = math.inf
# The share of its device a ladder's demand may ask for before its mix is pushed down, by default: a CPU's
# cores also decode the images and run the server, a GPU only runs the models.
SUSTAINABLE_CPU = 0.6
SUSTAINABLE_GPU = 0.85


def sustainable_share(device: str) -> float:
    """The default share of ``device`` ("cpu", "cuda") a ladder may keep busy (``[ladder] sustainable``)."""
    return SUSTAINABLE_CPU if device == "cpu" else SUSTAINABLE_GPU


@dataclass(frozen=True)
class RungOutlook:
    """One rung's load, as its batcher sees it now."""

    name: str
    known: bool  # its cost model has seen a batch run (else its cost is unknown)
    cost_one: float  # seconds one element's batch is expected to take (upper estimate)
    cost_full: float  # seconds a batch of `batch_size` elements is expected to take
    batch_size: int  # elements it puts in one batch under load (1: it runs requests one by one)
    queued: int  # real-time elements waiting in its queue
    free_in: tuple[float, ...]  # per instance: seconds until it is free (0: idle now)
    device: str = "cpu"  # where its instances run ("cpu", "cuda"): rungs on one device slow each other
    concurrency: float = 1.0  # batches its device ran at once lately, while it ran any (device_load.py)
    correction: float = 1.0  # how much longer than estimated its requests have lately taken (observed)
    per_element: float = 0.0  # seconds one element has lately cost alone, at the batch sizes it ran (0: unknown)


@dataclass(frozen=True)
class Route:
    rung: int  # index into the ladder
    expected: float  # seconds from now to the answer, as estimated (INF: unknown)


def batch_cost(rung: RungOutlook, n: int) -> float:
    """A batch of ``n`` elements: one element's cost times ``n`` on a rung that runs requests one by one,
    else between one element's cost and a full batch's, linearly."""
    if rung.batch_size <= 1:
        return rung.cost_one * max(n, 1)
    n = min(max(n, 1), rung.batch_size)
    return rung.cost_one + (rung.cost_full - rung.cost_one) * (n - 1) / (rung.batch_size - 1)


def completion(rung: RungOutlook, size: int, slowdown: float = 1.0) -> float:
    """Seconds until a request of ``size`` elements queued now on ``rung`` is expected to be answered, every
    batch taking ``slowdown`` times its cost (other work sharing the device)."""
    if not rung.known:
        return INF
    free = sorted(f * slowdown for f in rung.free_in) or [0.0]
    heapq.heapify(free)
    if rung.batch_size <= 1:  # requests run one by one: the queue's elements, then the request
        for _ in range(rung.queued):
            heapq.heappush(free, heapq.heappop(free) + rung.cost_one * slowdown)
        return heapq.heappop(free) + batch_cost(rung, size) * slowdown
    waiting = rung.queued + size  # cut in full batches, as the batcher does under load; the request is last
    while True:
        n = min(rung.batch_size, waiting)
        end = heapq.heappop(free) + batch_cost(rung, n) * slowdown
        waiting -= n
        if waiting <= 0:
            return end
        heapq.heappush(free, end)


def element_cost(rung: RungOutlook) -> float:
    """Seconds of device time one element costs on ``rung``, alone: as its recent batches did, at the sizes
    they ran; before any, as in its full batches."""
    if rung.per_element > 0:
        return rung.per_element
    return rung.cost_full / rung.batch_size if rung.batch_size > 1 else rung.cost_one


def pending_work(rung: RungOutlook) -> float:
    """Seconds of its device's time the work ``rung`` holds now would take alone: what its running batches
    have left and its queue, one element at a time (batching would take less: not optimistic)."""
    if not rung.known:
        return 0.0
    return sum(rung.free_in) + rung.queued * rung.cost_one


def route(rungs: Sequence[RungOutlook], size: int, deadline: float, now: float, lead: float = 0.0,
          headroom: float = 0.2, demand: float = 0.0, rate: float = 0.0,
          sustainable: float = SUSTAINABLE_GPU) -> Route:
    """The rung to run a request of ``size`` elements whose deadline is ``deadline`` (``INF``: none).

    ``lead``: seconds the request still needs before it reaches a queue (decoding its images). A rung is
    expected to meet the deadline when ``now + lead + completion * (1 + headroom) <= deadline``. The first
    such rung wins; a rung whose cost is still unknown is tried when every rung above it is expected to miss
    (it learns its cost so). When no rung is expected to meet the deadline, the one expected to answer first
    does, so that the request has its best chance. ``demand`` and ``rate``: the ladder's recent demand on the
    device (its share, per second) and requests per second; over ``sustainable``, a rung (but the last) whose
    cost per element is over what one request can afford is passed over, for a deadline and as the best
    chance alike (module docstring)."""
    if not rungs:
        raise ValueError("a ladder has at least one rung")
    if deadline == INF:
        return Route(0, INF)
    budget = deadline - now - lead
    best = Route(0, INF)
    work = [pending_work(r) for r in rungs]
    afford = sustainable / rate if demand > sustainable and rate > 0 else INF
    for i, rung in enumerate(rungs):
        others = sum(w for j, w in enumerate(work) if j != i and rungs[j].device == rung.device)
        expected = (completion(rung, size, rung.concurrency) + others) * rung.correction
        if not rung.known:
            if i == 0:
                return Route(0, INF)  # the top rung answers until its cost is known
            return Route(i, INF)
        affordable = element_cost(rung) * size <= afford or i == len(rungs) - 1
        if expected * (1.0 + headroom) <= budget and affordable:
            return Route(i, expected)
        # With none in time, the best chance; over the sustainable demand, among the rungs it can afford
        # (an upper rung answering first now is more load than the device keeps up with).
        if affordable and expected < best.expected:
            best = Route(i, expected)
    return best
