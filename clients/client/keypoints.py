"""A pose model's keypoints and a segmentation model's mask outlines: their types, how they read from the JSON
a server writes, and how keypoints are drawn (COCO's person skeleton).

Light on purpose (no gRPC, no OpenCV): the detection client, ``peregrine-annotate`` and the server's recording
writer (Foxglove annotations) share it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Keypoint:
    """One keypoint of a pose model's box, in original-image pixels, with its visibility score in [0, 1]
    (None when the model's keypoints carry none)."""

    x: float
    y: float
    score: float | None = None


COCO_KEYPOINTS = 17  # COCO's person keypoints
def keypoints_of(values: Iterable[Sequence[float]]) -> tuple[Keypoint, ...]:
    """Keypoints from their JSON form, ``[[x, y, score], ...]`` or ``[[x, y], ...]``. Raises IndexError,
    TypeError or ValueError for values that are not."""
    return tuple(Keypoint(float(p[0]), float(p[1]), float(p[2]) if len(p) > 2 else None) for p in values)


def polygon_of(values: Iterable[Sequence[float]]) -> tuple[tuple[float, float], ...]:
    """A mask outline from its JSON form, ``[[x, y], ...]``. Raises as :func:`keypoints_of`."""
    return tuple((float(p[0]), float(p[1])) for p in values)


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
