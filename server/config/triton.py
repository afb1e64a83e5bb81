"""Triton's model configuration, ``config.pbtxt``, mapped onto Peregrine's :class:`~.model.ModelConfig`.

The file is protobuf text of Triton's ``inference.ModelConfig`` (the message Peregrine compiles for its
ModelConfig RPC), read with protobuf's own text-format parser. Every field is either mapped to a Peregrine
key (the table in docs/MODEL_CONFIG.md, "Triton's config.pbtxt"), or, where Peregrine has no equivalent,
reported by name: :func:`parse_triton_config` returns those names so that the repository logs them in one
WARNING line, or refuses the model under ``--strict-model-config``. Fields that Peregrine's copy of the
schema leaves out (rate limiters, model operations, sequence-batching controls, ...) are found by walking the
text's tokens against the schema, and are reported the same way.

Errors are :class:`~..core.errors.ModelLoadError` naming the file and the field, with the parser's
``line:column`` for text that is not a model configuration.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from google.protobuf import text_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from peregrine.proto import model_config_pb2 as mc
from pydantic import ValidationError

from ..core.errors import ModelLoadError, clipped
from .model import MAX_CONFIG_BYTES, ModelConfig, _format_validation

TRITON_CONFIG_FILENAME = "config.pbtxt"

PLATFORMS = ("onnxruntime_onnx",)
BACKENDS = ("onnxruntime",)
_KINDS = {mc.ModelInstanceGroup.KIND_AUTO: "auto", mc.ModelInstanceGroup.KIND_GPU: "cuda",
          mc.ModelInstanceGroup.KIND_CPU: "cpu"}
_FORMATS = {mc.ModelInput.FORMAT_NONE: "none", mc.ModelInput.FORMAT_NHWC: "nhwc", mc.ModelInput.FORMAT_NCHW: "nchw"}
# Triton's onnxruntime backend: optimization { graph { level } }; -1 basic, 1 extended, 0 (unset) all.
_GRAPH_LEVELS = {-1: "basic", 0: "all", 1: "extended"}
# Execution accelerators of Triton's onnxruntime backend, as ONNX Runtime providers ("cuda" is already the
# default on a GPU).
_ACCELERATORS = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider",
                 "openvino": "OpenVINOExecutionProvider"}
# Parameters of Triton's onnxruntime backend that are ONNX Runtime session options.
_ORT_PARAMETERS = {"intra_op_thread_count": "intra_op_num_threads", "inter_op_thread_count": "inter_op_num_threads"}

_MAX_BATCH_SIZE = re.compile(r"^\s*max_batch_size\s*:", re.MULTILINE)
# Fields (dotted paths, repeated fields without an index) that are mapped: a field set under one of these
# is not reported. Everything else that is set is reported by name.
MAPPED = frozenset({
    "name", "platform", "backend", "max_batch_size", "version_policy", "default_model_filename", "parameters",
    "input.name", "input.data_type", "input.dims", "input.reshape", "input.format",
    "output.name", "output.data_type", "output.dims", "output.reshape",
    "dynamic_batching", "instance_group.name", "instance_group.count", "instance_group.kind", "instance_group.gpus",
    "optimization.graph", "optimization.execution_accelerators", "response_cache", "model_warmup",
})
# Peregrine keys whose name differs from Triton's, for error messages (which name Triton's).
_TRITON_NAMES = {
    "max_queue_delay_us": "max_queue_delay_microseconds", "preferred_batch_sizes": "preferred_batch_size",
    "default_timeout_us": "default_timeout_microseconds", "device": "kind", "warmup": "model_warmup",
}


@dataclass
class TritonConfig:
    """A parsed ``config.pbtxt``: the Peregrine configuration it maps to, and the fields set in it that
    have no Peregrine equivalent (dotted names, in the order they came)."""

    config: ModelConfig
    unmapped: list[str]


def parse_triton_config(text: str, source: str = TRITON_CONFIG_FILENAME) -> TritonConfig:
    """Parse a ``config.pbtxt`` and map it (see the module docstring). Raises :class:`ModelLoadError`,
    and only that, whatever ``text`` holds."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ModelLoadError(f"{source}: expected at most {MAX_CONFIG_BYTES} bytes, got {len(text)} characters")
    msg = mc.ModelConfig()
    known_text, unknown = strip_unknown_fields(text, mc.ModelConfig.DESCRIPTOR)
    unmapped = unknown or []
    try:
        # Text the walk could not follow is not valid: the parser, skipping unknown fields, says where.
        text_format.Parse(known_text, msg, allow_unknown_field=unknown is None)
    except text_format.ParseError as e:
        raise ModelLoadError(f"{source}: not a model configuration in protobuf text format: "
                             f"{clipped(str(e), 1024)}") from None
    except RecursionError:
        raise ModelLoadError(f"{source}: not a model configuration: messages nested too deep") from None
    unmapped += [p for p in _set_paths(msg, "") if not _mapped(p) and p not in unmapped]
    raw, more = _to_peregrine(msg, source, explicit_batch=_MAX_BATCH_SIZE.search(text) is not None)
    unmapped += [p for p in more if p not in unmapped]
    try:
        config = ModelConfig.model_validate(raw)
    except ValidationError as e:
        text_ = _format_validation(e)
        for ours, theirs in _TRITON_NAMES.items():
            text_ = text_.replace(f".{ours}:", f".{theirs}:").replace(f"{ours}:", f"{theirs}:")
        raise ModelLoadError(f"{source}: {text_}") from None
    return TritonConfig(config, unmapped)


# -- what the text sets ---------------------------------------------------------------------------
def strip_unknown_fields(text: str, descriptor: Descriptor) -> tuple[str, list[str] | None]:
    """``text`` with the fields that ``descriptor``'s schema lacks blanked out (spaces, so that the parser's
    ``line:column`` still point into the file as written), and their dotted names; below an unknown field
    nothing more is named. Text that is not valid protobuf text is returned as it is, for the parser to
    say why."""
    walker = _Walker(text.split("\n"))
    try:
        walker.fields(descriptor, "", None, blank=True)
    except (text_format.ParseError, RecursionError, IndexError):
        return text, None
    lines = walker.lines
    for (l0, c0), (l1, c1) in reversed(walker.spans):
        for line in range(l0, l1 + 1):
            a = c0 if line == l0 else 0
            b = c1 if line == l1 else len(lines[line])
            lines[line] = lines[line][:a] + " " * (b - a) + lines[line][b:]
    return "\n".join(lines), walker.found


class _Walker:
    """Walks protobuf text with protobuf's tokenizer, beside a schema, noting the fields it lacks."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.tok = text_format.Tokenizer(list(lines))
        self.found: list[str] = []
        self.spans: list[tuple[tuple[int, int], tuple[int, int]]] = []

    def position(self) -> tuple[int, int]:
        """Where the current token starts (0-based line and column; the end of the text at its end)."""
        if self.tok.AtEnd():
            return len(self.lines) - 1, len(self.lines[-1])
        # The tokenizer keeps its position privately; its public API gives it only inside errors.
        return self.tok._line, self.tok._column

    def fields(self, desc: Descriptor | None, prefix: str, end: str | None, blank: bool) -> None:
        tok = self.tok
        while not (tok.AtEnd() if end is None else tok.TryConsume(end)):
            if tok.AtEnd() or tok.token == "[":  # cut short, or an extension / Any: left to the parser
                raise text_format.ParseError("not walked")
            start = self.position()
            name = tok.ConsumeIdentifierOrNumber()
            field = desc.fields_by_name.get(name) if desc is not None else None
            path = f"{prefix}{name}"
            unknown = desc is not None and field is None
            if unknown and path not in self.found:
                self.found.append(path)
            sub = field.message_type if field is not None and field.type == FieldDescriptor.TYPE_MESSAGE else None
            tok.TryConsume(":")
            if tok.TryConsume("["):
                while not tok.TryConsume("]"):
                    self.value(sub, f"{path}.", blank and not unknown)
                    tok.TryConsume(",")
            else:
                self.value(sub, f"{path}.", blank and not unknown)
            if not tok.TryConsume(","):
                tok.TryConsume(";")
            if unknown and blank:
                self.spans.append((start, self.position()))

    def value(self, sub: Descriptor | None, prefix: str, blank: bool) -> None:
        tok = self.tok
        for opening, closing in (("{", "}"), ("<", ">")):
            if tok.TryConsume(opening):
                self.fields(sub, prefix, closing, blank and sub is not None)
                return
        if tok.AtEnd():
            raise text_format.ParseError("not walked")
        if tok.token[:1] in ("'", '"'):
            while tok.token[:1] in ("'", '"'):  # adjacent strings are one value
                tok.ConsumeString()
        else:
            tok.NextToken()


def _set_paths(msg: Any, prefix: str) -> Iterator[str]:
    """Dotted names of the fields set in ``msg`` (proto3: not at their default), message fields by their
    fields; a map, or a message set with nothing in it, by its own name."""
    for fd, value in msg.ListFields():
        path = f"{prefix}{fd.name}"
        if fd.type != FieldDescriptor.TYPE_MESSAGE or fd.message_type.GetOptions().map_entry:
            yield path
            continue
        items = value if fd.is_repeated else [value]
        inner = [p for item in items for p in _set_paths(item, f"{path}.")]
        yield from dict.fromkeys(inner) if inner else [path]


def _mapped(path: str) -> bool:
    parts = path.split(".")
    return any(".".join(parts[:i]) in MAPPED for i in range(1, len(parts) + 1))


# -- the mapping ----------------------------------------------------------------------------------
def _data_type(value: int) -> str | None:
    if value == mc.TYPE_INVALID:
        return None
    return mc.DataType.Name(value).removeprefix("TYPE_").replace("STRING", "BYTES")


def _tensor(t: Any, kind: str, source: str) -> dict[str, Any]:
    if not t.name:
        raise ModelLoadError(f"{source}: {kind}: expected a name for every {kind}, got one without")
    out: dict[str, Any] = {"name": t.name}
    dt = _data_type(t.data_type)
    if dt is not None:
        out["data_type"] = dt
    if t.dims:
        out["dims"] = list(t.dims)
    if t.HasField("reshape"):
        out["reshape"] = list(t.reshape.shape)
    if kind == "input" and t.format != mc.ModelInput.FORMAT_NONE:
        out["format"] = _FORMATS[t.format]
    return out


def _queue_policy(p: Any) -> dict[str, Any]:
    return {
        "timeout_action": "delay" if p.timeout_action == mc.ModelQueuePolicy.DELAY else "reject",
        "default_timeout_us": p.default_timeout_microseconds,
        "allow_timeout_override": p.allow_timeout_override,
        "max_queue_size": p.max_queue_size,
    }


def _to_peregrine(msg: Any, source: str, explicit_batch: bool) -> tuple[dict[str, Any], list[str]]:
    """Peregrine keys from a parsed ModelConfig, and names of what was set but could not be mapped beyond
    the plain field names (extra instance groups, unknown accelerators)."""
    unmapped: list[str] = []
    if (msg.platform and msg.platform not in PLATFORMS) or (msg.backend and msg.backend not in BACKENDS):
        field, got = ("platform", msg.platform) if msg.platform and msg.platform not in PLATFORMS else \
            ("backend", msg.backend)
        raise ModelLoadError(f"{source}: {field}: expected platform 'onnxruntime_onnx' or backend 'onnxruntime' "
                             f"(Peregrine serves ONNX models with ONNX Runtime), got '{clipped(got)}'")
    raw: dict[str, Any] = {"platform": "onnxruntime_onnx"}
    if msg.name:
        raw["name"] = msg.name
    if msg.default_model_filename:
        raw["default_model_filename"] = msg.default_model_filename
    # max_batch_size as written; left out of a file that names no tensors, it is found from the model as for
    # config.toml (Triton's auto-complete does the same from the model's shapes).
    if explicit_batch or msg.max_batch_size or len(msg.input) or len(msg.output):
        raw["max_batch_size"] = msg.max_batch_size
    if msg.max_batch_size < 0:
        raise ModelLoadError(f"{source}: max_batch_size: expected 0 (no batching) or more, got {msg.max_batch_size}")

    which = msg.version_policy.WhichOneof("policy_choice")
    if which == "all":
        raw["version_policy"] = "all"
    elif which == "latest":
        raw["version_policy"] = {"latest": msg.version_policy.latest.num_versions or 1}
    elif which == "specific":
        raw["version_policy"] = {"specific": list(msg.version_policy.specific.versions)}

    raw["input"] = [_tensor(t, "input", source) for t in msg.input]
    raw["output"] = [_tensor(t, "output", source) for t in msg.output]

    if msg.HasField("dynamic_batching"):
        db = msg.dynamic_batching
        raw["dynamic_batching"] = {
            "preferred_batch_sizes": list(db.preferred_batch_size),
            "max_queue_delay_us": db.max_queue_delay_microseconds,
            "preserve_ordering": db.preserve_ordering,
            "priority_levels": db.priority_levels,
            "default_priority_level": db.default_priority_level,
            "default_queue_policy": _queue_policy(db.default_queue_policy),
            "priority_queue_policy": {level: _queue_policy(p) for level, p in db.priority_queue_policy.items()},
        }

    groups = list(msg.instance_group)
    if groups:
        g = groups[0]
        if g.kind not in _KINDS:
            raise ModelLoadError(f"{source}: instance_group[0].kind: expected KIND_AUTO, KIND_GPU or KIND_CPU "
                                 f"(Peregrine runs ONNX Runtime sessions), got "
                                 f"{mc.ModelInstanceGroup.Kind.Name(g.kind)}")
        group: dict[str, Any] = {"count": g.count or 1, "device": _KINDS[g.kind]}
        if g.gpus:
            group["gpus"] = list(g.gpus)
        raw["instance_group"] = group
        if len(groups) > 1:
            unmapped.append(f"instance_group[1:] (Peregrine runs one group per model; {len(groups) - 1} more "
                            "given, the first is used)")

    ort: dict[str, Any] = {}
    opt = msg.optimization
    if opt.HasField("graph"):
        level = opt.graph.level
        if level not in _GRAPH_LEVELS:
            raise ModelLoadError(f"{source}: optimization.graph.level: expected -1 (basic), 0 (all) or 1 "
                                 f"(extended), as Triton's onnxruntime backend, got {level}")
        ort["graph_optimization_level"] = _GRAPH_LEVELS[level]
    accelerators = opt.execution_accelerators
    providers: list[str] = []
    for kind, accs in (("gpu", accelerators.gpu_execution_accelerator),
                       ("cpu", accelerators.cpu_execution_accelerator)):
        for a in accs:
            provider = _ACCELERATORS.get(a.name)
            if provider is None:
                unmapped.append(f"optimization.execution_accelerators.{kind}_execution_accelerator "
                                f"'{clipped(a.name)}'")
                continue
            if provider not in providers:
                providers.append(provider)
            if a.parameters:
                unmapped.append(f"optimization.execution_accelerators.{kind}_execution_accelerator "
                                f"'{clipped(a.name)}'.parameters")
    if providers:
        if "CUDAExecutionProvider" not in providers and any(p != "OpenVINOExecutionProvider" for p in providers):
            providers.append("CUDAExecutionProvider")
        ort["execution_providers"] = [*providers, "CPUExecutionProvider"]

    params = {k: v.string_value for k, v in msg.parameters.items()}
    for theirs, ours in _ORT_PARAMETERS.items():
        if theirs in params:
            try:
                ort[ours] = int(params[theirs])
            except ValueError:
                raise ModelLoadError(f"{source}: parameters.{theirs}: expected an integer, "
                                     f"got {clipped(repr(params[theirs]))}") from None
    if ort:
        raw["onnxruntime"] = ort
    if params:
        raw["parameters"] = params
    # Triton has no warm-up unless model_warmup asks for one: neither has a config.pbtxt model here.
    raw["warmup"] = len(msg.model_warmup) > 0
    raw["response_cache"] = msg.response_cache.enable
    return raw, unmapped

