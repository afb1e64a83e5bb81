"""The model repository: a directory per model, versions as numbered subdirectories.

Loading and unloading are blocking (ONNX Runtime sessions open in the calling thread) and serialised
per model. A model that fails to load is recorded as UNAVAILABLE with its reason; it never takes the
server down. A reload swaps the new versions in before the old ones drain and stop.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.model import CONFIG_FILENAME, ModelConfig, load_model_config
from ..config.override import apply_override
from ..core.errors import ModelLoadError, NotFound, PeregrineError, Unavailable
from ..models.base import ModelVersion
from ..models.registry import load_version
from ..scheduling.loop import EventLoopThread

log = logging.getLogger(__name__)


@dataclass
class ModelState:
    name: str
    state: str = "UNAVAILABLE"  # UNAVAILABLE, LOADING, READY, UNLOADING
    reason: str = ""
    config: ModelConfig | None = None
    versions: dict[int, ModelVersion] | None = None


class ModelRepository:
    def __init__(self, root: Path, loop: EventLoopThread,
                 on_change: Callable[[str, bool], None] | None = None) -> None:
        self.root = root
        self.loop = loop
        self._on_change = on_change or (lambda name, ready: None)
        self._states: dict[str, ModelState] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    # -- discovery ------------------------------------------------------------------------------
    def available(self) -> list[str]:
        """Names of the model directories under the root (those with a config or a version folder)."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir()
            if p.is_dir() and not p.name.startswith(".")
            and ((p / CONFIG_FILENAME).exists() or any(_versions(p)))
        )

    def index(self) -> list[tuple[str, str, str, str]]:
        """(name, version, state, reason) for every model on disk or loaded."""
        rows = []
        for name in sorted(set(self.available()) | set(self._states)):
            st = self._states.get(name)
            if st is None:
                rows.append((name, "", "UNAVAILABLE", "not loaded"))
            elif st.versions:
                rows.extend((name, str(v), st.state, st.reason) for v in sorted(st.versions))
            else:
                rows.append((name, "", st.state, st.reason))
        return rows

    # -- lookup --------------------------------------------------------------------------------
    def get(self, name: str, version: str = "") -> ModelVersion:
        """The ready model version (the newest when ``version`` is empty)."""
        st = self._states.get(name)
        if st is None or (st.state != "READY" and not st.versions):
            if st is None and name not in self.available():
                raise NotFound(f"unknown model '{name}'")
            raise Unavailable(f"model '{name}' is not ready ({st.state.lower() if st else 'not loaded'}"
                              f"{': ' + st.reason if st and st.reason else ''})")
        versions = st.versions or {}
        if not version:
            return versions[max(versions)]
        try:
            v = int(version)
        except ValueError:
            raise NotFound(f"model '{name}' has no version '{version}' (versions are integers)") from None
        if v not in versions:
            raise NotFound(f"model '{name}' has no ready version {v}; ready: {sorted(versions)}")
        return versions[v]

    def ready_models(self) -> list[ModelVersion]:
        return [m for st in list(self._states.values()) if st.versions for m in st.versions.values()]

    # -- load / unload ---------------------------------------------------------------------------
    def _lock(self, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(name, threading.Lock())

    def load(self, name: str, override: dict[str, Any] | None = None) -> None:
        """(Re)load a model from disk, with ``override`` (Peregrine config keys, see config.override)
        laid over its config.toml for this load. Raises NotFound, InvalidArgument or ModelLoadError; the
        server keeps serving."""
        model_dir = self.root / name
        if "/" in name or name.startswith(".") or not model_dir.is_dir():
            raise NotFound(f"no model directory '{name}' in the repository")
        with self._lock(name):
            st = self._states.setdefault(name, ModelState(name))
            previous = dict(st.versions or {})
            st.state = "LOADING" if not previous else st.state
            try:
                config = load_model_config(model_dir)
                if config.name and config.name != name:
                    raise ModelLoadError(
                        f"{name}/{CONFIG_FILENAME}: name is '{config.name}' but the directory is '{name}'"
                    )
                if override:
                    config = apply_override(config, override, f"{name}: parameters.config")
                files_dir = self._files_dir(name, model_dir, config)
                available = list(_versions(files_dir))
                if not available:
                    raise ModelLoadError(f"{files_dir.name}: no version directories (expected e.g. "
                                         f"{files_dir.name}/1/model.onnx)")
                wanted = config.select_versions(available)
                if not wanted:
                    raise ModelLoadError(f"{name}: version_policy selects none of the versions {sorted(available)}")
                loaded = {}
                try:
                    for v in wanted:
                        model = load_version(name, v, files_dir / str(v), config)
                        self.loop.run(model.start())
                        loaded[v] = model
                except BaseException:
                    for m in loaded.values():
                        self.loop.run(m.stop())
                    raise
            except PeregrineError as e:
                log.error("model '%s' failed to load: %s", name, e.message)
                if not previous:
                    st.state, st.reason = "UNAVAILABLE", e.message
                raise
            except Exception as e:
                log.exception("model '%s' failed to load", name)
                if not previous:
                    st.state, st.reason = "UNAVAILABLE", str(e)
                raise ModelLoadError(f"model '{name}' failed to load: {e}") from None
            st.config, st.versions, st.state, st.reason = config, loaded, "READY", ""
            log.info("model '%s' ready: versions %s on %s", name, sorted(loaded),
                     ", ".join(next(iter(loaded.values())).describe().providers))
            self._on_change(name, True)
        for m in previous.values():
            self.loop.run(m.stop())

    def _files_dir(self, name: str, model_dir: Path, config: ModelConfig) -> Path:
        """Where a model's version directories live: its own directory, or for a detection pipeline
        that names a detector, the detector's."""
        detector = config.detection.detector if config.detection else None
        if not detector:
            return model_dir
        files_dir = self.root / detector
        if "/" in detector or detector.startswith(".") or not files_dir.is_dir():
            raise ModelLoadError(f"{name}/{CONFIG_FILENAME}: detection.detector '{detector}' is not a model "
                                 "directory in the repository")
        return files_dir

    def unload(self, name: str) -> None:
        """Stop serving a model; queued and running requests finish first."""
        with self._lock(name):
            st = self._states.get(name)
            if st is None or not st.versions:
                if name not in self.available() and st is None:
                    raise NotFound(f"unknown model '{name}'")
                return
            versions = st.versions
            st.state = "UNLOADING"
            self._on_change(name, False)
            for m in versions.values():
                self.loop.run(m.stop())
            st.versions, st.state, st.reason = None, "UNAVAILABLE", "unloaded"

    def load_all(self, names: list[str] | None = None) -> None:
        for name in names if names is not None else self.available():
            # A failure is recorded as UNAVAILABLE with its reason; the others still load.
            with contextlib.suppress(PeregrineError):
                self.load(name)

    def unload_all(self) -> None:
        for name in list(self._states):
            self.unload(name)


def _versions(model_dir: Path) -> list[int]:
    return [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
