"""What an exported model records about itself in its ONNX metadata (ultralytics writes ``imgsz`` and
``names``)."""

from __future__ import annotations

import ast


def export_size(metadata: dict[str, str]) -> tuple[int, int] | None:
    """The input size an ultralytics export records in its ``imgsz`` metadata ("[640, 640]" or "640")."""
    try:
        value = ast.literal_eval(metadata.get("imgsz", ""))
    except (ValueError, SyntaxError):
        return None
    if isinstance(value, int):
        value = [value, value]
    if (isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value)
            and all(0 < v <= 8192 for v in value)):
        return int(value[0]), int(value[1])
    return None


def parse_labels(metadata: dict[str, str]) -> list[str]:
    """Class names from a model's ``names`` metadata (ultralytics writes ``{0: 'person', ...}``)."""
    raw = metadata.get("names")
    if not raw:
        return []
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return []
    if isinstance(value, dict) and all(isinstance(k, int) for k in value):
        return [str(value.get(i, f"class{i}")) for i in range(max(value) + 1)] if value else []
    if isinstance(value, list):
        return [str(v) for v in value]
    return []
