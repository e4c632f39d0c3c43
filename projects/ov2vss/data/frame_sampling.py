"""Which frames one prediction looks at: the temporal window and the random frame.

For target frame ``t`` of a video with ``N`` frames the *window* is
``[t - k for k in REFERENCE_OFFSETS] + [t]`` (paper IV-B: t-9, t-6, t-3, t), each index clamped
to ``[0, N-1]``. Random frame enhancement (paper III-B) adds one distant "random" frame:

* training: drawn uniformly from the video's frames outside the window (when the window already
  covers the whole video: the frame farthest from ``t``);
* inference: the frame farthest in time from ``t`` (frame 0 or N-1, ties go to frame 0).

The video mapper (datasets) and the streaming predictor (frames one at a time) both use these
functions, so both build the same windows.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Set

import numpy as np

__all__ = ["window_indices", "farthest_frame", "select_random_frame", "inference_random_frames"]


def window_indices(target: int, num_frames: int, offsets: Sequence[int]) -> List[int]:
    """Frame indices of the window of ``target``.

    Args:
        target: index of the target frame t.
        num_frames: number of frames N of the video.
        offsets: temporal distances k of the reference frames t-k, in window order.

    Returns:
        ``[t - k for k in offsets]`` (each clamped to ``[0, N-1]``), then ``t``.

    Raises:
        ValueError: the video is empty or ``target`` lies outside it.
    """
    if num_frames <= 0:
        raise ValueError("a video needs at least one frame")
    if not 0 <= target < num_frames:
        raise ValueError(f"frame index {target} is outside the video (0..{num_frames - 1})")
    refs = [min(max(target - int(k), 0), num_frames - 1) for k in offsets]
    return refs + [target]


def farthest_frame(target: int, num_frames: int) -> int:
    """The frame farthest in time from ``target``: 0 or ``num_frames - 1`` (ties go to 0)."""
    return 0 if target >= num_frames - 1 - target else num_frames - 1


def select_random_frame(
    target: int,
    num_frames: int,
    window: Sequence[int],
    training: bool,
    enabled: bool = True,
) -> int:
    """Index of the random frame of ``target`` (see the module docstring).

    Args:
        target: index of the target frame.
        num_frames: number of frames of the video (for a live stream: the frames seen so far).
        window: the target's window (:func:`window_indices`); training never draws from it.
        training: draw uniformly outside the window (one ``np.random.randint`` call on numpy's
            global generator, only when there is a frame to draw) instead of taking the
            farthest frame.
        enabled: ``INPUT.TEMPORAL.RANDOM_FRAME``; off, the target is its own random frame.
    """
    if not enabled:
        return target
    if training:
        taken = set(window)
        candidates = [i for i in range(num_frames) if i not in taken]
        if candidates:
            return candidates[np.random.randint(len(candidates))]
    return farthest_frame(target, num_frames)


def inference_random_frames(num_frames: Optional[int]) -> Set[int]:
    """The frames inference can pick as a random frame (the range of :func:`farthest_frame`):
    frame 0 and the last frame; for a live stream (``num_frames=None``, the future unknown)
    only frame 0, the farthest frame seen so far."""
    if num_frames is None:
        return {0}
    return {0, num_frames - 1}
