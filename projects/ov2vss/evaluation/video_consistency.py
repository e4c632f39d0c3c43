"""Video consistency ``mVC<n>``, as VSPW's ``VC_perclip.py`` computes it (docs/METRICS.md).

Per video, over its evaluated frames in frame order, every window of ``n`` frames starting at
``i in range(len - n)`` scores ``|G & P| / |G|`` with ``G = AND_j (GT_i == GT_i+j)`` and
``P = AND_j (Pred_i == Pred_i+j)``; ``mVC<n>`` is the mean over the windows of all videos.

One code path whatever the order in which frames arrive: each video (:class:`VideoWindows`)
takes its frames by position; a frame that is the next one in order is scored at once (its
windows complete) and only the last ``max(windows)`` frames are kept, decoded while the video
is being read and zlib-compressed once another video's frame comes; a frame that comes early
waits, compressed, until the frames before it have arrived. Frames fed video by video in
order (streaming evaluation) are thus scored as they come, holding at most ``max(windows)``
frames; shuffled or split across processes, the waiting frames are scored when the
processes' states are merged (:func:`merge_videos`) or, after a frame that was never
evaluated, when the video is finished (:meth:`VideoWindows.finish`): the evaluated frames
then follow each other as if the missing one were not part of the video.
"""

from __future__ import annotations

import math
import zlib
from collections import OrderedDict, defaultdict, deque
from typing import Any, Deque, Dict, Iterable, List, NamedTuple, Optional, Sequence, Set, Tuple

import numpy as np

__all__ = [
    "FrameKey",
    "VideoConsistency",
    "VideoKey",
    "VideoWindows",
    "check_windows",
    "compress_map",
    "decompress_map",
    "map_dtype",
    "mean_scores",
    "merge_videos",
    "video_key",
]

# A video is the frame sequence its records index into: records with the same video_id and
# the same video_frames list (a Cityscapes sequence with several annotated frames has one
# 30-frame snippet per annotated frame, each its own video here).
VideoKey = Tuple[str, str]  # (video_id, first path of video_frames, "" without the list)
FrameKey = Tuple[str, str, int]  # VideoKey + (frame_index,)


def video_key(record: Dict[str, Any]) -> VideoKey:
    """The video a record belongs to (see ``VideoKey``)."""
    frames = record.get("video_frames")
    return str(record["video_id"]), str(frames[0]) if frames else ""


def check_windows(vc_windows: Sequence[int]) -> Tuple[int, ...]:
    """The window lengths, sorted and de-duplicated; each must be an integer >= 2."""
    windows = tuple(int(n) for n in vc_windows)
    bad = [n for n in vc_windows if int(n) != n or n < 2]
    if bad:
        raise ValueError(
            f"vc_windows must be integers >= 2 (frames per window), got {list(vc_windows)}"
        )
    return tuple(sorted(set(windows)))


def map_dtype(num_classes: int, ignore_label: int) -> Any:
    """The smallest dtype that holds raw masks, label maps and predictions of a dataset."""
    return np.uint8 if num_classes <= 256 and 0 <= ignore_label <= 255 else np.int32


def compress_map(label_map: np.ndarray, dtype: Any) -> bytes:
    """A label map as zlib-compressed bytes, so that a whole VSPW split (~24.5k frames of
    480x853) fits in memory and can be gathered cheaply."""
    # level 1: label maps are mostly flat regions, higher levels barely help and cost time
    return zlib.compress(np.ascontiguousarray(label_map, dtype=dtype).tobytes(), 1)


def decompress_map(data: bytes, shape: Tuple[int, int], dtype: Any) -> np.ndarray:
    """The inverse of :func:`compress_map`."""
    return np.frombuffer(zlib.decompress(data), dtype=dtype).reshape(shape)


class _Waiting(NamedTuple):
    """A frame that arrived before the frames preceding it, compressed."""

    gt_file: str
    gt: bytes  # ground truth of the video consistency: raw mask values
    pred: bytes  # argmax prediction


class VideoWindows:
    """The VC windows of one video, fed its frames by position (module docstring).

    Args:
        windows: window lengths n.
        video_id: for error messages.
        num_frames: the video's annotated frames: once the last one is scored no window can
            start any more and the held frames are dropped.
        dtype: of the held maps (:func:`map_dtype`).

    Scores are kept per window length in the order of the window start, as the script lists
    them.
    """

    def __init__(self, windows: Sequence[int], video_id: str, num_frames: int, dtype: Any):
        self.windows = tuple(windows)
        self.video_id = video_id
        self.num_frames = int(num_frames)
        self.dtype = dtype
        self.next = 0  # position of the next frame in order
        self.shape: Optional[Tuple[int, int]] = None
        self.first_file = ""
        # the last frames (GT, prediction) while windows may start at them; compressed (bytes)
        # while parked
        self.tail: Deque[Tuple[Any, Any]] = deque(maxlen=max(self.windows))
        self.parked = False
        self.waiting: Dict[int, _Waiting] = {}
        self.scores: Dict[int, List[float]] = {n: [] for n in self.windows}

    @property
    def frames_held(self) -> int:
        return len(self.tail) + len(self.waiting)

    def add(self, position: int, gt: np.ndarray, pred: np.ndarray, gt_file: str) -> None:
        """Add a frame: its position among the video's annotated frames, its VC ground truth
        (``gt_file``) and argmax prediction."""
        self._check_size(tuple(gt.shape), gt_file, self.first_file)
        if position != self.next:  # frames before it are missing: wait for them
            self.waiting[position] = _Waiting(
                gt_file, compress_map(gt, self.dtype), compress_map(pred, self.dtype)
            )
            return
        self._push(gt, pred)
        self._drain()

    def finish(self) -> None:
        """No frame will arrive any more: the waiting ones are scored in order, past the
        frames that were never evaluated (as VC_perclip.py over the masks present)."""
        while self.waiting:
            self.next = min(self.waiting)
            self._drain()
        self.tail.clear()

    def park(self) -> None:
        """Compress the held frames: another video is being read (they are decompressed
        when this video's next frame comes)."""
        if not self.parked:
            self.tail = self._converted(compress_map)
            self.parked = True

    def merge(self, other: "VideoWindows") -> None:
        """Add the frames of the same video held by another process (its frames are all
        waiting: the frame at position 0 was evaluated once, on one of the two)."""
        if other.next:
            raise RuntimeError(f"video '{self.video_id}' was started by two processes")
        if other.shape is not None:
            self._check_size(other.shape, other.first_file, self.first_file)
        self.waiting.update(other.waiting)
        self._drain()

    def copy(self) -> "VideoWindows":
        """A copy to continue (the held frames are shared: they are only read)."""
        new = VideoWindows(self.windows, self.video_id, self.num_frames, self.dtype)
        new.next, new.shape, new.first_file = self.next, self.shape, self.first_file
        new.tail.extend(self.tail)
        new.parked = self.parked
        new.waiting = dict(self.waiting)
        new.scores = {n: list(v) for n, v in self.scores.items()}
        return new

    def _check_size(self, shape: Tuple[int, int], gt_file: str, first_file: str) -> None:
        if self.shape is None:
            self.shape, self.first_file = shape, gt_file
        elif shape != self.shape:
            raise ValueError(
                f"frames of video '{self.video_id}' differ in size: {first_file} is "
                f"{self.shape} but {gt_file} is {shape} (HxW)"
            )

    def _drain(self) -> None:
        """Score the waiting frames that now follow in order."""
        while self.next in self.waiting:
            frame = self.waiting.pop(self.next)
            self._push(
                decompress_map(frame.gt, self.shape, self.dtype),
                decompress_map(frame.pred, self.shape, self.dtype),
            )

    def _converted(self, convert: Any) -> Deque[Tuple[Any, Any]]:
        # compress_map / decompress_map applied to the held frames
        args = (self.dtype,) if convert is compress_map else (self.shape, self.dtype)
        return deque(
            ((convert(g, *args), convert(p, *args)) for g, p in self.tail),
            maxlen=max(self.windows),
        )

    def _push(self, gt: np.ndarray, pred: np.ndarray) -> None:
        if self.parked:
            self.tail, self.parked = self._converted(decompress_map), False
        # the window of the n frames before this one is complete: the script takes
        # i in range(len - n), so a window counts only when some frame follows it
        for n in self.windows:
            if len(self.tail) >= n:
                self._score(n)
        self.tail.append(
            (np.ascontiguousarray(gt, self.dtype), np.ascontiguousarray(pred, self.dtype))
        )
        self.next += 1
        if self.next >= self.num_frames:  # the video's last frame: no window can start
            self.tail.clear()

    def _score(self, n: int) -> None:
        frames = list(self.tail)[-n:]
        ref_gt, ref_pred = frames[0]
        gt_same = np.ones(self.shape, dtype=bool)  # G = AND_j (GT_i == GT_i+j)
        pred_same = np.ones(self.shape, dtype=bool)  # P = AND_j (Pred_i == Pred_i+j)
        for gt_j, pred_j in frames[1:]:
            gt_same &= ref_gt == gt_j
            pred_same &= ref_pred == pred_j
        consistent_gt = int(gt_same.sum())
        if consistent_gt:  # |G| = 0 is NaN in the script, left out of its nanmean
            both = int(np.logical_and(gt_same, pred_same).sum())
            self.scores[n].append(both / consistent_gt)

    def __getstate__(self) -> Dict[str, Any]:
        # gathered across processes: the held frames travel compressed
        state = dict(self.__dict__)
        if not self.parked:
            state["tail"], state["parked"] = self._converted(compress_map), True
        return state


class VideoConsistency:
    """The :class:`VideoWindows` of every video of a dataset.

    Args:
        windows: window lengths n (:func:`check_windows`).
        records: the dataset's records (``video_id``, ``frame_index``, ``video_frames``):
            the annotated frames of every video, in frame order.
        dtype: of the held maps (:func:`map_dtype`).
    """

    def __init__(self, windows: Sequence[int], records: Iterable[Dict[str, Any]], dtype: Any):
        self.windows = tuple(windows)
        self.dtype = dtype
        indices: Dict[VideoKey, Set[int]] = defaultdict(set)
        for r in records:
            indices[video_key(r)].add(int(r["frame_index"]))
        # every video's annotated frames: frame_index -> position in frame order
        self.positions: Dict[VideoKey, Dict[int, int]] = {
            v: {f: i for i, f in enumerate(sorted(frames))} for v, frames in indices.items()
        }
        self.videos: Dict[VideoKey, VideoWindows] = {}
        self._reading: Optional[VideoKey] = None  # the video of the last frame added

    @property
    def frames_held(self) -> int:
        """Frames whose maps are held now (for windows still to come, or waiting)."""
        return sum(v.frames_held for v in self.videos.values())

    def add(self, key: FrameKey, gt: np.ndarray, pred: np.ndarray, gt_file: str) -> None:
        """Add an evaluated frame (its key, VC ground truth and argmax prediction)."""
        video, positions = key[:2], self.positions[key[:2]]
        if self._reading not in (None, video):  # only the video being read stays decoded
            self.videos[self._reading].park()
        self._reading = video
        windows = self.videos.get(video)
        if windows is None:
            windows = VideoWindows(self.windows, video[0], len(positions), self.dtype)
            self.videos[video] = windows
        windows.add(positions[key[2]], gt, pred, gt_file)


def merge_videos(states: Iterable[Dict[VideoKey, VideoWindows]]) -> Dict[VideoKey, VideoWindows]:
    """The videos of all processes' :attr:`VideoConsistency.videos`, merged and finished;
    the states are left as they are."""
    merged: Dict[VideoKey, VideoWindows] = {}
    for videos in states:
        for key, windows in videos.items():
            if key not in merged:
                merged[key] = windows.copy()
            elif windows.next:  # the one that started the video continues
                windows = windows.copy()
                windows.merge(merged[key])
                merged[key] = windows
            else:
                merged[key].merge(windows)
    for windows in merged.values():
        windows.finish()
    return merged


def mean_scores(
    windows: Sequence[int], videos: Dict[VideoKey, VideoWindows]
) -> "OrderedDict[int, float]":
    """mVC<n> for every window n, as fractions: the mean over the windows of all videos (in
    the order of the videos' keys), NaN where there is none."""
    scores: Dict[int, List[float]] = {n: [] for n in windows}
    for key in sorted(videos):
        for n in windows:
            scores[n].extend(videos[key].scores[n])
    return OrderedDict((n, float(np.mean(scores[n])) if scores[n] else math.nan) for n in windows)
