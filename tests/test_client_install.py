"""The client installs alone (issue 16 item 5): ``pip install ./clients`` into a clean virtual environment gives
``peregrine.client`` and ``peregrine-load`` and none of the server, its kernels, ONNX, ONNX Runtime or numba;
with the ``[load]`` extra that ``peregrine-load`` drives a real Peregrine server. And ``peregrine-server``
without ONNX Runtime names the extra to install instead of failing with a traceback.

The environments are built with pip from the package index (about half a minute each); where pip cannot reach
an index the tests that need one skip, saying so.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from peregrine.server.app import PeregrineServer
from support import onnx_models

REPO = Path(__file__).resolve().parents[1]
CLIENTS = REPO / "clients"
# What a client-only install must not bring (by module name).
SERVER_SIDE = ("numba", "llvmlite", "onnx", "onnxruntime", "peregrine.server", "peregrine.kernels",
               "peregrine.modelgen")
LOAD_EXTRA = ("hdrh", "tqdm", "matplotlib", "PIL")
# pip's words when it cannot reach an index (urllib3's exceptions, resolver errors, proxies).
UNREACHABLE = re.compile(r"NewConnectionError|Failed to establish a new connection|Temporary failure in name "
                         r"resolution|Name or service not known|Network is unreachable|No route to host|"
                         r"ConnectTimeoutError|ProxyError|Max retries exceeded")
PIP_TIMEOUT_S = 600


def _clean_env() -> dict[str, str]:
    """This process's environment without what would let the dev environment leak into another one."""
    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "VIRTUAL_ENV")}


@dataclass(frozen=True)
class Venv:
    root: Path

    def bin(self, name: str) -> str:
        return str(self.root / "bin" / name)

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        # cwd outside the repository, so that nothing of the checkout is importable by accident.
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=_clean_env(),
                              cwd=self.root)


def _make_venv(root: Path, requirement: str) -> Venv:
    """A fresh virtual environment with ``pip install <requirement>``; skips when pip cannot reach an index."""
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, timeout=120, env=_clean_env())
    venv = Venv(root)
    out = venv.run(venv.bin("python"), "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
                   requirement, timeout=PIP_TIMEOUT_S)
    if out.returncode != 0:
        log = out.stdout + out.stderr
        if unreachable := UNREACHABLE.search(log):
            pytest.skip(f"pip cannot reach a package index to install {requirement}: {unreachable.group(0)}")
        pytest.fail(f"pip install {requirement} failed (exit {out.returncode}):\n{log[-4000:]}")
    return venv


def _importable(venv: Venv, names: tuple[str, ...]) -> list[str]:
    probe = ("import importlib.util, sys\n"
             "def found(n):\n"
             "    try:\n"
             "        return importlib.util.find_spec(n) is not None\n"
             "    except ModuleNotFoundError:\n"  # a parent package that is not there
             "        return False\n"
             "print(','.join(n for n in sys.argv[1:] if found(n)))\n")
    out = venv.run(venv.bin("python"), "-c", probe, *names)
    assert out.returncode == 0, out.stderr
    return [n for n in out.stdout.strip().split(",") if n]


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """``pip install ./clients``: the client alone, no extras."""
    return _make_venv(tmp_path_factory.mktemp("client-only") / "venv", str(CLIENTS))


@pytest.fixture(scope="module")
def load_venv(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """``pip install './clients[load]'``: the client and its load-testing harness."""
    return _make_venv(tmp_path_factory.mktemp("client-load") / "venv", f"{CLIENTS}[load]")


@pytest.mark.slow
@pytest.mark.timeout(2 * PIP_TIMEOUT_S)
def test_client_installs_without_the_server(client_venv: Venv) -> None:
    out = client_venv.run(client_venv.bin("python"), "-c",
                          "import peregrine.client, peregrine.proto.grpc_service_pb2, peregrine.proto.detection_pb2")
    assert out.returncode == 0, out.stderr
    assert _importable(client_venv, SERVER_SIDE) == []
    assert _importable(client_venv, LOAD_EXTRA) == []  # behind [load]


@pytest.mark.slow
@pytest.mark.timeout(2 * PIP_TIMEOUT_S)
def test_client_commands_print_their_version(client_venv: Venv) -> None:
    version = tomllib.loads((CLIENTS / "pyproject.toml").read_text())["project"]["version"]
    for command in ("peregrine-load", "peregrine-annotate"):
        out = client_venv.run(client_venv.bin(command), "--version")
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == f"{command} {version}"


@pytest.mark.slow
@pytest.mark.timeout(2 * PIP_TIMEOUT_S)
def test_load_without_its_extra_names_the_extra(client_venv: Venv) -> None:
    out = client_venv.run(client_venv.bin("peregrine-load"), "some_model", "-u", "127.0.0.1:1")
    assert out.returncode == 2
    assert "peregrine-client[load]" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
@pytest.mark.timeout(2 * PIP_TIMEOUT_S)
def test_client_only_load_harness_drives_a_real_server(
        load_venv: Venv, start_server: Callable[..., PeregrineServer], tmp_path: Path) -> None:
    assert _importable(load_venv, SERVER_SIDE) == []  # the extra brings none of them either
    repo = tmp_path / "models"
    onnx_models.write(repo, "identity_fp32", onnx_models.identity("FP32", ["N", None]))
    server = start_server(repo)
    summary = tmp_path / "summary.json"
    out = load_venv.run(load_venv.bin("peregrine-load"), "identity_fp32", "-u", f"127.0.0.1:{server.port}",
                        "--shape", "INPUT0:16", "-c", "2", "--warmup", "0.3", "--duration", "1.5",
                        "--no-progress", "--json", str(summary), timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(summary.read_text())
    assert result["ok"] == result["sent"] > 0 and result["errors"] == {}


def test_server_and_client_distributions_share_nothing() -> None:
    """The server's distribution leaves peregrine/client, peregrine/proto and the client's commands to
    peregrine-client, and pins its version: installed together, no file belongs to both."""
    root = tomllib.loads((REPO / "pyproject.toml").read_text())
    client = tomllib.loads((CLIENTS / "pyproject.toml").read_text())
    version = client["project"]["version"]
    assert root["project"]["version"] == version
    assert f"peregrine-client=={version}" in root["project"]["dependencies"]
    shipped = set(root["tool"]["scikit-build"]["wheel"]["packages"])
    assert shipped.isdisjoint({"peregrine/client", "peregrine/proto"})
    installs = [line for line in (REPO / "CMakeLists.txt").read_text().splitlines() if "install(" in line]
    assert not [line for line in installs if "peregrine/proto" in line or "peregrine/client" in line]
    assert set(root["project"]["scripts"]).isdisjoint(client["project"]["scripts"])


def test_server_without_onnx_runtime_names_the_extra(tmp_path: Path) -> None:
    # ONNX Runtime made unimportable, as where neither [cpu] nor [gpu] was installed.
    program = ("import sys\n"
               "sys.modules['onnxruntime'] = None\n"
               "from peregrine.server.cli import main\n"
               f"sys.exit(main(['--model-repository', {str(tmp_path)!r}]))\n")
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "peregrine[cpu]" in out.stderr and "peregrine[gpu]" in out.stderr
    assert "Traceback" not in out.stderr
