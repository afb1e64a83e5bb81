"""The load harness's picture and its honesty: an SLO line, failures coloured by status, tail percentiles on a
log scale, labels that never overlap, a note when nothing succeeded; and a run whose generator fell behind
its own schedule is reported invalid (warning, ``"valid": false`` in its JSON)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import client_support
import numpy as np
import pytest
from matplotlib.colors import to_hex
from matplotlib.text import Text
from peregrine.client.load.cli import main
from peregrine.client.load.plot import SLO_COLOUR, STATUS_COLOURS, latency_figure
from peregrine.client.load.report import LoadResult
from peregrine.client.load.runner import LoadConfig, Recorder

peregrine_server = client_support.peregrine_server
peregrine_url = client_support.peregrine_url


def run_of(statuses: list[str], latencies_s: list[float], *, mode: str = "open", lag_s: float = 0.0,
           deadline_ms: float | None = 100.0) -> LoadResult:
    """A result made the way a run makes it: answers recorded one by one into a Recorder."""
    cfg = LoadConfig("det", mode=mode, rate=100.0, cameras=2, fps=30.0, warmup_s=0.0, duration_s=2.0,  # type: ignore[arg-type]
                     deadline_ms=deadline_ms)
    rec = Recorder(0.0, deadline_ms / 1e3 if deadline_ms else None)
    for i, (status, latency) in enumerate(zip(statuses, latencies_s, strict=True)):
        intended = i * 2.0 / len(statuses)
        rec.record(intended, intended + lag_s, intended + latency, status)
    return rec.result(cfg, "oip", "")


def texts(fig) -> list[Text]:  # type: ignore[no-untyped-def]
    """The texts drawn: every visible non-empty text but tick labels, and the labels of ticks in view."""
    ticks: set[int] = set()
    drawn: list[Text] = []
    for ax in fig.axes if isinstance(fig.axes, list) else [fig]:  # a figure, or one Axes
        for axis, (low, high) in ((ax.xaxis, sorted(ax.get_xlim())), (ax.yaxis, sorted(ax.get_ylim()))):
            for minor in (False, True):
                labels = axis.get_ticklabels(minor=minor)
                ticks.update(id(t) for t in labels)
                locs = axis.get_minorticklocs() if minor else axis.get_majorticklocs()
                drawn += [t for t, v in zip(labels, locs, strict=False) if low - 1e-9 <= v <= high + 1e-9]
    rest = [t for t in fig.findobj(Text) if id(t) not in ticks]
    return [t for t in drawn + rest if t.get_visible() and t.get_text().strip()]


def overlapping(fig) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    """Pairs of texts whose boxes overlap, and texts cut by the figure's edge (paired with "EDGE")."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts(fig)]
    edge = fig.bbox
    cut = [(a, "EDGE") for a, b in boxes if b.x0 < edge.x0 - 1 or b.x1 > edge.x1 + 1 or b.y0 < edge.y0 - 1
           or b.y1 > edge.y1 + 1]
    return cut + [(a, b) for (a, ba), (b, bb) in itertools.combinations(boxes, 2) if ba.overlaps(bb)]


def test_slo_line_status_colours_and_log_tail() -> None:
    rng = np.random.default_rng(0)
    n = 2000
    statuses = ["OK"] * n + ["DEADLINE_EXCEEDED"] * 30 + ["UNAVAILABLE"] * 10 + ["DROPPED"] * 20 + ["DATA_LOSS"] * 2
    latencies = list(rng.lognormal(np.log(0.01), 0.6, n)) + [0.15] * 30 + [0.001] * 10 + [0.05] * 20 + [0.2] * 2
    result = run_of(statuses, latencies)
    fig = latency_figure(result, slo_p99_ms=20.0)
    ax1, ax2 = fig.axes
    # The SLO and the deadline are horizontal lines on both charts, the SLO in its own colour.
    for ax in (ax1, ax2):
        ys = {(round(line.get_ydata()[0], 6), to_hex(line.get_color())) for line in ax.get_lines()
              if len(set(line.get_ydata())) == 1 and line.get_linestyle() in (":", "--")}
        assert (20.0, SLO_COLOUR) in ys and any(y == 100.0 for y, _ in ys)
    # One scatter per status, each failure in its own colour (the fixed ones where a status has one).
    assert len(ax1.collections) == 5
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert {"OK (2000)", "DEADLINE_EXCEEDED (30)", "UNAVAILABLE (10)", "DROPPED (20)", "DATA_LOSS (2)",
            "SLO p99 20 ms", "deadline 100 ms"} <= set(legend)
    marks = [to_hex(c.get_edgecolor()[0]) for c in ax1.collections[1:]]  # "x" markers: edge colour
    assert len(set(marks)) == 4 and {STATUS_COLOURS["DEADLINE_EXCEEDED"], STATUS_COLOURS["DROPPED"],
                                     STATUS_COLOURS["UNAVAILABLE"]} <= set(marks)
    # Tail percentiles: a log-scaled percentile axis labelled in percent, the percentiles in the legend.
    assert ax2.get_xscale() == "log"
    assert {"50%", "90%", "99%", "99.9%"} <= {t.get_text() for t in ax2.get_xticklabels()}
    assert any(t.startswith("p99.9 ") for t in legend)
    assert overlapping(fig) == []


def test_labels_do_not_overlap_when_percentiles_coincide(tmp_path: Path) -> None:
    # Every latency equal: p50 = p90 = p99 = p99.9, the case where labels at the data points pile up.
    result = run_of(["OK"] * 50 + ["CANCELLED"], [0.005] * 50 + [0.5], mode="camera")
    fig = latency_figure(result, slo_p99_ms=5.0)
    assert overlapping(fig) == []
    result.plot(tmp_path / "run.png", slo_p99_ms=5.0)
    assert (tmp_path / "run.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_successes_says_so(tmp_path: Path) -> None:
    result = run_of(["UNAVAILABLE"] * 20 + ["DEADLINE_EXCEEDED"] * 5, [0.002] * 20 + [0.1] * 5)
    fig = latency_figure(result, slo_p99_ms=20.0)
    notes = [t.get_text() for t in texts(fig.axes[1])]
    assert any("no request succeeded" in t and "UNAVAILABLE" in t for t in notes)
    assert overlapping(fig) == []
    empty = run_of([], [])
    assert any("no requests were measured" in t.get_text() for t in texts(latency_figure(empty).axes[0]))
    empty.plot(tmp_path / "empty.png")


def test_a_generator_behind_schedule_makes_the_run_invalid() -> None:
    late = run_of(["OK"] * 100, [3.5] * 100, mode="camera", lag_s=3.4)
    assert not late.valid and "fell behind its schedule" in late.invalid_reason
    assert "3400.0 ms" in late.invalid_reason
    assert json.loads(json.dumps(late.to_dict()))["valid"] is False
    assert "INVALID RUN" in late.format()
    fig = latency_figure(late)
    assert "INVALID RUN" in fig._suptitle.get_text() and overlapping(fig) == []  # type: ignore[union-attr]
    assert run_of(["OK"] * 100, [0.01] * 100, mode="camera", lag_s=0.002).valid
    # A closed loop has no schedule to fall behind.
    assert run_of(["OK"] * 100, [0.01] * 100, mode="closed", lag_s=3.4).valid
    # The limit is the caller's.
    assert late.check_schedule(5000.0) is False  # once invalid, it stays so


def test_cli_warns_and_marks_an_overloaded_generator(peregrine_url: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    # A real generator asked for far more than one Python process can send: it falls behind its schedule.
    out = tmp_path / "r.json"
    rc = main(["identity_fp32", "-u", peregrine_url, "--shape", "INPUT0:4", "-r", "20000", "--warmup", "0",
               "--duration", "0.1", "--no-progress", "--max-send-lag-ms", "5", "--json", str(out)])
    assert rc == 0
    summary = json.loads(out.read_text())
    assert summary["valid"] is False and summary["send_lag_ms"]["p99"] > 5
    assert "WARNING: this run is invalid" in capsys.readouterr().err
    # The same server at a rate the generator keeps up with: valid.
    # (A generous limit: a busy machine may delay a send by tens of milliseconds; not by half a second.)
    rc = main(["identity_fp32", "-u", peregrine_url, "--shape", "INPUT0:4", "-r", "20", "--warmup", "0",
               "--duration", "0.3", "--no-progress", "--max-send-lag-ms", "500", "--json", str(out)])
    assert rc == 0 and json.loads(out.read_text())["valid"] is True
