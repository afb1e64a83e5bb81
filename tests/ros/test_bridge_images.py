"""The bridge's image handling, without ROS: what a sensor_msgs/Image becomes before it is sent to Detect."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data

pytest.importorskip("rosbags", reason="the [ros] extra is not installed")

from peregrine.server.codecs.recordings import decode_image

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


def test_other_encodings_become_rgb(bridge) -> None:  # type: ignore[no-untyped-def]
    bgr = RGB[:, :, ::-1].copy()
    np.testing.assert_array_equal(bridge.image_for_detect("bgr8", 48, 64, 192, False, bgr.tobytes()), RGB)
    raw = np.zeros((48, 64), np.uint8)
    raw[0::2, 0::2], raw[0::2, 1::2], raw[1::2, 0::2], raw[1::2, 1::2] = (
        RGB[0::2, 0::2, 0], RGB[0::2, 1::2, 1], RGB[1::2, 0::2, 1], RGB[1::2, 1::2, 2])  # rggb
    out = bridge.image_for_detect("bayer_rggb8", 48, 64, 64, False, raw.tobytes())
    np.testing.assert_array_equal(out, decode_image("bayer_rggb8", 48, 64, 64, False, raw.tobytes())[:, :, ::-1])
    assert out.shape == (48, 64, 3) and out.flags.c_contiguous


def test_vision_msgs_classes_match_the_released_package(bridge) -> None:  # type: ignore[no-untyped-def]
    if importlib.util.find_spec("genpy") is None and not Path("/usr/lib/python3/dist-packages/genpy").is_dir():
        pytest.skip("genpy (Debian's python3-genpy, with ROS 1) is not installed")
    bridge.import_rospy()
    types = bridge.ros1_vision_msgs()
    # md5 sums of vision_msgs as released for ROS 1 Noetic: subscribers of the real package connect to us.
    assert types["vision_msgs/BoundingBox2D"]._md5sum == "9ab41e2a4c8627735e5091a9abd68b02"
    assert types["geometry_msgs/Pose2D"]._md5sum == "938fa65709584ad8e77d238529be13b8"
    assert types["vision_msgs/Detection2DArray"]._type == "vision_msgs/Detection2DArray"
