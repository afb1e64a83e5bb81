"""A live ROS bridge: camera topic in, ``DetectStream`` to Peregrine, ``vision_msgs/Detection2DArray`` out.

The node subscribes to an image topic (``sensor_msgs/Image`` or, for a topic ending in ``/compressed``,
``sensor_msgs/CompressedImage``), streams the frames to a Peregrine detection pipeline over one
``DetectStream`` with a deadline per frame counted from the frame's arrival, and publishes each frame's boxes
as ``vision_msgs/Detection2DArray`` on ``<image topic>/detections`` with the image's header stamp and frame
id. Frames that arrive while the previous one is still waiting to be sent replace it (latest frame wins, as
on the server). Raw frames travel as the camera gives them, their encoding with them: the server converts
Bayer, YUV 4:2:2 and 16-bit frames with its native kernels (``--convert-on-client`` converts them here
instead, for servers that take only RGB and grey raw frames).

The watchdog of the robot example (``clients/examples/robot_loop.py``) holds every frame's deadline: when no
valid result has come by then, or a result says the frame was dropped, expired or failed, it takes the safe
action at once: a line on ``--safety-topic`` (``std_msgs/String``, ``"BRAKE <stamp> <frame id>: <why>"``),
logged and counted. A stream that breaks is reopened; the frames in flight brake by their deadlines.

The bridge talks to ROS only through :class:`RosAdapter` (subscribe, publish detections, publish a safety
line, shut down), with two adapters: ROS 1 (``rospy``, Debian's ``python3-rospy``; ``vision_msgs`` need not be
installed: its message classes are generated at run time from the definitions below, whose md5 sums are
those of the released package) and ROS 2 (``rclpy``, from a ROS 2 distribution's setup; ``vision_msgs`` 4.x,
as Humble and later ship it). ``--ros auto`` (the default) takes ROS 2 when ``rclpy`` imports, else ROS 1.
The ROS 1 adapter is tested against a live ``roscore``; ROS 2 cannot be installed from Debian 12 or PyPI,
so the ROS 2 adapter has not run where Peregrine is tested.

Run (with ``roscore`` up, or a ROS 2 setup sourced, and Peregrine serving ``yolov8n_detect``)::

    python clients/ros/detection_bridge.py --image-topic /camera/image_raw --deadline-ms 150
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from peregrine.client import Detection, DetectionClient, FrameResult, FrameStatus, PeregrineClientError, RawFrame
from peregrine.client.watchdog import Watchdog

log = logging.getLogger("peregrine_ros_bridge")

# Debian installs ROS 1's Python packages for its system interpreter; a virtual environment of the same Python
# version reads them from there (appended, so the environment's own NumPy, gRPC, ... stay first).
DEBIAN_ROS_PYTHON = "/usr/lib/python3/dist-packages"


@dataclass
class CameraFrame:
    """One image as the bridge sends it: ``image`` for Detect (RGB/grey uint8 array, a camera frame's bytes
    with their encoding, or encoded bytes), the header's ``stamp_ns`` and ``frame_id``, and ``received``
    (time.monotonic()) when it arrived."""

    image: np.ndarray | RawFrame | bytes
    stamp_ns: int
    frame_id: str
    received: float


class RosAdapter(Protocol):
    """What the bridge needs of a ROS client library."""

    def subscribe(self, topic: str, on_frame: Callable[[CameraFrame], None]) -> None: ...

    def publish_detections(self, frame: CameraFrame, detections: list[Detection]) -> None: ...

    def publish_safety(self, line: str) -> None: ...

    def is_shutdown(self) -> bool: ...

    def shutdown(self) -> None: ...


# -- the bridge ------------------------------------------------------------------------------------------
@dataclass
class BridgeSummary:
    received: int = 0  # frames that arrived on the topic
    skipped: int = 0  # replaced by a newer frame before they could be sent
    sent: int = 0
    published: int = 0  # valid results on time, published
    brakes: int = 0
    why: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)

    def format(self) -> str:
        why = ", ".join(f"{k} {v}" for k, v in sorted(self.why.items())) or "none"
        errors = ", ".join(f"{k} {v}" for k, v in sorted(self.errors.items())) or "none"
        return (f"frames {self.received} received, {self.skipped} skipped (a newer one came), {self.sent} sent, "
                f"{self.published} published on time; brakes {self.brakes} ({why}); errors {errors}")


class DetectionBridge:
    """Frames offered by a subscriber go to Peregrine over ``DetectStream``; results go back to ROS."""

    def __init__(self, ros: RosAdapter, client: DetectionClient, *, model: str = "", deadline_s: float = 0.15,
                 max_in_flight: int | None = None, score_threshold: float | None = None) -> None:
        self.ros = ros
        self.client = client
        self.model = model
        self.deadline_s = deadline_s
        self.max_in_flight = max_in_flight
        self.score_threshold = score_threshold
        self.summary = BridgeSummary()
        self._lock = threading.Condition()
        self._waiting: CameraFrame | None = None
        self._in_flight: dict[int, CameraFrame] = {}  # bridge frame number -> frame
        self._next = 0
        self._stop = False
        self.watchdog = Watchdog(lambda key: self._brake(key, "deadline passed"))

    # called from the ROS subscriber's thread
    def offer(self, frame: CameraFrame) -> None:
        with self._lock:
            self.summary.received += 1
            if self._waiting is not None:
                self.summary.skipped += 1
            self._waiting = frame
            self._lock.notify()

    def stop(self) -> None:
        with self._lock:
            self._stop = True
            self._lock.notify_all()

    def _frames(self, first: list[int]) -> Iterator[tuple[np.ndarray | bytes, int]]:
        """Frames for one stream as (image, capture time µs); ``first`` gets the number of its first frame."""
        while True:
            with self._lock:
                while self._waiting is None and not self._stop:
                    self._lock.wait(0.1)
                    if self.ros.is_shutdown():
                        self._stop = True
                if self._stop:
                    return
                frame, self._waiting = self._waiting, None
                assert frame is not None
                key = self._next
                self._next += 1
                self._in_flight[key] = frame
                self.summary.sent += 1
                if not first:
                    first.append(key)
            self.watchdog.arm(key, frame.received + self.deadline_s)
            yield frame.image, frame.stamp_ns // 1000

    def _brake(self, key: int, why: str) -> None:
        with self._lock:
            frame = self._in_flight.pop(key, None)
            self.summary.brakes += 1
            self.summary.why[why] += 1
        stamp, frame_id = (frame.stamp_ns, frame.frame_id) if frame else (0, "")
        log.warning("frame %d.%09d %s: no valid result within %.0f ms (%s) -> BRAKE", stamp // 10**9,
                    stamp % 10**9, frame_id, self.deadline_s * 1e3, why)
        self.ros.publish_safety(f"BRAKE {stamp} {frame_id}: {why}")

    def _act(self, key: int, result: FrameResult) -> None:
        if result.status is not FrameStatus.OK:
            why = {FrameStatus.DROPPED: "dropped", FrameStatus.DEADLINE_EXCEEDED: "expired on the server"}.get(
                result.status, "failed")
            if result.status is FrameStatus.ERROR and result.error is not None:
                self.summary.errors[result.error.code.name] += 1
            if self.watchdog.disarm(key):
                self._brake(key, why)
            return
        if not self.watchdog.disarm(key):
            with self._lock:
                self.summary.why["late result"] += 1
            return
        with self._lock:
            frame = self._in_flight.pop(key)
            self.summary.published += 1
        self.ros.publish_detections(frame, result.detections)

    def run(self) -> BridgeSummary:
        """Stream until :meth:`stop` or ROS shuts down; a failed stream is reopened after a short pause."""
        try:
            while not self._stop and not self.ros.is_shutdown():
                first: list[int] = []
                try:
                    for result in self.client.stream(self._frames(first), model=self.model,
                                                     deadline_s=self.deadline_s, max_in_flight=self.max_in_flight,
                                                     score_threshold=self.score_threshold):
                        self._act(first[0] + result.sequence, result)
                except PeregrineClientError as e:  # frames in flight brake by their deadlines
                    self.summary.errors[e.code.name] += 1
                    log.error("stream failed: %s; opening a new one", e)
                    time.sleep(0.5)
        finally:
            self.watchdog.close()
        return self.summary


# -- ROS 1 (rospy) ---------------------------------------------------------------------------------------
_SEP = "=" * 80 + "\n"
# vision_msgs as released for ROS 1 Noetic; Header, geometry_msgs and sensor_msgs/Image as in ROS 1.
VISION_MSGS_ROS1 = "".join([
    "Header header\nDetection2D[] detections\n",
    _SEP, "MSG: std_msgs/Header\nuint32 seq\ntime stamp\nstring frame_id\n",
    _SEP, "MSG: vision_msgs/Detection2D\nHeader header\nObjectHypothesisWithPose[] results\nBoundingBox2D bbox\n"
          "sensor_msgs/Image source_img\n",
    _SEP, "MSG: vision_msgs/ObjectHypothesisWithPose\nint64 id\nfloat64 score\ngeometry_msgs/PoseWithCovariance pose\n",
    _SEP, "MSG: geometry_msgs/PoseWithCovariance\ngeometry_msgs/Pose pose\nfloat64[36] covariance\n",
    _SEP, "MSG: geometry_msgs/Pose\ngeometry_msgs/Point position\ngeometry_msgs/Quaternion orientation\n",
    _SEP, "MSG: geometry_msgs/Point\nfloat64 x\nfloat64 y\nfloat64 z\n",
    _SEP, "MSG: geometry_msgs/Quaternion\nfloat64 x\nfloat64 y\nfloat64 z\nfloat64 w\n",
    _SEP, "MSG: vision_msgs/BoundingBox2D\ngeometry_msgs/Pose2D center\nfloat64 size_x\nfloat64 size_y\n",
    _SEP, "MSG: geometry_msgs/Pose2D\nfloat64 x\nfloat64 y\nfloat64 theta\n",
    _SEP, "MSG: sensor_msgs/Image\nHeader header\nuint32 height\nuint32 width\nstring encoding\nuint8 is_bigendian\n"
          "uint32 step\nuint8[] data\n",
])


def ros1_vision_msgs() -> dict[str, Any]:
    """The ROS 1 message classes of vision_msgs/Detection2DArray and its parts, generated with genpy."""
    import genpy.dynamic

    return genpy.dynamic.generate_dynamic("vision_msgs/Detection2DArray", VISION_MSGS_ROS1)


def image_for_detect(encoding: str, height: int, width: int, step: int, is_bigendian: bool, data: bytes,
                     convert_on_client: bool = False) -> np.ndarray | RawFrame:
    """A ``sensor_msgs/Image`` as what Detect takes: packed rgb8 and mono8 as arrays (no copy; every server
    takes them), any other encoding as its bytes and encoding (:class:`RawFrame`) for the server to convert
    with its native kernels. ``convert_on_client``: for servers older than raw camera encodings in Detect,
    convert here to RGB instead (bgr8 flipped; Bayer, YUV, 16-bit through the recordings codec, which needs
    Peregrine's server package and the [ros] extra)."""
    buf = np.frombuffer(data, np.uint8)
    if encoding == "rgb8" and step == width * 3:
        return buf[: height * step].reshape(height, width, 3)
    if encoding in ("mono8", "8UC1") and step == width:
        return buf[: height * step].reshape(height, width)
    if not convert_on_client:
        return RawFrame(data if isinstance(data, bytes) else buf, height, width, encoding, step, is_bigendian)
    from peregrine.server.codecs.recordings import decode_image

    return np.ascontiguousarray(decode_image(encoding, height, width, step, is_bigendian, data)[:, :, ::-1])


def camera_frame(msg: Any, topic: str, stamp_ns: int, convert_on_client: bool) -> CameraFrame:
    """A ``sensor_msgs/Image`` or (topic ending in ``/compressed``) ``CompressedImage`` of either ROS as the
    bridge sends it, stamped ``stamp_ns``."""
    received = time.monotonic()
    if topic.endswith("/compressed"):
        image: np.ndarray | RawFrame | bytes = bytes(msg.data)  # JPEG/PNG: the server decodes it
    else:
        image = image_for_detect(msg.encoding, msg.height, msg.width, msg.step, bool(msg.is_bigendian),
                                 bytes(msg.data), convert_on_client)
    return CameraFrame(image, stamp_ns, msg.header.frame_id, received)


class Ros1Adapter:
    """The bridge's ROS side on ROS 1: one rospy node, a subscriber, two publishers."""

    def __init__(self, name: str, image_topic: str, detections_topic: str, safety_topic: str,
                 convert_on_client: bool = False) -> None:
        import rospy
        from std_msgs.msg import String

        self.rospy = rospy
        rospy.init_node(name, anonymous=True, disable_signals=True)
        self.types = ros1_vision_msgs()
        self.array_type = self.types["vision_msgs/Detection2DArray"]
        self.detections = rospy.Publisher(detections_topic, self.array_type, queue_size=10)
        self.safety = rospy.Publisher(safety_topic, String, queue_size=10)
        self.string_type = String
        self.image_topic = image_topic
        self.convert_on_client = convert_on_client

    def subscribe(self, topic: str, on_frame: Callable[[CameraFrame], None]) -> None:
        from sensor_msgs.msg import CompressedImage, Image

        def on_image(msg: Any) -> None:
            on_frame(camera_frame(msg, topic, msg.header.stamp.to_nsec(), self.convert_on_client))

        msg_type = CompressedImage if topic.endswith("/compressed") else Image
        self.rospy.Subscriber(topic, msg_type, on_image, queue_size=1, buff_size=1 << 26)

    def publish_detections(self, frame: CameraFrame, detections: list[Detection]) -> None:
        t = self.types
        rospy = self.rospy
        stamp = rospy.Time(secs=frame.stamp_ns // 10**9, nsecs=frame.stamp_ns % 10**9)
        header = t["std_msgs/Header"](frame_id=frame.frame_id, stamp=stamp)
        out = []
        for d in detections:
            pose = t["geometry_msgs/PoseWithCovariance"](
                pose=t["geometry_msgs/Pose"](orientation=t["geometry_msgs/Quaternion"](w=1.0)))
            out.append(t["vision_msgs/Detection2D"](
                header=header,
                results=[t["vision_msgs/ObjectHypothesisWithPose"](id=int(d.class_id), score=float(d.score),
                                                                    pose=pose)],
                bbox=t["vision_msgs/BoundingBox2D"](
                    center=t["geometry_msgs/Pose2D"](x=(d.x1 + d.x2) / 2, y=(d.y1 + d.y2) / 2, theta=0.0),
                    size_x=float(d.x2 - d.x1), size_y=float(d.y2 - d.y1))))
        self.detections.publish(self.array_type(header=header, detections=out))

    def publish_safety(self, line: str) -> None:
        self.safety.publish(self.string_type(data=line))

    def is_shutdown(self) -> bool:
        return bool(self.rospy.is_shutdown())

    def shutdown(self) -> None:
        self.rospy.signal_shutdown("done")


# -- ROS 2 (rclpy) ---------------------------------------------------------------------------------------
class Ros2Adapter:
    """The bridge's ROS side on ROS 2: one rclpy node spun by an executor in a thread of its own, a
    subscription with the sensor-data QoS (best effort, depth 5: a late frame is worth nothing), two
    publishers. vision_msgs 4.x: a hypothesis's ``class_id`` is a string (the class number as text, as
    ROS 1's int64 id) and a box's centre a ``Pose2D`` with a ``position``."""

    def __init__(self, name: str, image_topic: str, detections_topic: str, safety_topic: str,
                 convert_on_client: bool = False) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from std_msgs.msg import String
        from vision_msgs.msg import Detection2DArray

        self.rclpy = rclpy
        rclpy.init()
        self.node = rclpy.create_node(name)
        self.detections = self.node.create_publisher(Detection2DArray, detections_topic, 10)
        self.safety = self.node.create_publisher(String, safety_topic, 10)
        self.string_type = String
        self.image_topic = image_topic
        self.convert_on_client = convert_on_client
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self._spinner = threading.Thread(target=self.executor.spin, name="ros2-spin", daemon=True)
        self._spinner.start()

    def subscribe(self, topic: str, on_frame: Callable[[CameraFrame], None]) -> None:
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import CompressedImage, Image

        def on_image(msg: Any) -> None:
            stamp = msg.header.stamp
            on_frame(camera_frame(msg, topic, stamp.sec * 10**9 + stamp.nanosec, self.convert_on_client))

        msg_type = CompressedImage if topic.endswith("/compressed") else Image
        self.node.create_subscription(msg_type, topic, on_image, qos_profile_sensor_data)

    def publish_detections(self, frame: CameraFrame, detections: list[Detection]) -> None:
        from builtin_interfaces.msg import Time
        from std_msgs.msg import Header
        from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose

        header = Header(stamp=Time(sec=frame.stamp_ns // 10**9, nanosec=frame.stamp_ns % 10**9),
                        frame_id=frame.frame_id)
        out = []
        for d in detections:
            hypothesis = ObjectHypothesisWithPose()
            hypothesis.hypothesis.class_id = str(int(d.class_id))
            hypothesis.hypothesis.score = float(d.score)
            hypothesis.pose.pose.orientation.w = 1.0
            detection = Detection2D(header=header, results=[hypothesis])
            detection.bbox.center.position.x = float(d.x1 + d.x2) / 2
            detection.bbox.center.position.y = float(d.y1 + d.y2) / 2
            detection.bbox.size_x = float(d.x2 - d.x1)
            detection.bbox.size_y = float(d.y2 - d.y1)
            out.append(detection)
        self.detections.publish(Detection2DArray(header=header, detections=out))

    def publish_safety(self, line: str) -> None:
        self.safety.publish(self.string_type(data=line))

    def is_shutdown(self) -> bool:
        return not self.rclpy.ok()

    def shutdown(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.rclpy.try_shutdown()


def ros_adapter(which: str, *args: Any) -> Ros1Adapter | Ros2Adapter:
    """The adapter for ``which`` ("1", "2" or "auto": ROS 2 when rclpy imports, else ROS 1)."""
    if which == "2" or (which == "auto" and importlib.util.find_spec("rclpy") is not None):
        return Ros2Adapter(*args)
    import_rospy()
    return Ros1Adapter(*args)


def import_rospy() -> None:
    """Make Debian's ROS 1 Python packages importable when this interpreter does not see them."""
    if importlib.util.find_spec("rospy") is None and os.path.isdir(DEBIAN_ROS_PYTHON):
        sys.path.append(DEBIAN_ROS_PYTHON)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="detection_bridge", description=__doc__.split("\n\n")[0])
    p.add_argument("--image-topic", required=True, help="sensor_msgs/Image topic (…/compressed: CompressedImage)")
    p.add_argument("--detections-topic", help="vision_msgs/Detection2DArray out (default: <image topic>/detections)")
    p.add_argument("--safety-topic", default="/peregrine/safety", help="std_msgs/String BRAKE lines (default: "
                   "%(default)s)")
    p.add_argument("-u", "--url", default="127.0.0.1:8001", help="Peregrine gRPC address (default %(default)s)")
    p.add_argument("--model", default="", help="detection pipeline (default: the server's only one)")
    p.add_argument("--deadline-ms", type=float, default=150.0, help="per-frame budget from arrival (default 150)")
    p.add_argument("--max-in-flight", type=int, help="frames the server runs at once on the stream")
    p.add_argument("--score-threshold", type=float)
    p.add_argument("--node-name", default="peregrine_detection_bridge")
    p.add_argument("--ros", choices=("auto", "1", "2"), default="auto",
                   help="ROS 1 (rospy) or ROS 2 (rclpy); auto: ROS 2 when rclpy imports (default)")
    p.add_argument("--convert-on-client", action="store_true",
                   help="convert Bayer, YUV and 16-bit frames to RGB here (for servers whose Detect takes only "
                        "RGB/grey raw frames; needs the [ros] extra); default: the server converts them")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    """Runs the node until SIGINT/SIGTERM or ROS shutdown; prints a summary. Exit 2 when ROS is missing."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(message)s")
    try:
        ros = ros_adapter(args.ros, args.node_name, args.image_topic,
                          args.detections_topic or args.image_topic + "/detections", args.safety_topic,
                          args.convert_on_client)
    except ImportError as e:
        print(f"detection_bridge: ROS is not installed ({e}); ROS 1 on Debian: apt install python3-rospy "
              "python3-sensor-msgs; ROS 2: source its setup (with ros-<distro>-vision-msgs)", file=sys.stderr)
        return 2
    client = DetectionClient(args.url, deadline_s=30.0)
    bridge = DetectionBridge(ros, client, model=args.model, deadline_s=args.deadline_ms / 1e3,
                             max_in_flight=args.max_in_flight, score_threshold=args.score_threshold)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: bridge.stop())
    ros.subscribe(args.image_topic, bridge.offer)
    print("detection_bridge: ready", flush=True)
    try:
        summary = bridge.run()
    finally:
        client.close()
        ros.shutdown()
    print(summary.format(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
