"""`peregrine-build-models` / `python -m peregrine.modelgen`: write the bundled model repository."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .photos import photos_available, write_photos
from .repository import BUNDLED_MODELS, write_repository


def _version() -> str:
    try:
        return version("peregrine")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peregrine-build-models",
        description="Generate Peregrine's bundled ONNX models (seeded, calibrated, untrained) into a model "
        "repository as <repository>/<name>/1/model.onnx. Config files are never written or changed.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--repository", type=Path, default=Path("models"), help="repository root (default: models)")
    parser.add_argument("--force", action="store_true", help="rebuild models whose model.onnx already exists")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default: 0)")
    parser.add_argument(
        "--model",
        action="append",
        choices=[spec.name for spec in BUNDLED_MODELS],
        help="build only this model (repeatable; default: all)",
    )
    parser.add_argument("--images", type=Path, default=None, metavar="DIR",
                        help="also write the sample photographs the README and docs use into DIR (from scikit-image)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI; prints one line per model and returns the exit status."""
    args = build_parser().parse_args(argv)
    for result in write_repository(args.repository, names=args.model, seed=args.seed, force=args.force):
        if result.written:
            print(f"wrote   {result.path} ({result.size_bytes / 1e6:.1f} MB, {result.seconds:.1f} s)")
        else:
            print(f"skipped {result.path} (exists; --force rebuilds)")
    if args.images is not None:
        missing = photos_available()
        if missing is not None:
            print(f"skipped {args.images}/ (sample photographs: {missing})")
            return 0
        for path, written in write_photos(args.images, force=args.force):
            print(f"{'wrote  ' if written else 'skipped'} {path}{'' if written else ' (exists)'}")
    return 0
