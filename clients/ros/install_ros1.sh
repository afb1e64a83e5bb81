#!/bin/sh
# ROS 1 from Debian for the live ROS bridge (clients/ros/detection_bridge.py) and its test (tests/ros):
# roscore, rosbag, rospy and sensor_msgs. Run by `make test`. It installs only where it can (root with
# apt-get and Debian's ROS packages); elsewhere it says so and tests/ros skips with the reason.
PKGS="ros-core python3-rospy python3-sensor-msgs python3-rosbag"
if command -v roscore >/dev/null 2>&1 && command -v rosbag >/dev/null 2>&1 \
    && [ -d /usr/lib/python3/dist-packages/sensor_msgs ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install_ros1: not installing ROS 1 ($PKGS): needs root and apt-get; tests/ros will skip" >&2
  exit 0
fi
apt-cache show ros-core >/dev/null 2>&1 || apt-get update -qq || true
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $PKGS >/dev/null || {
  echo "install_ros1: apt-get could not install $PKGS; tests/ros will skip" >&2
  exit 0
}
