"""A load-time configuration override in Triton's form: ``RepositoryModelLoad`` with a ``config``
parameter holding a model configuration as JSON (what ``tritonclient``'s ``load_model(name, config=...)``
sends), applied over the model's ``config.toml`` for that load only.

The keys a Triton user tunes at load time are read and mapped to Peregrine's (docs/MODEL_CONFIG.md):
``max_batch_size``, ``dynamic_batching`` (queue delay, preferred sizes, priorities, queue policies,
ordering), one ``instance_group`` (count, kind, gpus), ``version_policy`` and ``parameters``. Anything
else is refused with INVALID_ARGUMENT naming the key, rather than silently ignored.

The text comes from a client: it is refused (INVALID_ARGUMENT, never another error) when longer than
``MAX_CONFIG_BYTES``, nested deeper than ``MAX_CONFIG_DEPTH``, or holding a number that is not a plain
integer; values past the bounds of :mod:`.model` are refused when the result is validated.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from google.protobuf import json_format, text_format
from peregrine.proto import model_config_pb2 as mc
from pydantic import ValidationError

from ..core.errors import InvalidArgument, clipped
from .model import MAX_CONFIG_BYTES, MAX_CONFIG_DEPTH, ModelConfig, _format_validation, nesting_depth

_KINDS = {"KIND_AUTO": "auto", "KIND_GPU": "cuda", "KIND_CPU": "cpu"}
# Protobuf's JSON writes 64-bit integers as strings: ASCII digits only (int() would also take " 1 ", "0_1"
# and other scripts' digits), and no more than a 64-bit integer has.
_INTEGER = re.compile(r"-?[0-9]+")
_INTEGER_DIGITS = 20  # int64's and uint64's range; a longer number is out of every bound


def _int(value: Any, key: str) -> int:
    """An integer as protobuf's JSON writes one: a number without a fraction, or a string of digits. Its
    range is checked when the configuration is validated (config.model's bounds)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INTEGER.fullmatch(value):
        if len(value.lstrip("-")) > _INTEGER_DIGITS:
            raise InvalidArgument(f"parameters.config.{clipped(key)}: expected an integer of at most "
                                  f"{_INTEGER_DIGITS} digits, got {len(value.lstrip('-'))} digits")
        return int(value)
    raise InvalidArgument(f"parameters.config.{clipped(key)}: expected an integer, got {clipped(repr(value))}")


def _bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgument(f"parameters.config.{clipped(key)}: expected true or false, got {clipped(repr(value))}")
    return value


def _object(value: Any, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidArgument(f"parameters.config.{clipped(key)}: expected an object, got {clipped(repr(value))}")
    return value


def _unknown(key: str, known: dict[str, Any] | set[str]) -> InvalidArgument:
    return InvalidArgument(f"parameters.config.{clipped(key)}: not supported in a load override; supported: "
                           f"{', '.join(sorted(known))}")


def _queue_policy(raw: Any, key: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in _object(raw, key).items():
        if k == "timeout_action":
            if v not in ("REJECT", "DELAY"):
                raise InvalidArgument(f"parameters.config.{key}.timeout_action: expected REJECT or DELAY, "
                                      f"got {clipped(repr(v))}")
            out["timeout_action"] = v.lower()
        elif k == "default_timeout_microseconds":
            out["default_timeout_us"] = _int(v, f"{key}.{k}")
        elif k == "allow_timeout_override":
            out["allow_timeout_override"] = _bool(v, f"{key}.{k}")
        elif k == "max_queue_size":
            out["max_queue_size"] = _int(v, f"{key}.{k}")
        else:
            raise _unknown(f"{key}.{k}", {"timeout_action", "default_timeout_microseconds", "allow_timeout_override",
                                          "max_queue_size"})
    return out


def _dynamic_batching(raw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    key = "dynamic_batching"
    for k, v in _object(raw, key).items():
        if k == "max_queue_delay_microseconds":
            out["max_queue_delay_us"] = _int(v, f"{key}.{k}")
        elif k == "preferred_batch_size":
            if not isinstance(v, list):
                raise InvalidArgument(f"parameters.config.{key}.{k}: expected a list of sizes, got {clipped(repr(v))}")
            out["preferred_batch_sizes"] = [_int(x, f"{key}.{k}") for x in v]
        elif k in ("priority_levels", "default_priority_level"):
            out[k] = _int(v, f"{key}.{k}")
        elif k == "preserve_ordering":
            out[k] = _bool(v, f"{key}.{k}")
        elif k == "default_queue_policy":
            out[k] = _queue_policy(v, f"{key}.{k}")
        elif k == "priority_queue_policy":
            out[k] = {_int(level, f"{key}.{k}"): _queue_policy(p, f"{key}.{k}.{clipped(level)}")
                      for level, p in _object(v, f"{key}.{k}").items()}
        else:
            raise _unknown(f"{key}.{k}", {"max_queue_delay_microseconds", "preferred_batch_size", "priority_levels",
                                          "default_priority_level", "preserve_ordering", "default_queue_policy",
                                          "priority_queue_policy"})
    return out


def _instance_group(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, list) or len(raw) != 1:
        raise InvalidArgument(f"parameters.config.instance_group: expected one group (Peregrine runs one per "
                              f"model), got {clipped(repr(raw))}")
    out: dict[str, Any] = {}
    for k, v in _object(raw[0], "instance_group[0]").items():
        if k == "count":
            out["count"] = _int(v, f"instance_group[0].{k}")
        elif k == "kind":
            if v not in _KINDS:
                raise InvalidArgument(f"parameters.config.instance_group[0].kind: expected one of "
                                      f"{', '.join(_KINDS)}, got {clipped(repr(v))}")
            out["device"] = _KINDS[v]
        elif k == "gpus":
            if not isinstance(v, list):
                raise InvalidArgument(f"parameters.config.instance_group[0].gpus: expected a list, "
                                      f"got {clipped(repr(v))}")
            out["gpus"] = [_int(g, f"instance_group[0].{k}") for g in v]
        elif k != "name":
            raise _unknown(f"instance_group[0].{k}", {"count", "kind", "gpus", "name"})
    return out


def _version_policy(raw: Any) -> Any:
    policy = _object(raw, "version_policy")
    if set(policy) == {"all"}:
        return "all"
    if set(policy) == {"latest"}:
        return {"latest": _int(_object(policy["latest"], "version_policy.latest").get("num_versions", 1),
                               "version_policy.latest.num_versions")}
    if set(policy) == {"specific"}:
        versions = _object(policy["specific"], "version_policy.specific").get("versions", [])
        if not isinstance(versions, list):
            raise InvalidArgument(f"parameters.config.version_policy.specific.versions: expected a list, "
                                  f"got {clipped(repr(versions))}")
        return {"specific": [_int(v, "version_policy.specific.versions") for v in versions]}
    raise InvalidArgument(f"parameters.config.version_policy: expected one of latest, all, specific, "
                          f"got {clipped(repr(policy))}")


def _client_json(text: str) -> Any:
    """A load's ``config`` parameter parsed, within the bounds a client's text is held to (InvalidArgument,
    and only that, whatever ``text`` holds)."""
    if len(text) > MAX_CONFIG_BYTES:
        raise InvalidArgument(f"parameters.config: expected at most {MAX_CONFIG_BYTES} bytes of JSON, "
                              f"got {len(text)} characters")
    try:
        raw = json.loads(text)
    except RecursionError:  # the C parser stops at the interpreter's recursion limit, cleanly
        raise InvalidArgument(f"parameters.config: objects and lists nested deeper than {MAX_CONFIG_DEPTH} "
                              "levels") from None
    except ValueError as e:  # JSONDecodeError, and integers of more digits than int() takes
        raise InvalidArgument(f"parameters.config: expected a model configuration in JSON, got invalid JSON "
                              f"({clipped(str(e))})") from None
    if nesting_depth(raw) > MAX_CONFIG_DEPTH:
        raise InvalidArgument(f"parameters.config: objects and lists nested deeper than {MAX_CONFIG_DEPTH} levels")
    try:  # JSON may escape a lone surrogate ("\\ud800"), which no protobuf string (ModelConfig's) can carry
        json.dumps(raw, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument("parameters.config: a string holds an escaped lone surrogate, which is not "
                              "Unicode text") from None
    return raw


def parse_triton_override(text: str, model: str) -> dict[str, Any]:
    """Peregrine config keys from a Triton model configuration in JSON. Raises InvalidArgument, and only
    that, whatever ``text`` holds."""
    out: dict[str, Any] = {}
    for k, v in _object(_client_json(text), "(top level)").items():
        if k == "name":
            if v != model:
                raise InvalidArgument(f"parameters.config.name: expected '{clipped(model)}' (the model loaded), "
                                      f"got {clipped(repr(v))}")
        elif k in ("platform", "backend"):
            if v not in ("onnxruntime_onnx", "onnxruntime"):
                raise InvalidArgument(f"parameters.config.{k}: Peregrine serves ONNX models with ONNX Runtime, "
                                      f"got {clipped(repr(v))}")
        elif k == "max_batch_size":
            out[k] = _int(v, k)
        elif k == "dynamic_batching":
            out[k] = _dynamic_batching(v)
        elif k == "instance_group":
            out[k] = _instance_group(v)
        elif k == "version_policy":
            out[k] = _version_policy(v)
        elif k == "parameters":
            params = {}
            for name, value in _object(v, k).items():
                if not isinstance(value, dict) or not isinstance(value.get("string_value"), str):
                    raise InvalidArgument(f"parameters.config.parameters.{clipped(name)}: expected "
                                          f'{{"string_value": "..."}}, got {clipped(repr(value))}')
                params[name] = value["string_value"]
            out[k] = params
        else:
            raise _unknown(k, {"name", "platform", "backend", "max_batch_size", "dynamic_batching",
                               "instance_group", "version_policy", "parameters"})
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict) and k != "version_policy":
            merged[k] = _merge(merged[k], v)
        else:
            merged[k] = v
    return merged


def apply_override(config: ModelConfig, override: dict[str, Any], source: str) -> ModelConfig:
    """``config`` with ``override`` (Peregrine keys) laid over it, validated again."""
    base = config.model_dump(exclude_unset=True)
    if "dynamic_batching" in override and config.dynamic_batching is None:
        base["dynamic_batching"] = {}
    try:
        return ModelConfig.model_validate(_merge(base, override))
    except ValidationError as e:
        raise InvalidArgument(f"{source}: {_format_validation(e)}") from None


def triton_config_text(text: str, model: str) -> str:
    """A load's ``config`` beside model files (``file:<version>/<path>`` parameters): the whole model
    configuration of the directory those files make, in Triton's JSON (its ModelConfig message, protobuf's
    JSON mapping), returned as config.pbtxt text for that directory, which is then read as any config.pbtxt is
    (docs/MODEL_CONFIG.md). InvalidArgument, and only that, for text that is not such a configuration."""
    raw = _object(_client_json(text), "(top level)")
    try:
        msg = json_format.ParseDict(raw, mc.ModelConfig())
    except (json_format.ParseError, ValueError, TypeError) as e:
        raise InvalidArgument(f"parameters.config: expected a Triton model configuration in JSON "
                              f"(ModelConfig), got {clipped(str(e))}") from None
    if msg.name and msg.name != model:
        raise InvalidArgument(f"parameters.config.name: expected '{clipped(model)}' (the model loaded), "
                              f"got {clipped(repr(msg.name))}")
    return text_format.MessageToString(msg)
