"""The layers of docs/ARCHITECTURE.md are a checked contract (import-linter, ``[tool.importlinter]`` in
pyproject.toml): transports import no runtime, kernels or models; codecs call no model; scheduling is pure;
kernels and model builders import nothing of the server. These tests run the contracts on the installed
package, and show that they catch a break: a copy of the server with forbidden imports fails them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import peregrine.server
import pytest

pytest.importorskip("importlinter")

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def lint_imports(*contracts: str, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    args = [sys.executable, "-c", "import sys, importlinter.cli as c; sys.exit(c.lint_imports("
            f"config_filename={str(PYPROJECT)!r}, limit_to_contracts={contracts!r}, no_cache=True, no_logo=True))"]
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)


def test_the_layer_contracts_hold() -> None:
    run = lint_imports()
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout


@pytest.mark.parametrize(("module", "line", "contract"), [
    ("transport/grpc/inference.py", "import onnxruntime", "thin-transport"),
    ("transport/grpc/detection.py", "from ...models import detection", "thin-transport"),
    ("transport/http/routes.py", "import onnxruntime", "thin-transport"),
    ("transport/http/routes.py", "from ..grpc import status", "independent-transports"),
    ("codecs/oip_json.py", "import starlette", "http-at-the-edge"),
    ("codecs/detection.py", "from ..models import detection", "plain-codecs"),
    ("scheduling/batcher.py", "import grpc", "pure-scheduling"),
    ("models/tensor.py", "from ..transport.grpc import status", "layers"),
    ("core/types.py", "from ..dataplane import repository", "layers"),
])
def test_a_forbidden_import_breaks_a_contract(tmp_path: Path, module: str, line: str, contract: str) -> None:
    # A copy of the installed server package, first on the path, with one forbidden import added.
    copy = tmp_path / "peregrine" / "server"
    shutil.copytree(Path(peregrine.server.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / module
    text = target.read_text()
    head, _, rest = text.partition("from __future__ import annotations\n")
    target.write_text(f"{head}from __future__ import annotations\n{line}\n{rest}")
    run = lint_imports(contract, pythonpath=tmp_path)
    assert run.returncode != 0, run.stdout
    assert "BROKEN" in run.stdout and "1 broken" in run.stdout
