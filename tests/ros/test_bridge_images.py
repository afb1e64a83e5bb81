"""The bridge's image handling, without ROS: what a sensor_msgs/Image becomes before it is sent to Detect
(as it is, with its encoding, for the server to convert; or converted here for older servers)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data

pytest.importorskip("rosbags", reason="the [ros] extra is not installed")

from peregrine.client import RawFrame
from peregrine.client.detection import raw_message

BRIDGE = Path(__file__).resolve().parents[2] / "clients" / "ros" / "detection_bridge.py"


@pytest.fixture(scope="module")
def bridge():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("detection_bridge", BRIDGE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["detection_bridge"] = module
    spec.loader.exec_module(module)
    return module


RGB = np.ascontiguousarray(cv2.resize(skimage.data.astronaut(), (64, 48), interpolation=cv2.INTER_AREA))


def test_rgb8_and_mono8_are_sent_as_they_are(bridge) -> None:  # type: ignore[no-untyped-def]
    data = RGB.tobytes()
    out = bridge.image_for_detect("rgb8", 48, 64, 192, False, data)
    np.testing.assert_array_equal(out, RGB)
    assert not out.flags.owndata  # a view of the message's bytes, no copy
    grey = RGB[:, :, 0].copy()
    np.testing.assert_array_equal(bridge.image_for_detect("mono8", 48, 64, 64, False, grey.tobytes()), grey)


def rggb(rgb: np.ndarray) -> np.ndarray:
    raw = np.zeros(rgb.shape[:2], np.uint8)
    raw[0::2, 0::2], raw[0::2, 1::2], raw[1::2, 0::2], raw[1::2, 1::2] = (
        rgb[0::2, 0::2, 0], rgb[0::2, 1::2, 1], rgb[1::2, 0::2, 1], rgb[1::2, 1::2, 2])
    return raw


def test_other_encodings_go_to_the_server_as_they_are(bridge) -> None:  # type: ignore[no-untyped-def]
    """Bayer, YUV, 16-bit, bgr8 and padded rows: the message's bytes with their encoding, step and byte order."""
    raw = rggb(RGB).tobytes()
    frame = bridge.image_for_detect("bayer_rggb8", 48, 64, 64, False, raw)
    assert frame == RawFrame(raw, 48, 64, "bayer_rggb8", 64, False)
    assert frame.data is raw  # no copy
    wide = (RGB[:, :, 0].astype(">u2") * 257).tobytes()
    assert bridge.image_for_detect("mono16", 48, 64, 128, True, wide) == RawFrame(wide, 48, 64, "mono16", 128, True)
    padded = np.zeros((48, 200), np.uint8)
    padded[:, :192] = RGB.reshape(48, -1)
    frame = bridge.image_for_detect("rgb8", 48, 64, 200, False, padded.tobytes())
    assert isinstance(frame, RawFrame) and (frame.encoding, frame.step) == ("rgb8", 200)
    message = raw_message(frame)  # what the client puts on the wire
    assert (message.encoding, message.step, message.height, message.width) == ("rgb8", 200, 48, 64)
    assert message.data == padded.tobytes()


def test_convert_on_client_makes_rgb_for_older_servers(bridge) -> None:  # type: ignore[no-untyped-def]
    bgr = RGB[:, :, ::-1].copy()
    np.testing.assert_array_equal(bridge.image_for_detect("bgr8", 48, 64, 192, False, bgr.tobytes(), True), RGB)
    raw = rggb(RGB)
    out = bridge.image_for_detect("bayer_rggb8", 48, 64, 64, False, raw.tobytes(), True)
    np.testing.assert_array_equal(out, cv2.cvtColor(raw, cv2.COLOR_BayerBG2RGB))  # cv_bridge's code, as RGB
    assert out.shape == (48, 64, 3) and out.flags.c_contiguous


def test_the_bridge_has_a_convert_on_client_option(bridge) -> None:  # type: ignore[no-untyped-def]
    args = bridge.build_parser().parse_args(["--image-topic", "/camera/image_raw", "--convert-on-client"])
    assert args.convert_on_client
    assert not bridge.build_parser().parse_args(["--image-topic", "/camera/image_raw"]).convert_on_client


def test_vision_msgs_classes_match_the_released_package(bridge) -> None:  # type: ignore[no-untyped-def]
    if importlib.util.find_spec("genpy") is None and not Path("/usr/lib/python3/dist-packages/genpy").is_dir():
        pytest.skip("genpy (Debian's python3-genpy, with ROS 1) is not installed")
    bridge.import_rospy()
    types = bridge.ros1_vision_msgs()
    # md5 sums of vision_msgs as released for ROS 1 Noetic: subscribers of the real package connect to us.
    assert types["vision_msgs/BoundingBox2D"]._md5sum == "9ab41e2a4c8627735e5091a9abd68b02"
    assert types["geometry_msgs/Pose2D"]._md5sum == "938fa65709584ad8e77d238529be13b8"
    assert types["vision_msgs/Detection2DArray"]._type == "vision_msgs/Detection2DArray"
