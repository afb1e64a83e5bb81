"""The part of Helm's template language that deploy/helm/peregrine uses, rendered without Helm (it is not on
the package registries this project installs from; where ``helm`` is on the PATH the tests use it instead).

Supported, and nothing else (anything else raises ValueError naming it): ``{{ .Values.a.b }}``,
``{{ .Release.Name }}``, ``{{ .Release.Namespace }}``, ``{{ if X }}`` ... ``{{ end }}``,
``{{ toYaml X | nindent N }}``, and ``{{-`` / ``-}}`` whitespace trimming.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

_TOKEN = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)


def _lookup(expr: str, values: dict[str, Any], release: dict[str, str]) -> Any:
    if expr.startswith(".Values."):
        value: Any = values
        for key in expr[len(".Values."):].split("."):
            value = value.get(key) if isinstance(value, dict) else None
        return value
    if expr.startswith(".Release."):
        return release[expr[len(".Release."):]]
    raise ValueError(f"unsupported template expression: {expr!r}")


def render(template: str, values: dict[str, Any], release: dict[str, str]) -> str:
    out: list[str] = []
    active = [True]  # the enclosing ifs' conditions
    pos, trim_next = 0, False
    for m in _TOKEN.finditer(template):
        text = template[pos:m.start()]
        if trim_next:
            text = text.lstrip()
        if all(active):
            out.append(text)
        if m.group(1):  # {{- trims what precedes
            joined = "".join(out).rstrip()
            out = [joined]
        trim_next, pos = bool(m.group(3)), m.end()
        expr = m.group(2)
        if expr.startswith("if "):
            active.append(bool(_lookup(expr[3:].strip(), values, release)))
        elif expr == "end":
            active.pop()
        elif expr.startswith("toYaml "):
            m2 = re.fullmatch(r"toYaml (\S+) \| nindent (\d+)", expr)
            if m2 is None:
                raise ValueError(f"unsupported template expression: {expr!r}")
            if all(active):
                dumped = yaml.safe_dump(_lookup(m2.group(1), values, release), sort_keys=False).rstrip()
                pad = " " * int(m2.group(2))
                out.append("\n" + "\n".join(pad + line for line in dumped.splitlines()))
        elif all(active):
            out.append(str(_lookup(expr, values, release)))
    tail = template[pos:]
    out.append(tail.lstrip() if trim_next else tail)
    if len(active) != 1:
        raise ValueError("unbalanced {{ if }} / {{ end }}")
    return "".join(out)
