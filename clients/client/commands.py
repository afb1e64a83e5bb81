"""The client's console scripts, ``peregrine-load`` and ``peregrine-annotate``.

Both are installed with the client, whose base install is grpcio, protobuf and NumPy only; what they need
beyond that comes with an extra (``[load]``: hdrhistogram and the rest, ``[annotate]``: OpenCV). Each script
imports its program first and, where a module of its extra is missing, says which extra to install and exits 2
instead of a ModuleNotFoundError traceback. ``--version`` answers either way.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from .version import client_version

EXIT_USAGE = 2


def _run(prog: str, module: str, extra: str, argv: Sequence[str] | None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        program = importlib.import_module(module)
    except ImportError as e:
        if (e.name or "").split(".")[0] == "peregrine":
            raise  # our own code is broken: not a missing extra
        if args[:1] == ["--version"]:
            print(f"{prog} {client_version()}")
            return 0
        print(f"{prog}: needs the [{extra}] extra (module '{e.name}' is not installed): "
              f"pip install 'peregrine-client[{extra}]'", file=sys.stderr)
        return EXIT_USAGE
    return int(program.main(args) or 0)


def load(argv: Sequence[str] | None = None) -> int:
    """``peregrine-load``: :func:`peregrine.client.load.cli.main`; needs the ``[load]`` extra."""
    return _run("peregrine-load", "peregrine.client.load.cli", "load", argv)


def annotate(argv: Sequence[str] | None = None) -> int:
    """``peregrine-annotate``: :func:`peregrine.client.annotate.main`; needs the ``[annotate]`` extra."""
    return _run("peregrine-annotate", "peregrine.client.annotate", "annotate", argv)
