"""``peregrine batch``: run a model over files, offline, at full throughput; or submit them as a job.

    peregrine batch --model yolov8n_detect --input photos/ --output detections.jsonl
    peregrine batch --model yolov8n_detect --input 'drives/*.jpg' --output detections.jsonl
    peregrine batch --model yolov8n_detect --input drive.mcap --topic /camera/image_raw --output d.jsonl
    peregrine batch --model yolov8n_detect --input drive.bag --topic /camera/image_raw --output d.mcap
    peregrine batch --model my_model --input rows.npy --output outputs.npz
    peregrine batch --model yolov8n_detect --input photos.tar --output d.jsonl --server 10.0.0.5:8001
    peregrine batch --model yolov8n_detect --input photos/ --output d.jsonl --annotate annotated/

Locally the models load in this process and items go through the same data plane, batchers and pipelines
a server runs (no port is opened), with enough items in flight to fill the model's largest batch while
the next ones are read and decoded. Inputs: a directory (its image files, recursively, sorted), a glob, an
archive (tar, zip), a tensor file (.npy, .npz), a robot recording (ROS 1 bag, rosbag2 directory, MCAP) or a
text file of image paths. Detection models write JSON Lines (one line per image or frame, failed items with
their error); tensor models write an .npz of their outputs, row i for item i. A recording's detections may go
to an .mcap output instead: one vision_msgs/Detection2DArray per frame on ``<image topic>/detections``, for
Foxglove and ROS 2 tools (rendered at the end from the JSON Lines, kept as ``<output>.jsonl``; see
:mod:`.batch_mcap`).

Interrupted (Ctrl-C, a crash), the same command resumes: what was committed (``<output>.progress.json``,
every half second) is kept and the rest is done. ``--server`` sends the input as an asynchronous job to a
server instead (a directory or glob packed into a tar first) and follows it to the end. ``--annotate DIR``
also draws the boxes on the inputs into DIR (images under their relative names, a video as one video, a
recording's frames as ``<topic>/<stamp_ns>.png``; see :mod:`.batch_annotate`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from . import batch_annotate, batch_mcap
from .app import PeregrineServer
from .config.server import ServerConfig
from .core.errors import PeregrineError
from .jobs import sources
from .jobs.results import ResultWriter, Tally
from .jobs.service import LocalCall, run_in_order
from .observability import logs

CHECKPOINT_S = 0.5


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="peregrine batch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="the model (a detection pipeline, or any model for tensors)")
    p.add_argument("--version", default="", dest="model_version", help="its version (default: the latest)")
    p.add_argument("--input", required=True, nargs="+", help="DIR, FILE or GLOB (several: their images)")
    p.add_argument("--output", required=True, type=Path,
                   help="results: .jsonl (detections), .npz (tensors) or .mcap (a recording's detections)")
    p.add_argument("--repository", type=Path, default=Path("models"), help="model repository (default models)")
    p.add_argument("--kind", default="", choices=["", *sources.KINDS],
                   help="what a single input file is (default: told from its first bytes)")
    p.add_argument("--topic", default="", help="recordings: the image topics, comma-separated (default: all)")
    p.add_argument("--stride", type=int, default=1, help="recordings: every N-th frame (default 1)")
    p.add_argument("--input-name", default="", help="tensors: the model input an .npy is for")
    p.add_argument("--in-flight", type=int, default=0,
                   help="items queued at once (default: twice the model's largest batch)")
    p.add_argument("--server", default="", metavar="ADDR", help="submit as a job to this server instead")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--restart", action="store_true", help="start over, ignoring what an earlier run committed")
    p.add_argument("--annotate", type=Path, metavar="DIR",
                   help="also draw the boxes on the inputs into DIR: images under their relative names, a video "
                   "as one video, a recording's frames as <topic>/<stamp_ns>.png (needs the [annotate] extra)")
    p.add_argument("--image-annotations", action="store_true",
                   help="with an .mcap output: also foxglove_msgs/ImageAnnotations on <image topic>/annotations "
                   "(boxes and labels Foxglove's Image panel draws over the camera stream)")
    return p


def run(argv: list[str]) -> dict[str, Any]:
    """Run ``peregrine batch`` with ``argv`` in this process, without printing: its summary (items, failed,
    detections, and the seconds and items/s of the processing itself, model loading not counted)."""
    return _run_local(_parser().parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logs.configure("WARNING", "text")
    try:
        if args.server:
            return _remote(args)
        return _local(args)
    except (PeregrineError, FileNotFoundError, ValueError) as e:
        print(f"peregrine batch: {getattr(e, 'message', e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nperegrine batch: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


def _parameters(args: argparse.Namespace) -> dict[str, str]:
    found = {"topic": args.topic, "stride": str(args.stride) if args.stride != 1 else "", "input": args.input_name}
    return {k: v for k, v in found.items() if v}


def _is_rosbag2(path: Path) -> bool:
    """Whether ``path`` is a rosbag2 directory (``ros2 bag record`` writes ``metadata.yaml`` beside its files)."""
    return path.is_dir() and (path / "metadata.yaml").is_file()


def _kind(args: argparse.Namespace) -> str:
    """``--kind``, or "recording" for a rosbag2 directory (told from its files, not its first bytes)."""
    return args.kind or ("recording" if len(args.input) == 1 and _is_rosbag2(Path(args.input[0])) else "")


def _check_output(args: argparse.Namespace, kind: str) -> None:
    """ValueError naming the option when the output's form does not fit the input's kind."""
    mcap = batch_mcap.wants_mcap(args.output)
    if mcap:
        batch_mcap.check_kind(kind, args.output)
    elif args.image_annotations:
        raise ValueError(f"--image-annotations: foxglove_msgs/ImageAnnotations go into an .mcap output; expected "
                         f"--output NAME.mcap, got {args.output.name}")


def _image_files(inputs: list[str]) -> list[Path] | None:
    """The image files of directories and globs, sorted; None when the input is one file (or one rosbag2
    directory) to open as a kind."""
    if len(inputs) == 1 and (Path(inputs[0]).is_file() or _is_rosbag2(Path(inputs[0]))):
        return None
    found: list[Path] = []
    for entry in inputs:
        path = Path(entry)
        if path.is_dir():
            found += [p for p in path.rglob("*") if p.is_file() and sources.is_image_name(p.name)]
        elif path.is_file():
            found.append(path)
        else:
            matches = [Path(m) for m in glob.glob(entry, recursive=True)]
            if not matches:
                raise FileNotFoundError(f"--input: nothing matches '{entry}'")
            found += [p for p in matches if p.is_file() and sources.is_image_name(p.name)]
    if not found:
        raise FileNotFoundError(f"--input: no image files ({', '.join(sources.IMAGE_SUFFIXES)}) in "
                                f"{', '.join(inputs)}")
    return sorted(found)


# -- in this process ---------------------------------------------------------------------------------
def _local(args: argparse.Namespace) -> int:
    summary = _run_local(args)
    _print_summary(summary, args.output)
    return 0 if summary["failed"] < summary["items"] or not summary["items"] else 1


def _run_local(args: argparse.Namespace) -> dict[str, Any]:
    files = _image_files(args.input)
    if files is not None:
        source: sources.Source = sources.FilesSource(files)
    else:
        source = sources.open_source(Path(args.input[0]), _kind(args), _parameters(args))
    tensors = source.kind == "tensor"
    output: Path = args.output
    mcap = batch_mcap.wants_mcap(output)
    try:
        if tensors != (output.suffix == ".npz"):
            raise ValueError(f"--output: a {source.kind} input gives {'an .npz' if tensors else 'JSON Lines'}; "
                             f"name the output accordingly, got {output.name}")
        _check_output(args, source.kind)
    except ValueError:
        source.close()
        raise
    if args.annotate is not None:
        batch_annotate.check_kind(source.kind)
        batch_annotate.annotate_module()
    work = output.with_name(output.name + ".parts")
    progress_file = output.with_name(output.name + ".progress.json")
    state = _resume_state(progress_file, args, source.total)
    if args.restart or state is None:
        shutil.rmtree(work, ignore_errors=True)
        state = {"items_done": 0, "result_bytes": 0, "summary": {}}
    work.mkdir(parents=True, exist_ok=True)
    config = ServerConfig(model_repository=args.repository, grpc_port=0, http_port=None,
                          model_control_mode="explicit", load_models=[args.model])
    server = PeregrineServer(config)
    server.start_offline()
    try:
        writer = ResultWriter(work, source.total, state["result_bytes"], tensors)
        try:
            summary = server.loop.run(_run(server, args, source, writer, state, progress_file))
            fmt, _ = writer.finish()
        finally:
            writer.close()
    finally:
        server.stop(grace=0)
        source.close()
    if args.annotate is not None and source.kind == "video":
        summary["pictures"] = batch_annotate.draw_video(Path(args.input[0]), work / "result.jsonl", args.annotate)
    if mcap:  # rendered from the committed JSON Lines, which are kept beside it
        assert isinstance(source, sources.RecordingSource)
        summary["messages"] = batch_mcap.render(work / "result.jsonl", source.path, source.topics, source.stride,
                                                output, args.image_annotations)
    # The checkpoint goes before the result leaves the work directory: a run killed in between starts over
    # instead of resuming into a result that is no longer there.
    progress_file.unlink(missing_ok=True)
    if mcap:
        os.replace(work / "result.jsonl", batch_mcap.record_path(output))
    else:
        os.replace(work / ("result.npz" if fmt == "npz" else "result.jsonl"), output)
    shutil.rmtree(work, ignore_errors=True)
    return summary


def _resume_state(progress_file: Path, args: argparse.Namespace, total: int) -> dict[str, Any] | None:
    if not progress_file.exists():
        return None
    state = json.loads(progress_file.read_text())
    if state.get("model") != args.model or state.get("inputs") != args.input or state.get("total") != total:
        raise ValueError(f"{progress_file}: an earlier run of other inputs or another model; pass --restart "
                         "to start over")
    if state.get("annotate", "") != str(args.annotate or "") and not args.restart:
        raise ValueError(f"{progress_file}: an earlier run with --annotate '{state.get('annotate', '')}' (this one: "
                         f"'{args.annotate or ''}'); its pictures would be partial: pass the same, or --restart")
    print(f"peregrine batch: resuming after item {state['items_done']} of {total}", file=sys.stderr)
    return state


async def _run(server: PeregrineServer, args: argparse.Namespace, source: sources.Source, writer: ResultWriter,
               state: dict[str, Any], progress_file: Path) -> dict[str, Any]:
    plane = server.dataplane
    loop = asyncio.get_running_loop()
    model = plane.model(args.model, args.model_version)
    tally = Tally(writer, state["summary"])
    started, last = time.monotonic(), time.monotonic()
    bar = _progress(source.total, state["items_done"], args.no_progress)
    pictures = None
    if args.annotate is not None and source.kind != "video":  # a video is drawn whole at the end
        pictures = batch_annotate.PictureQueue(batch_annotate.PictureWriter(args.annotate, source),
                                               2 * (args.in_flight or max(1, model.max_batch_size)))
    iterator = source.items(state["items_done"])
    outcomes = run_in_order(plane, LocalCall("batch"), args.model, args.model_version,
                            lambda: loop.run_in_executor(None, next, iterator, None),
                            args.in_flight or 2 * max(1, model.max_batch_size), background=False)
    try:
        async with contextlib.aclosing(outcomes):
            async for item, result, error, final in outcomes:
                tally.add(item, result, error)
                if pictures is not None:
                    await pictures.add(item, result, error)
                bar.update(1)
                if time.monotonic() - last >= CHECKPOINT_S or final:
                    last = time.monotonic()
                    if pictures is not None:
                        await pictures.flush()  # an item is checkpointed with its picture on disk
                    _commit(progress_file, args, source.total, tally.summary["items"], writer.checkpoint(),
                            tally.summary)
    finally:
        bar.close()
        if pictures is not None:
            pictures.close()
    summary = tally.summary
    if pictures is not None:
        summary["pictures"] = pictures.writer.drawn
    summary["seconds"] = round(time.monotonic() - started, 3)
    done_now = summary["items"] - state["items_done"]
    summary["items_per_s"] = round(done_now / summary["seconds"], 2) if summary["seconds"] else 0
    return summary


def _commit(progress_file: Path, args: argparse.Namespace, total: int, done: int, result_bytes: int,
            summary: dict[str, Any]) -> None:
    """Record what is durable (written after the result's own fsync), atomically."""
    tmp = progress_file.with_suffix(".tmp")
    tmp.write_text(json.dumps({"model": args.model, "inputs": args.input, "total": total, "items_done": done,
                               "result_bytes": result_bytes, "summary": summary,
                               "annotate": str(args.annotate or "")}))
    os.replace(tmp, progress_file)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, done: int, off: bool) -> Any:
    if off or not sys.stderr.isatty():
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, initial=done, unit="item", dynamic_ncols=True)


def _print_summary(summary: dict[str, Any], output: Path) -> None:
    rows = [("items", f"{summary['items']}"), ("failed", f"{summary['failed']}"),
            ("detections", f"{summary.get('detections', 0)}"), ("seconds", f"{summary.get('seconds', 0):.2f}"),
            ("items/s", f"{summary.get('items_per_s', 0):.1f}"), ("output", str(output))]
    if "pictures" in summary:
        rows.append(("pictures", f"{summary['pictures']} drawn"))
    if "messages" in summary:
        rows += [("messages", f"{summary['messages']} Detection2DArray"),
                 ("lines", str(batch_mcap.record_path(output)))]
    top = sorted(summary.get("per_class", {}).items(), key=lambda kv: -kv[1])[:10]
    rows += [(f"  {label}", str(count)) for label, count in top]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))


# -- as a job on a server --------------------------------------------------------------------------
def _remote(args: argparse.Namespace) -> int:
    from peregrine.client.jobs import JobClient, state_name

    files = _image_files(args.input)
    if files is None and _is_rosbag2(Path(args.input[0])):
        raise ValueError(f"--input: a rosbag2 directory is several files, a job takes one: send its storage file "
                         f"(.mcap or .db3), got {args.input[0]}")
    mcap = batch_mcap.wants_mcap(args.output)
    if mcap or args.image_annotations:
        _check_output(args, "images" if files is not None else args.kind or sources.sniff(Path(args.input[0])))
    if args.annotate is not None:
        batch_annotate.check_remote(files, args.input, args.kind)
    with tempfile.TemporaryDirectory(prefix="peregrine-batch-") as tmp:
        if files is not None:
            payload = Path(tmp) / "images.tar"
            with tarfile.open(payload, "w") as tar:
                for i, path in enumerate(files):
                    tar.add(path, arcname=f"{i:08d}-{path.name}")  # sorted as given, names kept
        else:
            payload = Path(args.input[0])
        with JobClient(args.server) as client:
            job = client.submit(payload, args.model, kind=args.kind if files is None else "archive",
                                version=args.model_version, parameters=_parameters(args))
            print(f"peregrine batch: job {job.job_id} submitted to {args.server}", file=sys.stderr)
            bar = _progress(0, 0, args.no_progress)
            seen = [0]

            def progress(j: Any) -> None:
                if getattr(bar, "total", None) != j.items_total and hasattr(bar, "total"):
                    bar.total = j.items_total
                bar.update(j.items_done - seen[0])
                seen[0] = j.items_done

            job = client.wait(job.job_id, progress=progress)
            bar.close()
            if state_name(job) != "SUCCEEDED":
                print(f"peregrine batch: job {job.job_id} {state_name(job)}: {job.error}", file=sys.stderr)
                return 1
            result = batch_mcap.record_path(args.output) if mcap else args.output
            result.unlink(missing_ok=True)
            summary = client.download(job.job_id, result)
    if mcap:  # from the local recording, the same one the job read
        topics = [t for t in args.topic.split(",") if t]
        summary["messages"] = batch_mcap.render(result, Path(args.input[0]), topics or None, args.stride,
                                                args.output, args.image_annotations)
    if args.annotate is not None:  # from the local inputs, matched to the result's lines by item index
        local = sources.FilesSource(files) if files is not None else \
            sources.open_source(Path(args.input[0]), args.kind, _parameters(args))
        try:
            summary["pictures"] = batch_annotate.draw_result(local, args.output, args.annotate)
        finally:
            local.close()
    _print_summary(summary, args.output)
    return 0
