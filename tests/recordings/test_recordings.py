"""Robot recordings: camera frames read from ROS 1 bags, rosbag2 directories (SQLite and MCAP storage) and
bare MCAP files written here with the libraries robot teams use (rosbags, mcap-ros2-support); every image
encoding against a reference built here; detections written as vision_msgs/Detection2DArray and read back
message by message by two independent readers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import skimage.data

pytest.importorskip("rosbags", reason="the [ros] extra (rosbags, mcap, mcap-ros2-support) is not installed")
pytest.importorskip("mcap_ros2", reason="the [ros] extra (rosbags, mcap, mcap-ros2-support) is not installed")

from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory
from mcap_ros2.writer import Writer as McapRos2Writer
from peregrine.client import Detection
from peregrine.server.codecs.recordings import (
    ANNOTATIONS_TYPE,
    DETECTIONS_TYPE,
    DetectionMcapWriter,
    Frame,
    RecordingError,
    decode_compressed,
    decode_image,
    image_topics,
    iter_frames,
)
from rosbags.highlevel import AnyReader
from rosbags.rosbag1 import Writer as Bag1Writer
from rosbags.rosbag2 import StoragePlugin
from rosbags.rosbag2 import Writer as Bag2Writer
from rosbags.typesys import Stores, get_typestore

# A smooth picture (subsampled chroma and demosaicing are exact only where colours change slowly) and a
# photograph (exact encodings must be exact on real detail).
H, W = 48, 64
yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
SMOOTH = np.clip(np.stack([60 + 2 * xx, 40 + 3 * yy, 200 - 1.5 * xx - yy], axis=-1), 0, 255).astype(np.uint8)  # BGR
PHOTO = np.ascontiguousarray(cv2.resize(skimage.data.astronaut(), (W, H), interpolation=cv2.INTER_AREA)[:, :, ::-1])


# -- encodings, each against a reference made here ----------------------------------------------------
def yuv_bt601(bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Video-range BT.601 Y, U, V (what OpenCV's YUV 4:2:2 conversions expect), U and V averaged per pair."""
    b, g, r = (bgr[:, :, i].astype(np.float64) for i in range(3))
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    pair = lambda c: (c[:, 0::2] + c[:, 1::2]) / 2  # noqa: E731
    return (np.round(y).astype(np.uint8), np.round(pair(u)).astype(np.uint8), np.round(pair(v)).astype(np.uint8))


def pack_422(bgr: np.ndarray, order: str) -> bytes:
    y, u, v = yuv_bt601(bgr)
    out = np.empty((bgr.shape[0], bgr.shape[1] // 2, 4), np.uint8)
    parts = {"Y0": y[:, 0::2], "Y1": y[:, 1::2], "U": u, "V": v}
    for i, name in enumerate(order.split()):
        out[:, :, i] = parts[name]
    return out.tobytes()


def mosaic(bgr: np.ndarray, pattern: str) -> np.ndarray:
    """A Bayer sensor's raw image: ``pattern`` names the colours of the 2x2 cell, row by row (rggb: R at 0,0)."""
    index = {"r": 2, "g": 1, "b": 0}
    raw = np.empty(bgr.shape[:2], bgr.dtype)
    for k, colour in enumerate(pattern):
        dy, dx = divmod(k, 2)
        raw[dy::2, dx::2] = bgr[dy::2, dx::2, index[colour]]
    return raw


def close(a: np.ndarray, b: np.ndarray, mean: float, worst: float, margin: int = 0) -> None:
    if margin:
        a, b = a[margin:-margin, margin:-margin], b[margin:-margin, margin:-margin]
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert diff.mean() <= mean and diff.max() <= worst, (diff.mean(), diff.max())


def test_exact_encodings() -> None:
    rgb = PHOTO[:, :, ::-1]
    grey = cv2.cvtColor(PHOTO, cv2.COLOR_BGR2GRAY)
    step3 = W * 3 + 5  # rows padded to a stride, as some drivers write them
    padded = np.zeros((H, step3), np.uint8)
    padded[:, : W * 3] = rgb.reshape(H, -1)
    cases = {
        "rgb8": (W * 3, rgb.tobytes()),
        "bgr8": (W * 3, PHOTO.tobytes()),
        "rgba8": (W * 4, np.dstack([rgb, np.full((H, W), 7, np.uint8)]).tobytes()),
        "bgra8": (W * 4, np.dstack([PHOTO, np.full((H, W), 7, np.uint8)]).tobytes()),
    }
    for encoding, (step, data) in cases.items():
        np.testing.assert_array_equal(decode_image(encoding, H, W, step, False, data), PHOTO, err_msg=encoding)
    np.testing.assert_array_equal(decode_image("rgb8", H, W, step3, False, padded.tobytes()), PHOTO)
    grey3 = np.dstack([grey] * 3)
    np.testing.assert_array_equal(decode_image("mono8", H, W, W, False, grey.tobytes()), grey3)
    wide = grey.astype(np.uint16) * 256 + 255 - grey  # 16-bit: the top byte is the grey level
    np.testing.assert_array_equal(decode_image("mono16", H, W, 2 * W, False, wide.astype("<u2").tobytes()), grey3)
    np.testing.assert_array_equal(decode_image("mono16", H, W, 2 * W, True, wide.astype(">u2").tobytes()), grey3)


@pytest.mark.parametrize(("encoding", "order"), [("yuv422", "U Y0 V Y1"), ("uyvy", "U Y0 V Y1"),
                                                 ("yuv422_yuy2", "Y0 U Y1 V"), ("yuyv", "Y0 U Y1 V")])
def test_yuv422(encoding: str, order: str) -> None:
    out = decode_image(encoding, H, W, 2 * W, False, pack_422(SMOOTH, order))
    close(out, SMOOTH, mean=1.5, worst=6)


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
@pytest.mark.parametrize("bits", [8, 16])
def test_bayer(pattern: str, bits: int) -> None:
    raw = mosaic(SMOOTH, pattern)
    data = raw.tobytes() if bits == 8 else (raw.astype(np.uint16) * 257).astype("<u2").tobytes()
    out = decode_image(f"bayer_{pattern}{bits}", H, W, W * bits // 8, False, data)
    close(out, SMOOTH, mean=2.0, worst=8, margin=2)


def test_compressed_and_refusals() -> None:
    _, png = cv2.imencode(".png", PHOTO)
    image, codec = decode_compressed("png", png.tobytes())
    np.testing.assert_array_equal(image, PHOTO)
    assert codec == "png"
    _, jpeg = cv2.imencode(".jpg", SMOOTH, [cv2.IMWRITE_JPEG_QUALITY, 95])
    image, codec = decode_compressed("bgr8; jpeg compressed bgr8", jpeg.tobytes())
    close(image, SMOOTH, mean=2.0, worst=12)
    assert codec == "jpeg"
    with pytest.raises(RecordingError, match="not a JPEG or PNG"):
        decode_compressed("jpeg", b"\xff\xd8 truncated")
    with pytest.raises(RecordingError, match="compressed depth"):
        decode_compressed("16UC1; compressedDepth", png.tobytes())
    with pytest.raises(RecordingError, match="not supported"):
        decode_image("32FC1", H, W, 4 * W, False, bytes(4 * W * H))
    with pytest.raises(RecordingError, match="bytes per row"):
        decode_image("rgb8", H, W, W * 3, False, bytes(W * 3 * (H - 1)))
    with pytest.raises(RecordingError, match="even width"):
        decode_image("yuyv", H, W - 1, 2 * (W - 1), False, bytes(2 * (W - 1) * H))


@pytest.mark.parametrize(("encoding", "code"), [
    ("bayer_rggb8", cv2.COLOR_BayerBG2BGR), ("BAYER_GRBG8", cv2.COLOR_BayerGB2BGR),
    ("bayer_gbrg16", cv2.COLOR_BayerGR2BGR), ("uyvy", cv2.COLOR_YUV2BGR_UYVY), (" yuv422_yuy2", cv2.COLOR_YUV2BGR_YUY2),
])
def test_raw_encodings_are_cv_bridges_byte_for_byte(encoding: str, code: int) -> None:
    """The native conversion gives cv2.cvtColor's bytes (cv_bridge's code per encoding) on random samples, odd
    sizes and padded rows included; YUV and Bayer names are taken in any case, with spaces around."""
    rng = np.random.default_rng(11)
    wide = encoding.endswith("16")
    height, width = (H + 1, W + 1) if "bayer" in encoding.lower() else (H, W)
    channels = 1 if "bayer" in encoding.lower() else 2
    samples = rng.integers(0, 1 << (16 if wide else 8), (height, width, channels), np.uint16 if wide else np.uint8)
    narrow = (samples >> 8).astype(np.uint8) if wide else samples
    want = cv2.cvtColor(narrow if channels == 2 else narrow[:, :, 0], code)
    rows = samples.reshape(height, -1).astype("<u2" if wide else np.uint8).view(np.uint8)
    step = rows.shape[1] + 6
    data = np.concatenate([rows, np.full((height, 6), 0xEE, np.uint8)], axis=1)
    np.testing.assert_array_equal(decode_image(encoding, height, width, step, False, data.reshape(-1)), want)


# -- recordings written with rosbags and mcap-ros2-support ---------------------------------------------
@dataclass(frozen=True)
class Shot:
    topic: str
    stamp_ns: int
    log_ns: int
    frame_id: str
    bgr: np.ndarray
    compressed: bool = False


SHOTS = [
    Shot("/cam_front/image_raw", 1_700_000_000_100_000_000, 1_700_000_000_150_000_000, "cam_front", PHOTO),
    Shot("/cam_rear/image_raw/compressed", 1_700_000_000_120_000_000, 1_700_000_000_160_000_000, "cam_rear",
         SMOOTH, compressed=True),
    Shot("/cam_front/image_raw", 1_700_000_000_200_000_000, 1_700_000_000_250_000_000, "cam_front", PHOTO[::-1]),
]


def image_msg(ts: Any, shot: Shot, ros1: bool) -> Any:
    t = ts.types
    stamp = t["builtin_interfaces/msg/Time"](sec=shot.stamp_ns // 10**9, nanosec=shot.stamp_ns % 10**9)
    header = (t["std_msgs/msg/Header"](seq=0, stamp=stamp, frame_id=shot.frame_id) if ros1
              else t["std_msgs/msg/Header"](stamp=stamp, frame_id=shot.frame_id))
    if shot.compressed:
        data = np.frombuffer(cv2.imencode(".png", shot.bgr)[1].tobytes(), np.uint8)
        return t["sensor_msgs/msg/CompressedImage"](header=header, format="png", data=data)
    rgb = np.ascontiguousarray(shot.bgr[:, :, ::-1])
    return t["sensor_msgs/msg/Image"](header=header, height=H, width=W, encoding="rgb8", is_bigendian=0,
                                      step=W * 3, data=rgb.reshape(-1))


def msgtype(shot: Shot) -> str:
    return "sensor_msgs/msg/CompressedImage" if shot.compressed else "sensor_msgs/msg/Image"


def _fill(w: Any, ts: Any, ros1: bool) -> None:
    """SHOTS, and a non-image topic before them, into an open bag writer."""
    serialize = ts.serialize_ros1 if ros1 else ts.serialize_cdr
    conns = {}
    for shot in SHOTS:
        if shot.topic not in conns:
            conns[shot.topic] = w.add_connection(shot.topic, msgtype(shot), typestore=ts)
    chatter = w.add_connection("/chatter", "std_msgs/msg/String", typestore=ts)
    w.write(chatter, SHOTS[0].log_ns - 1, serialize(ts.types["std_msgs/msg/String"](data="hi"), "std_msgs/msg/String"))
    for shot in SHOTS:
        w.write(conns[shot.topic], shot.log_ns, serialize(image_msg(ts, shot, ros1), msgtype(shot)))


def write_ros1(path: Path) -> Path:
    with Bag1Writer(path) as w:
        _fill(w, get_typestore(Stores.ROS1_NOETIC), ros1=True)
    return path


def write_ros2(path: Path, storage: StoragePlugin) -> Path:
    with Bag2Writer(path, version=9, storage_plugin=storage) as w:
        _fill(w, get_typestore(Stores.ROS2_HUMBLE), ros1=False)
    return path


def write_bare_mcap(path: Path) -> Path:
    """An MCAP file as a ROS 2 node logging with mcap-ros2-support (or Foxglove's recorders) writes it."""
    ts = get_typestore(Stores.ROS2_HUMBLE)
    with open(path, "wb") as f:
        w = McapRos2Writer(f)
        schemas = {m: w.register_msgdef(m, ts.generate_msgdef(m, ros_version=2)[0])
                   for m in ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage", "std_msgs/msg/String")}
        w.write_message("/chatter", schemas["std_msgs/msg/String"], {"data": "hi"}, log_time=SHOTS[0].log_ns - 1)
        for shot in SHOTS:
            header = {"stamp": {"sec": shot.stamp_ns // 10**9, "nanosec": shot.stamp_ns % 10**9},
                      "frame_id": shot.frame_id}
            if shot.compressed:
                msg = {"header": header, "format": "png", "data": cv2.imencode(".png", shot.bgr)[1].tobytes()}
            else:
                msg = {"header": header, "height": H, "width": W, "encoding": "rgb8", "is_bigendian": 0,
                       "step": W * 3, "data": np.ascontiguousarray(shot.bgr[:, :, ::-1]).tobytes()}
            w.write_message(shot.topic, schemas[msgtype(shot)], msg, log_time=shot.log_ns, publish_time=shot.log_ns)
        w.finish()
    return path


RECORDINGS = {
    "ros1.bag": lambda d: write_ros1(d / "drive.bag"),
    "rosbag2-sqlite3": lambda d: write_ros2(d / "drive_sqlite", StoragePlugin.SQLITE3),
    "rosbag2-mcap": lambda d: write_ros2(d / "drive_mcap", StoragePlugin.MCAP),
    "bare.mcap": lambda d: write_bare_mcap(d / "drive.mcap"),
}


@pytest.mark.parametrize("kind", list(RECORDINGS))
def test_frames_come_back_with_stamps_frame_ids_and_topics(kind: str, tmp_path: Path) -> None:
    path = RECORDINGS[kind](tmp_path)
    assert image_topics(path) == {"/cam_front/image_raw": "sensor_msgs/msg/Image",
                                  "/cam_rear/image_raw/compressed": "sensor_msgs/msg/CompressedImage"}
    frames = list(iter_frames(path))
    assert [(f.topic, f.stamp_ns, f.log_time_ns, f.frame_id) for f in frames] == \
        [(s.topic, s.stamp_ns, s.log_ns, s.frame_id) for s in SHOTS]  # recording order, /chatter left out
    for frame, shot in zip(frames, SHOTS, strict=True):
        np.testing.assert_array_equal(frame.image, shot.bgr)
        assert frame.image.dtype == np.uint8 and frame.image.shape == (H, W, 3)
        assert frame.encoding == ("png" if shot.compressed else "rgb8")
    # Topics by name.
    front = list(iter_frames(path, ["/cam_front/image_raw"]))
    assert [f.stamp_ns for f in front] == [SHOTS[0].stamp_ns, SHOTS[2].stamp_ns]
    with pytest.raises(RecordingError, match=r"no topic '/cam_left'.*/cam_front/image_raw"):
        next(iter_frames(path, ["/cam_left"]))
    with pytest.raises(RecordingError, match="std_msgs/msg/String"):
        next(iter_frames(path, ["/chatter"]))


def test_not_a_recording(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        next(iter_frames(tmp_path / "missing.bag"))
    junk = tmp_path / "junk.bag"
    junk.write_bytes(b"#ROSBAG V2.0\nnot really")
    with pytest.raises(RecordingError, match=r"junk\.bag"):
        next(iter_frames(junk))


# -- detections out ---------------------------------------------------------------------------------------
def test_detections_mcap_reads_back_message_by_message(tmp_path: Path) -> None:
    frames = list(iter_frames(write_ros1(tmp_path / "drive.bag")))
    boxes = [[Detection(10.0, 20.0, 30.5, 44.0, 0.9, 0, "person"), Detection(1.0, 2.0, 5.0, 9.0, 0.31, 7)], [],
             [Detection(0.0, 0.0, 64.0, 48.0, 0.5, 2, "car")]]
    out = tmp_path / "detections.mcap"
    with DetectionMcapWriter(out) as writer:
        for frame, found in zip(frames, boxes, strict=True):
            writer.write(frame, found)
    assert writer.messages == 3

    # Reader 1: mcap + mcap-ros2-support, the libraries Foxglove's own tooling builds on.
    with open(out, "rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        header = reader.get_header()
        decoded = list(reader.iter_decoded_messages())
    assert header.profile == "ros2"
    assert len(decoded) == 3
    for (schema, channel, message, msg), frame, found in zip(decoded, frames, boxes, strict=True):
        assert schema.name == DETECTIONS_TYPE and schema.encoding == "ros2msg" and channel.message_encoding == "cdr"
        assert channel.topic == frame.topic + "/detections"
        assert message.log_time == message.publish_time == frame.log_time_ns
        assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == frame.stamp_ns
        assert msg.header.frame_id == frame.frame_id
        assert len(msg.detections) == len(found)
        for d, b in zip(msg.detections, found, strict=True):
            assert d.header.frame_id == frame.frame_id and d.header.stamp.sec == msg.header.stamp.sec
            assert (d.bbox.center.position.x, d.bbox.center.position.y) == ((b.x1 + b.x2) / 2, (b.y1 + b.y2) / 2)
            assert (d.bbox.size_x, d.bbox.size_y) == (b.x2 - b.x1, b.y2 - b.y1) and d.bbox.center.theta == 0
            (hyp,) = d.results
            assert hyp.hypothesis.class_id == (b.label or str(b.class_id)) and hyp.hypothesis.score == b.score
            assert hyp.pose.pose.orientation.w == 1.0 and len(hyp.pose.covariance) == 36

    # Reader 2: rosbags, as a ROS 2 tool reads a bare MCAP file.
    with AnyReader([out]) as any_reader:
        assert {c.msgtype for c in any_reader.connections} == {DETECTIONS_TYPE}
        again = [(c.topic, t, any_reader.deserialize(raw, c.msgtype)) for c, t, raw in any_reader.messages()]
    assert [(topic, t) for topic, t, _ in again] == [(f.topic + "/detections", f.log_time_ns) for f in frames]
    assert again[0][2].detections[0].results[0].hypothesis.class_id == "person"
    assert [m.header.frame_id for _, _, m in again] == [f.frame_id for f in frames]


def test_foxglove_annotations_beside_the_detections(tmp_path: Path) -> None:
    frame = Frame(PHOTO, 1_700_000_000_123_456_789, "cam_front", "/cam_front/image_raw", 1_700_000_000_200_000_000)
    out = tmp_path / "annotated.mcap"
    with DetectionMcapWriter(out, annotations=True) as writer:
        writer.write(frame, [Detection(10.0, 20.0, 30.0, 44.0, 0.87, 2, "car")])
        writer.write(frame, [])
    with open(out, "rb") as f:
        decoded = list(make_reader(f, decoder_factories=[DecoderFactory()]).iter_decoded_messages())
    assert [(s.name, c.topic) for s, c, _, _ in decoded] == [
        (DETECTIONS_TYPE, "/cam_front/image_raw/detections"), (ANNOTATIONS_TYPE, "/cam_front/image_raw/annotations"),
        (DETECTIONS_TYPE, "/cam_front/image_raw/detections"), (ANNOTATIONS_TYPE, "/cam_front/image_raw/annotations")]
    ann = decoded[1][3]
    (outline,) = ann.points
    assert outline.type == 2 and [(p.x, p.y) for p in outline.points] == [(10, 20), (30, 20), (30, 44), (10, 44)]
    assert outline.timestamp.sec * 10**9 + outline.timestamp.nanosec == frame.stamp_ns  # matched to the image
    (text,) = ann.texts
    assert text.text == "car 0.87" and (text.position.x, text.position.y) == (10, 20)
    assert decoded[3][3].points == [] and decoded[3][3].texts == []


def test_detections_refuse_non_finite_boxes(tmp_path: Path) -> None:
    frame = Frame(PHOTO, 5, "cam", "/cam/image")
    with DetectionMcapWriter(tmp_path / "d.mcap") as writer, pytest.raises(ValueError, match="finite"):
        writer.write(frame, [Detection(float("nan"), 0, 1, 1, 0.5, 0)])


def test_foxglove_annotations_draw_a_pose_boxs_keypoints_and_skeleton(tmp_path: Path) -> None:
    from peregrine.client import Keypoint
    from peregrine.client.keypoints import COCO_SKELETON

    points = [Keypoint(100.0 + k, 50.0 + 2 * k, 0.9) for k in range(17)]
    points[9] = Keypoint(109.0, 68.0, 0.1)  # hidden: neither drawn nor joined
    frame = Frame(PHOTO, 1_700_000_000_000_000_000, "cam", "/cam/image_raw", 1_700_000_000_000_000_000)
    out = tmp_path / "pose.mcap"
    with DetectionMcapWriter(out, annotations=True) as writer:
        writer.write(frame, [Detection(90.0, 40.0, 140.0, 120.0, 0.8, 0, "person", tuple(points))])
    with open(out, "rb") as f:
        ann = list(make_reader(f, decoder_factories=[DecoderFactory()]).iter_decoded_messages())[1][3]
    outline, skeleton, dots = ann.points
    assert (outline.type, skeleton.type, dots.type) == (2, 4, 1)
    ends = [k for a, b in COCO_SKELETON if 9 not in (a, b) for k in (a, b)]
    assert [(p.x, p.y) for p in skeleton.points] == [(points[k].x, points[k].y) for k in ends]
    assert [(p.x, p.y) for p in dots.points] == [(p.x, p.y) for k, p in enumerate(points) if k != 9]


def test_foxglove_annotations_outline_a_segmentation_boxs_mask(tmp_path: Path) -> None:
    frame = Frame(PHOTO, 1_700_000_000_000_000_000, "cam", "/cam/image_raw", 1_700_000_000_000_000_000)
    out = tmp_path / "seg.mcap"
    polygon = ((12.0, 22.0), (28.0, 24.0), (20.0, 40.0))
    with DetectionMcapWriter(out, annotations=True) as writer:
        writer.write(frame, [Detection(10.0, 20.0, 30.0, 44.0, 0.87, 2, "car", (), polygon)])
    with open(out, "rb") as f:
        ann = list(make_reader(f, decoder_factories=[DecoderFactory()]).iter_decoded_messages())[1][3]
    box, mask = ann.points
    assert (box.type, mask.type) == (2, 2) and [(p.x, p.y) for p in mask.points] == list(polygon)
