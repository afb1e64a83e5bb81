"""A pose model's keypoints: their type, and how they are drawn (COCO's person skeleton).

Light on purpose (no gRPC, no OpenCV): the detection client, ``peregrine-annotate`` and the server's recording
writer (Foxglove annotations) share it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keypoint:
    """One keypoint of a pose model's box, in original-image pixels, with its visibility score in [0, 1]
    (None when the model's keypoints carry none)."""

    x: float
    y: float
    score: float | None = None


COCO_KEYPOINTS = 17  # COCO's person keypoints
# COCO's person skeleton: the limbs between its 17 keypoints (0-based; nose, eyes, ears, shoulders, elbows,
# wrists, hips, knees, ankles, left before right), drawn for a pose model of 17 keypoints.
COCO_SKELETON = ((15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
                 (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6))
KEYPOINT_MIN_SCORE = 0.5  # a keypoint whose visibility score is below this is not drawn (as ultralytics plots)


def shown(points: tuple[Keypoint, ...] | list[Keypoint]) -> list[bool]:
    """Which keypoints are drawn: those with no score or a score of at least :data:`KEYPOINT_MIN_SCORE`."""
    return [p.score is None or p.score >= KEYPOINT_MIN_SCORE for p in points]


def limbs(points: tuple[Keypoint, ...] | list[Keypoint]) -> list[tuple[int, int]]:
    """The skeleton's limbs to draw between ``points``: COCO's for 17 keypoints whose both ends are shown;
    none for other keypoint sets (their skeleton is the model's own, which exports do not carry)."""
    if len(points) != COCO_KEYPOINTS:
        return []
    visible = shown(points)
    return [(a, b) for a, b in COCO_SKELETON if visible[a] and visible[b]]
