"""The model repository: a directory per model, versions as numbered subdirectories.

Loading and unloading are blocking (ONNX Runtime sessions open in the calling thread) and serialised
per model. A model that fails to load is recorded as UNAVAILABLE with its reason; it never takes the
server down. A reload swaps the new versions in before the old ones drain and stop.

Names and versions come from clients: a model name is one directory name (see :func:`model_name_problem`)
and a version is ASCII decimal digits (:func:`parse_version`), checked before the file system is touched.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.files import CONFIG_FILES, read_model_config
from ..config.model import ModelConfig
from ..config.override import apply_override
from ..config.triton import TRITON_CONFIG_FILENAME
from ..core.errors import InvalidArgument, ModelLoadError, NotFound, NotReady, PeregrineError, clipped
from ..models.base import ModelVersion
from ..models.registry import load_version
from ..scheduling.loop import EventLoopThread
from .model_files import ModelFiles

log = logging.getLogger(__name__)

MAX_NAME_BYTES = 255  # a model name is one directory name: NAME_MAX on Linux
_VERSION = re.compile(r"[0-9]{1,19}")  # ASCII digits only (int() takes "0_1", " 1 " and other scripts' digits)
_INT64_MAX = (1 << 63) - 1


def model_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a model directory, or None when it can: not empty, at most
    :data:`MAX_NAME_BYTES` bytes of UTF-8, no '/', '\\', '..', NUL or other control characters, not
    starting with '.' (hidden directories are not models)."""
    if not name:
        return "expected a model name, got an empty string"
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > MAX_NAME_BYTES:
        return f"expected at most {MAX_NAME_BYTES} bytes of UTF-8, got {size}"
    if "/" in name or "\\" in name or ".." in name or name.startswith("."):
        return "a model name is one directory name: no '/', '\\' or '..', and not starting with '.'"
    if any(ord(c) < 0x20 or c == "\x7f" for c in name):
        return "a model name holds no NUL or other control characters"
    return None


def parse_version(text: str) -> int | None:
    """A model version from its text (a request's ``model_version``, a version directory's name): ASCII
    decimal digits of an int64, else None."""
    if not _VERSION.fullmatch(text):
        return None
    value = int(text)
    return value if value <= _INT64_MAX else None


@dataclass
class ModelState:
    name: str
    state: str = "UNAVAILABLE"  # UNAVAILABLE, LOADING, READY, UNLOADING, UNLOADED (comes back on demand)
    reason: str = ""
    config: ModelConfig | None = None
    versions: dict[int, ModelVersion] | None = None
    wanted: bool = True  # asked to load (at start-up or by a load call) and not unloaded since: counts for readiness
    # What the last load was given, for a load on demand after the server let the model go: the override
    # laid over its configuration, and the directory of the files sent with it (model_files.py), if any.
    override: dict[str, Any] | None = None
    source: Path | None = None


class ModelRepository:
    def __init__(self, root: Path, loop: EventLoopThread,
                 on_change: Callable[[str, bool], None] | None = None, strict_model_config: bool = False) -> None:
        self.root = root
        self.loop = loop
        self.strict_model_config = strict_model_config
        self._on_change = on_change or (lambda name, ready: None)
        self._states: dict[str, ModelState] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.files = ModelFiles()

    # -- discovery ------------------------------------------------------------------------------
    def available(self) -> list[str]:
        """Names of the model directories under the root (those with a config file or a version folder)."""
        return sorted(name for name, problem in self.scan().items() if problem is None)

    def scan(self) -> dict[str, str | None]:
        """Every directory under the root that could be meant as a model (a valid name, not hidden), with
        why it is not a model (:func:`directory_problem`), or None for a model."""
        if not self.root.is_dir():
            return {}
        return {p.name: directory_problem(p) for p in sorted(self.root.iterdir())
                if model_name_problem(p.name) is None and p.is_dir()}

    def report_skipped(self) -> dict[str, str]:
        """Log, once each, the directories that are not served and why (WARNING); returns them."""
        skipped = {name: problem for name, problem in self.scan().items() if problem is not None}
        for name, problem in skipped.items():
            log.warning("directory '%s' in the model repository is not served: %s", name, problem)
        return skipped

    def index(self) -> list[tuple[str, str, str, str]]:
        """(name, version, state, reason) for every model on disk or loaded, and for every directory that is
        not a model (UNAVAILABLE, with why)."""
        rows = []
        scanned = self.scan()
        for name in sorted(set(scanned) | set(self._states)):
            st = self._states.get(name)
            if st is None:
                rows.append((name, "", "UNAVAILABLE", scanned.get(name) or "not loaded"))
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
            if st is None and (model_name_problem(name) is not None or name not in self.available()):
                # Triton's words first (its clients match on them), then Peregrine's detail.
                raise NotFound(f"Request for unknown model: '{clipped(name)}' is not found")
            # None of its versions is ready (loading, failed, unloaded, not loaded): Triton's NOT_FOUND, in its
            # words, then why. (A version named but not ready is NOT_FOUND below, as ready ones are all listed.)
            raise NotReady(f"Request for unknown model: '{clipped(name)}' has no available versions (model is "
                           f"{st.state.lower() if st else 'not loaded'}{': ' + st.reason if st and st.reason else ''})")
        versions = st.versions or {}
        if not version:
            return versions[max(versions)]
        v = parse_version(version)
        if v is None:  # Triton's INVALID_ARG: a version string it cannot parse is the request's fault
            raise InvalidArgument(f"failed to get model version from specified version string '{clipped(version)}' "
                                  "(a version is decimal digits, such as '1')")
        if v not in versions:
            raise NotFound(f"model '{name}' has no ready version {v}; ready: {sorted(versions)}")
        return versions[v]

    def newest_ready(self, name: str) -> ModelVersion | None:
        """The newest ready version of ``name``, or None (unknown, loading, unloaded): never raises."""
        st = self._states.get(name)
        versions = st.versions if st is not None else None  # read once: a reload swaps the dict
        return versions[max(versions)] if versions else None

    def ready_models(self) -> list[ModelVersion]:
        return [m for st in list(self._states.values()) if st.versions for m in st.versions.values()]

    # -- load / unload ---------------------------------------------------------------------------
    def _lock(self, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(name, threading.Lock())

    def load(self, name: str, override: dict[str, Any] | None = None) -> None:
        """(Re)load a model from the repository, with ``override`` (Peregrine config keys, see
        config.override) laid over its config.toml for this load. Raises NotFound, InvalidArgument or
        ModelLoadError; the server keeps serving."""
        self._load(name, override, True, None)

    def load_files(self, name: str, files: dict[tuple[str, ...], bytes], config_text: str) -> None:
        """(Re)load a model from files sent with the load (model_files.py; ``files`` checked by
        :func:`~.model_files.check_files`) and ``config_text``, its config.pbtxt, instead of the repository's
        directory: until the model is unloaded or loaded from the repository again."""
        problem = model_name_problem(name)
        if problem is not None:
            raise InvalidArgument(f"model_name '{clipped(name)}': {problem}")
        self._load(name, None, True, self.files.write(name, files, config_text, TRITON_CONFIG_FILENAME))

    def load_again(self, name: str) -> None:
        """A load the server chose (on demand), as the model was last loaded (from the repository or from
        files, with the same override); readiness does not wait for it."""
        st = self._states.get(name)
        self._load(name, st.override if st else None, False, st.source if st else None)

    def _load(self, name: str, override: dict[str, Any] | None, wanted: bool, source: Path | None) -> None:
        problem = model_name_problem(name)
        if problem is not None:
            raise InvalidArgument(f"model_name '{clipped(name)}': {problem}")
        model_dir = source or self.root / name
        if not model_dir.is_dir():
            raise NotFound(f"no model directory '{name}' in the repository")
        try:
            self._load_locked(name, override, wanted, source, model_dir)
        except BaseException:
            st = self._states.get(name)
            if source is not None and (st is None or st.source != source):
                self.files.discard(source)
            raise

    def _load_locked(self, name: str, override: dict[str, Any] | None, wanted: bool, source: Path | None,
                     model_dir: Path) -> None:
        with self._lock(name):
            st = self._states.setdefault(name, ModelState(name))
            st.wanted = wanted or st.wanted
            previous = dict(st.versions or {})
            st.state = "LOADING" if not previous else st.state
            try:
                file = read_model_config(model_dir, self.strict_model_config)
                config = file.config
                if config.name and config.name != name:
                    raise ModelLoadError(
                        f"{name}/{file.filename}: name is '{config.name}' but the directory is '{name}'"
                    )
                if file.unmapped:
                    log.warning("model '%s': %s/%s sets field(s) Peregrine has no equivalent for, not applied "
                                "(--strict-model-config makes this an error): %s", name, name, file.filename,
                                ", ".join(file.unmapped))
                if override:
                    config = apply_override(config, override, f"{name}: parameters.config")
                files_dir = self._files_dir(name, model_dir, config)
                available = list(version_numbers(files_dir))
                if not available:
                    raise ModelLoadError(f"{files_dir.name}: {_no_versions(files_dir)}")
                for note in ignored_contents(model_dir):
                    log.info("model '%s': %s", name, note)
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
            if st.source != source:
                self.files.discard(st.source)
            st.override, st.source = override, source
            first = next(iter(loaded.values())).describe()
            log.info("model '%s' ready%s: versions %s on %s, max_batch_size %d, %s", name,
                     f" ({file.filename})" if file.filename else "", sorted(loaded), ", ".join(first.providers),
                     first.max_batch_size, "dynamic batching" if config.dynamic_batching is not None
                     and first.max_batch_size else "no dynamic batching")
            self._on_change(name, True)
        for m in previous.values():
            self.loop.run(m.stop())

    def _files_dir(self, name: str, model_dir: Path, config: ModelConfig) -> Path:
        """Where a model's version directories live: its own directory, or for a detection pipeline
        that names a detector, the detector's."""
        detector = config.detection.detector if config.detection else None
        if not detector:
            return model_dir
        if model_name_problem(detector) is not None or not (self.root / detector).is_dir():
            raise ModelLoadError(f"{name}: detection.detector '{clipped(detector)}' is not a "
                                 "model directory in the repository")
        files_dir = self.root / detector
        return files_dir

    def unload(self, name: str) -> None:
        """Stop serving a model; queued and running requests finish first."""
        problem = model_name_problem(name)
        if problem is not None:
            raise InvalidArgument(f"model_name '{clipped(name)}': {problem}")
        if name not in self._states and name not in self.available():
            # Before taking the model's lock: a lock is kept per name, so only for names that exist.
            raise NotFound(f"unknown model '{name}'")
        with self._lock(name):
            st = self._states.get(name)
            if st is None:
                return
            if st.versions:
                versions = st.versions
                st.state = "UNLOADING"
                self._on_change(name, False)
                for m in versions.values():
                    self.loop.run(m.stop())
                st.versions, st.state, st.reason = None, "UNAVAILABLE", "unloaded"
            st.wanted = False  # no longer asked for: readiness stops waiting for it
            # and a load on demand no longer brings it back as it was, nor from its files
            self.files.discard(st.source)
            st.override = st.source = None

    def release(self, name: str, reason: str) -> bool:
        """Unload a model the server chose to let go (idle, or evicted for memory): it is listed as UNLOADED
        with ``reason`` and loads again on its next request. False when it was not loaded."""
        with self._lock(name):
            st = self._states.get(name)
            if st is None or not st.versions:
                return False
            versions = st.versions
            st.state = "UNLOADING"
            self._on_change(name, False)
            for m in versions.values():
                self.loop.run(m.stop())
            st.versions, st.state, st.reason, st.wanted = None, "UNLOADED", reason, False
            log.info("model '%s' unloaded: %s", name, reason)
            return True

    def comes_on_demand(self, name: str) -> bool:
        """Whether a request for ``name`` may load it: it was released (UNLOADED), or it is configured
        ``load = "on_demand"`` and not loaded yet."""
        st = self._states.get(name)
        if st is not None:
            return st.state == "UNLOADED"
        return False

    def config_of(self, name: str) -> ModelConfig | None:
        """The configuration of a loaded model (None when it is not loaded)."""
        st = self._states.get(name)
        return st.config if st is not None and st.versions else None

    def mark_on_demand(self, name: str) -> bool:
        """At start-up: a model configured ``load = "on_demand"`` is listed as UNLOADED instead of loaded.
        True when ``name`` is such a model."""
        try:
            config = read_model_config(self.root / name, self.strict_model_config).config
        except PeregrineError:
            return False  # its load reports the problem
        if config.load != "on_demand":
            return False
        self._states[name] = ModelState(name, state="UNLOADED", reason='loads on its first request '
                                        '(load = "on_demand")', wanted=False)
        return True

    def load_all(self, names: list[str] | None = None) -> list[str]:
        """Load every model (or ``names``); returns the names that failed. A failure is recorded as
        UNAVAILABLE with its reason (also for a name with no directory) and the others still load.
        Directories that are not models are reported, once, at start-up (:meth:`report_skipped`)."""
        self.report_skipped()
        failed = []
        on_demand = {n for n in self.available() if (names is None or n not in names) and self.mark_on_demand(n)}
        for name in names if names is not None else self.available():
            if name in on_demand:
                continue  # listed as UNLOADED, loaded by its first request
            try:
                self.load(name)
            except PeregrineError as e:
                failed.append(name)
                if name not in self._states and model_name_problem(name) is None:
                    self._states[name] = ModelState(name, reason=e.message)
        return failed

    # -- what the server says of itself ---------------------------------------------------------
    def knows(self, name: str) -> bool:
        """Whether ``name`` is a model the server has loaded or tried to (a name fit for a metrics label)."""
        return name in self._states

    def unready(self) -> list[str]:
        """Models asked to load (and not unloaded since) that are not ready: what strict readiness waits for."""
        return sorted(st.name for st in list(self._states.values()) if st.wanted and st.state != "READY")

    def unload_all(self) -> None:
        for name in list(self._states):
            self.unload(name)
        self.files.discard_all()


def version_numbers(model_dir: Path) -> list[int]:
    """The versions present: subdirectories named by a positive version in its plain form ("1", not "01":
    the directory is found again as ``str(version)``). Version 0 is not a version, as in Triton."""
    found = []
    for p in model_dir.iterdir():
        v = parse_version(p.name)
        if v is not None and v > 0 and str(v) == p.name and p.is_dir():
            found.append(v)
    return found


def _no_versions(model_dir: Path) -> str:
    """Why a model directory has no versions, for a directory where :func:`_versions` finds none."""
    if (model_dir / "0").is_dir():
        return (f"only version directory 0, which is ignored (versions start at 1, as in Triton): rename it "
                f"{model_dir.name}/1")
    return f"no version directory (expected e.g. {model_dir.name}/1/model.onnx)"


def directory_problem(model_dir: Path) -> str | None:
    """Why a directory of the repository is not a model, or None when it is one: a model has a
    configuration file (config.toml or config.pbtxt) or at least one version directory (1, 2, ...)."""
    try:
        if any((model_dir / name).is_file() for name in CONFIG_FILES) or version_numbers(model_dir):
            return None
        others = sorted(p.name for p in model_dir.iterdir()
                        if p.is_file() and p.name.startswith("config.") and p.name not in CONFIG_FILES)
    except OSError as e:
        return f"cannot be read: {e.strerror or e}"
    problem = _no_versions(model_dir)
    if others:
        problem += (f"; {', '.join(others)} is not a model configuration Peregrine reads (expected "
                    f"{' or '.join(CONFIG_FILES)})")
    return problem


def ignored_contents(model_dir: Path) -> list[str]:
    """What a model directory holds that is not read: version 0, configuration files of other names.
    (Model files missing from a version directory are load errors, said when the version loads.)"""
    notes = []
    if (model_dir / "0").is_dir():
        notes.append("version directory 0 is ignored (versions start at 1, as in Triton)")
    others = sorted(p.name for p in model_dir.iterdir()
                    if p.is_file() and p.name.startswith("config.") and p.name not in CONFIG_FILES)
    if others:
        notes.append(f"{', '.join(others)} is not read (Peregrine reads {' or '.join(CONFIG_FILES)})")
    return notes
