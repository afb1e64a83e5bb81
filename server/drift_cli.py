"""``peregrine drift``: make a model's reference sketch, and compare two sketches.

    peregrine drift baseline --model yolov8n_detect --input photos/ --output baseline.json
    peregrine drift report --reference baseline.json --current drift/yolov8n_detect-12.json --output report.md

``baseline`` runs the model over the images in this process (as ``peregrine batch`` does) and sketches every
one of them (docs/OBSERVABILITY.md, "Drift"); serve with ``--drift-baseline MODEL=baseline.json`` to compare
the live traffic with it. ``report`` writes Markdown (per feature: PSI, chi-square p-value, verdict) and, with
matplotlib installed, a PNG of every feature's histograms beside it. Exit status 1 when a feature moved past
``--threshold``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from .observability import drift


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="peregrine drift", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("baseline", help="sketch a directory of images through a model")
    b.add_argument("--model", required=True)
    b.add_argument("--input", required=True, nargs="+", help="DIR, FILE or GLOB (as peregrine batch takes)")
    b.add_argument("--repository", type=Path, default=Path("models"))
    b.add_argument("--output", required=True, type=Path)
    r = sub.add_parser("report", help="compare a sketch with a reference")
    r.add_argument("--reference", required=True, type=Path)
    r.add_argument("--current", required=True, type=Path)
    r.add_argument("--output", required=True, type=Path, help="the Markdown report (a PNG is written beside it)")
    r.add_argument("--threshold", type=float, default=0.25)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "baseline":
        sketch = baseline(args.model, args.input, args.repository)
        sketch.save(args.output)
        print(f"{args.output}: {sketch.frames} images of model {args.model}")
        return 0
    return report(drift.Sketch.load(args.reference), drift.Sketch.load(args.current), args.output, args.threshold,
                  (args.reference.name, args.current.name))


def baseline(model: str, inputs: list[str], repository: Path) -> drift.Sketch:
    """Every image of ``inputs`` through ``model``, sketched."""
    from .batch import run

    monitor = drift.DriftMonitor(drift.DriftSettings(sample_rate=1.0, window=10 ** 9, queue_size=10 ** 6))
    drift.install(monitor)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            run(["--model", model, "--repository", str(repository), "--input", *inputs, "--output",
                 str(Path(tmp) / "out.jsonl"), "--no-progress"])
        monitor.flush()
    finally:
        drift.uninstall(monitor)
        monitor.close()
    state = monitor.models.get(model)
    if state is None or not state.window.frames:
        raise SystemExit(f"peregrine drift baseline: no image of {', '.join(inputs)} reached model {model}")
    return state.window


def report(reference: drift.Sketch, current: drift.Sketch, output: Path, threshold: float,
           names: tuple[str, str] = ("reference", "current")) -> int:
    results = drift.compare(reference, current)
    lines = [f"# Drift: {names[1]} against {names[0]}", "",
             f"{current.frames} frames against {reference.frames}; PSI over {threshold:g} is a shift "
             "(0.1: watch).", "",
             "| feature | PSI | chi-square p | verdict |", "|---|---|---|---|"]
    moved = []
    for feature, r in results.items():
        value = r["psi"] or 0.0
        verdict = "moved" if value > threshold else "watch" if value > 0.1 else "stable"
        if verdict == "moved":
            moved.append(feature)
        p_value = "—" if r["p_value"] is None else f"{r['p_value']:.3g}"
        lines.append(f"| {feature} | {value:.3f} | {p_value} | {verdict} |")
    png = _plot(reference, current, output.with_suffix(".png"), names)
    if png is not None:
        lines += ["", f"![histograms]({png.name})"]
    output.write_text("\n".join(lines) + "\n")
    print(f"{output}: {', '.join(moved) + ' moved' if moved else 'no feature moved'}")
    return 1 if moved else 0


def _plot(reference: drift.Sketch, current: drift.Sketch, path: Path, names: tuple[str, str]) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    features = drift.FEATURES
    fig, axes = plt.subplots(3, 4, figsize=(16, 10), constrained_layout=True)
    for ax, feature in zip(axes.flat, features, strict=False):
        for sketch, name, colour in ((reference, names[0], "tab:blue"), (current, names[1], "tab:orange")):
            counts = sketch.counts[feature]
            share = counts / counts.sum() if counts.sum() else counts
            ax.bar(range(len(counts)), share, alpha=0.5, color=colour, label=name)
        ax.set_title(feature)
        ax.set_xlabel("bin")
    for ax in list(axes.flat)[len(features):]:
        ax.axis("off")
    axes.flat[0].legend()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(main())
