"""Which configuration file a model directory holds, read: Peregrine's ``config.toml`` or Triton's
``config.pbtxt`` (never both), or none (all defaults)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import ModelLoadError
from .model import CONFIG_FILENAME, MAX_CONFIG_BYTES, ModelConfig, parse_model_config
from .triton import TRITON_CONFIG_FILENAME, parse_triton_config

CONFIG_FILES = (CONFIG_FILENAME, TRITON_CONFIG_FILENAME)


@dataclass
class ConfigFile:
    """A model directory's configuration: ``filename`` is the file it came from ("" for none);
    ``unmapped`` names the fields set in a config.pbtxt that Peregrine has no equivalent for."""

    config: ModelConfig
    filename: str = ""
    unmapped: list[str] = field(default_factory=list)


def config_filename(model_dir: Path) -> str:
    """The configuration file of a model directory ("" for none). Raises ModelLoadError when it holds both."""
    present = [name for name in CONFIG_FILES if (model_dir / name).is_file()]
    if len(present) > 1:
        raise ModelLoadError(f"{model_dir.name}: both {model_dir.name}/{CONFIG_FILENAME} and "
                             f"{model_dir.name}/{TRITON_CONFIG_FILENAME} are present; keep one")
    return present[0] if present else ""


def read_model_config(model_dir: Path, strict: bool = False) -> ConfigFile:
    """Read and map a model directory's configuration. With ``strict``, a config.pbtxt field that has
    no equivalent is an error naming it (``--strict-model-config``). Raises ModelLoadError."""
    filename = config_filename(model_dir)
    if not filename:
        return ConfigFile(ModelConfig())
    source = f"{model_dir.name}/{filename}"
    with (model_dir / filename).open("rb") as f:
        data = f.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ModelLoadError(f"{source}: expected at most {MAX_CONFIG_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ModelLoadError(f"{source}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if filename == CONFIG_FILENAME:
        return ConfigFile(parse_model_config(text, source), filename)
    parsed = parse_triton_config(text, source)
    if strict and parsed.unmapped:
        raise ModelLoadError(f"{source}: field(s) with no Peregrine equivalent (--strict-model-config): "
                             f"{', '.join(parsed.unmapped)}")
    return ConfigFile(parsed.config, filename, parsed.unmapped)
