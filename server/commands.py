"""``peregrine``: one command for every tool, ``peregrine <command> [options]``.

Each command is its own program (``peregrine serve`` is ``peregrine-server``, and so on); this only finds
it and hands it the rest of the command line. Commands whose code is not installed (an extra that was
left out) say which extra to install.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# name -> (module, what it does, the extra that brings it)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "serve": ("peregrine.server.cli", "serve a model repository over gRPC and HTTP (peregrine-server)", "cpu"),
    "build-models": ("peregrine.modelgen.cli", "write the bundled models and photographs", "cpu"),
    "batch": ("peregrine.server.batch", "run a model over files offline, or submit them as a job", "cpu"),
    "drift": ("peregrine.server.drift_cli", "sketch a model's reference inputs and outputs, compare two sketches",
              "cpu"),
    "quantize": ("peregrine.server.quantize", "write FP16 and INT8 variants of a model and measure them", "cpu"),
    "load": ("peregrine.client.load.cli", "drive a server and measure it (peregrine-load)", "load"),
    "annotate": ("peregrine.client.annotate", "draw detections on images", "annotate"),
    "log-run": ("peregrine.server.observability.mlflow_runs", "log benchmark and drift reports as MLflow runs",
                "mlflow"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: peregrine <command> [options]   (peregrine <command> --help for its options)", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {about}" for name, (_, about, _) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    if args[0] == "--version":
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"peregrine {version('peregrine')}")
        except PackageNotFoundError:
            print("peregrine (not installed as a package)")
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"peregrine: unknown command '{name}'\n\n{usage()}", file=sys.stderr)
        return 2
    module, _, extra = COMMANDS[name]
    try:
        program = importlib.import_module(module)
    except ImportError as e:
        print(f"peregrine {name}: not installed here ({e.name or e}); install it with "
              f"pip install 'peregrine[{extra}]'", file=sys.stderr)
        return 2
    return int(program.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
