"""Model lifecycle in one server: load on demand, unload when idle, a memory budget, repository polling.

- **On demand.** A model configured ``load = "on_demand"`` (or one the server let go, below) is listed as
  UNLOADED. Its first request loads it and waits for the load within the request's deadline; however many
  requests arrive meanwhile, one load runs and all of them wait for it. Each such wait is a *cold start*,
  counted with its duration.
- **Idle unload** (scale to zero): a model with ``idle_unload_s`` is unloaded after that long without a
  request and with none in flight; its sessions and their memory are released; it stays listed (UNLOADED)
  and its next request loads it again.
- **Memory budget** (``--model-memory-budget-mb``): before an on-demand load, the least recently used idle
  models are unloaded until the new one fits. A model's footprint is estimated as its model file's bytes
  times its instances (ONNX Runtime holds the weights once per session); when nothing can be let go the
  load fails with RESOURCE_EXHAUSTED naming the budget.
- **Poll mode** (``--model-control-mode poll``, Triton's): every ``--repository-poll-secs`` the repository is
  scanned; new models load, models whose files changed reload (new versions serve before the old ones
  drain, so no request in flight is dropped), removed ones unload.

The request path pays a dictionary look-up and two counter updates (:meth:`acquire`, :meth:`release`); the
rest runs on the event loop in a background task, and loads in a thread of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import DeadlineExceeded, NotFound, NotReady, PeregrineError, ResourceExhausted, Unavailable
from ..models.base import ModelVersion
from .repository import ModelRepository, version_numbers

log = logging.getLogger(__name__)

TICK_S = 0.5  # how often idle models are looked for


@dataclass
class ColdStarts:
    """Requests that waited for their model to load, and the loads they waited for."""

    requests: int = 0
    loads: int = 0
    load_seconds: float = 0.0
    last_load_seconds: float = 0.0


class Lifecycle:
    def __init__(self, repository: ModelRepository, budget_bytes: int = 0, poll_s: float = 0.0) -> None:
        self.repository = repository
        self.budget_bytes = budget_bytes
        self.poll_s = poll_s
        self.cold: dict[str, ColdStarts] = {}
        self._loading: dict[str, asyncio.Future[None]] = {}
        self._in_flight: Counter[str] = Counter()
        self._last_used: dict[str, float] = {}
        self._signatures: dict[str, tuple[Any, ...]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loads = ThreadPoolExecutor(1, thread_name_prefix="peregrine-lifecycle")
        self._stopped = False

    # -- the request path -------------------------------------------------------------------------------
    async def acquire(self, name: str, version: str, deadline: float | None) -> ModelVersion:
        """The ready version a request names, loading the model first when it comes on demand (waiting at
        most until ``deadline``). The caller gives it back with :meth:`release` once answered."""
        try:
            model = self.repository.get(name, version)
        except NotReady:
            if name not in self._loading and not self.repository.comes_on_demand(name):
                raise
            await self._wait_for_load(name, deadline)
            model = self.repository.get(name, version)
        self.hold(name)
        return model

    def hold(self, name: str) -> None:
        """Count one more request in use on ``name``, which is ready (acquire's second half: an SLO ladder's
        rung is held so); :meth:`release` gives it back."""
        self._in_flight[name] += 1
        self._last_used[name] = time.monotonic()

    def release(self, name: str) -> None:
        self._in_flight[name] -= 1
        if self._in_flight[name] <= 0:
            del self._in_flight[name]
        self._last_used[name] = time.monotonic()

    def touch(self, name: str) -> None:
        """``name`` was used just now (without :meth:`acquire`: a stream's frame)."""
        self._last_used[name] = time.monotonic()

    def request_load(self, name: str) -> bool:
        """Start loading an on-demand model without waiting (for callers that cannot wait, such as a stream
        admitting a frame). True when a load is running or was started."""
        if name in self._loading:
            return True
        if not self.repository.comes_on_demand(name):
            return False
        self._start_load(name)
        return True

    async def _wait_for_load(self, name: str, deadline: float | None) -> None:
        started = time.monotonic()
        future = self._loading.get(name) or self._start_load(name)
        cold = self.cold.setdefault(name, ColdStarts())
        cold.requests += 1
        timeout = None if deadline is None else deadline - started
        if timeout is not None and timeout <= 0:
            raise DeadlineExceeded(f"deadline exceeded before model '{name}' could load (cold start)")
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            raise DeadlineExceeded(f"deadline exceeded while model '{name}' was loading (cold start, "
                                   f"{time.monotonic() - started:.1f} s so far); the load goes on") from None

    def _start_load(self, name: str) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        future.add_done_callback(_consume)
        self._loading[name] = future

        async def load() -> None:
            began = time.perf_counter()
            try:
                await self._make_room(name)
                await loop.run_in_executor(self._loads, self.repository.load_again, name)
            except BaseException as e:
                future.set_exception(e if isinstance(e, PeregrineError) else Unavailable(
                    f"model '{name}' failed to load on demand: {e}"))
            else:
                seconds = time.perf_counter() - began
                cold = self.cold.setdefault(name, ColdStarts())
                cold.loads += 1
                cold.load_seconds += seconds
                cold.last_load_seconds = seconds
                self._last_used[name] = time.monotonic()
                log.info("model '%s' loaded on demand in %.2f s", name, seconds)
                future.set_result(None)
            finally:
                del self._loading[name]

        self._spawn(load())
        return future

    # -- memory budget ------------------------------------------------------------------------------------
    def footprint(self, name: str) -> int:
        """Estimated bytes a model holds when loaded: its newest version's model file times its instances."""
        config = self.repository.config_of(name)
        if config is None:
            try:
                from ..config.files import read_model_config

                config = read_model_config(self.repository.root / name).config
            except PeregrineError:
                return 0
        model_dir = self.repository.root / name
        versions = version_numbers(model_dir) if model_dir.is_dir() else []
        if not versions:
            return 0
        path = model_dir / str(max(versions)) / config.default_model_filename
        try:
            size = path.stat().st_size
        except OSError:
            return 0
        return size * config.instance_group.count

    def used_bytes(self) -> int:
        return sum(self.footprint(n) for n in {m.name for m in self.repository.ready_models()})

    async def _make_room(self, name: str) -> None:
        if not self.budget_bytes:
            return
        need = self.footprint(name)
        loop = asyncio.get_running_loop()
        while self.used_bytes() + need > self.budget_bytes:
            idle = [m for m in {m.name for m in self.repository.ready_models()}
                    if m != name and not self._in_flight.get(m) and m not in self._loading]
            if not idle:
                raise ResourceExhausted(
                    f"model '{name}' needs about {need / 2**20:.0f} MiB and the models in use hold "
                    f"{self.used_bytes() / 2**20:.0f} MiB of the {self.budget_bytes / 2**20:.0f} MiB budget "
                    "(--model-memory-budget-mb); none is idle to unload")
            victim = min(idle, key=lambda m: self._last_used.get(m, 0.0))
            await loop.run_in_executor(self._loads, self.repository.release, victim,
                                       f"evicted to make room for '{name}' (memory budget, least recently used)")

    # -- background: idle unloading and polling -------------------------------------------------------
    def start(self) -> None:
        """Start the background task (on the event loop)."""
        self._spawn(self._run())

    async def stop(self) -> None:
        self._stopped = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._loads.shutdown(wait=False, cancel_futures=True)

    def _spawn(self, coroutine: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _run(self) -> None:
        next_poll = time.monotonic() + self.poll_s if self.poll_s else None
        if self.poll_s:
            self._signatures = {n: signature(self.repository.root / n) for n in self.repository.available()}
        while not self._stopped:
            await asyncio.sleep(TICK_S)
            try:
                await self._unload_idle()
                if next_poll is not None and time.monotonic() >= next_poll:
                    await self._poll()
                    next_poll = time.monotonic() + self.poll_s
            except Exception:  # a lifecycle hiccup must not stop the lifecycle
                log.exception("model lifecycle step failed")

    async def _unload_idle(self) -> None:
        now = time.monotonic()
        loop = asyncio.get_running_loop()
        for name in sorted({m.name for m in self.repository.ready_models()}):
            config = self.repository.config_of(name)
            if config is None or not config.idle_unload_s or self._in_flight.get(name) or name in self._loading:
                continue
            last = self._last_used.setdefault(name, now)
            if now - last >= config.idle_unload_s:
                await loop.run_in_executor(self._loads, self.repository.release, name,
                                           f"unloaded after {config.idle_unload_s:g} s without a request; loads "
                                           "again on the next one")

    async def _poll(self) -> None:
        """Triton's poll mode: load new models, reload changed ones, unload removed ones."""
        loop = asyncio.get_running_loop()
        now = {n: signature(self.repository.root / n) for n in self.repository.available()}
        for name, sig in now.items():
            old = self._signatures.get(name)
            if old == sig:
                continue
            self._signatures[name] = sig
            kind = "new" if old is None else "changed"
            if self.repository.comes_on_demand(name) and kind == "changed":
                continue  # not loaded: its next load reads the new files
            log.info("repository poll: %s model '%s', loading", kind, name)
            with contextlib.suppress(PeregrineError):  # recorded as UNAVAILABLE with its reason
                await loop.run_in_executor(self._loads, self._poll_load, name)
        for name in set(self._signatures) - set(now):
            del self._signatures[name]
            log.info("repository poll: model '%s' removed, unloading", name)
            with contextlib.suppress(PeregrineError):
                await loop.run_in_executor(self._loads, self.repository.unload, name)

    def _poll_load(self, name: str) -> None:
        if self.repository.config_of(name) is None and self.repository.mark_on_demand(name):
            return
        with contextlib.suppress(NotFound):  # removed since the scan
            self.repository.load(name)


def signature(model_dir: Path) -> tuple[Any, ...]:
    """What poll mode compares: every file of a model directory (two levels: config files, version
    directories and their files) with its size and modification time."""
    entries = []
    try:
        for p in sorted(model_dir.iterdir()):
            if p.is_file():
                st = p.stat()
                entries.append((p.name, st.st_size, st.st_mtime_ns))
            elif p.is_dir():
                for q in sorted(p.iterdir()):
                    if q.is_file():
                        st = q.stat()
                        entries.append((f"{p.name}/{q.name}", st.st_size, st.st_mtime_ns))
    except OSError:
        pass
    return tuple(entries)


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
