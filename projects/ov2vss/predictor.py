"""Streaming OV2VSS inference: frames in, one prediction per frame out, each frame encoded once.

Window-by-window inference (the video mapper at inference + ``OV2VSS.forward``) runs the
backbone and the CLIP image tower on every member of every window: with the default offsets
9/6/3 and RFE that is 5 backbone passes and 4 CLIP passes per output frame.
:class:`VideoPredictor` takes the frames in order and keeps what later windows need in a small
cache keyed by frame index, so every frame goes through the backbone and CLIP exactly once:

* per frame: the projected backbone scales (STCF queries), their P2T tokens (first frame of
  a window, random frame) and the dense CLIP features (video text encoding);
* per video: the region features L_r of the random frames (frame 0 and the last one) —
  computed once each;
* only the window-specific work (the STCF chain, RFE attention, video text encoding, the
  head) runs per output frame.

Entries are dropped as soon as no later window can use them (the window indices only grow
with the target), so the cache holds about ``max(REFERENCE_OFFSETS)`` frames. Windows and
random frames follow the inference mapper's rules (:mod:`ov2vss.data.frame_sampling`), and
frames are resized by its inference augmentation.

A video of known length (a list of frames, or ``num_frames`` + ``last_frame``) gets what
window-by-window inference gives, to float tolerance: its last frame, the random frame of its
first half, is encoded up front. :meth:`VideoPredictor.predict_targets` reads and encodes only
the frames some targets need, each once (streaming evaluation,
:mod:`ov2vss.evaluation.streaming`). A live stream (``num_frames=None``) cannot know its last
frame, so frame 0 is the random frame throughout and the first half differs (docs/DEMO.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Set, Tuple

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from torch import nn

from .checkpoint import load_model_weights
from .data.augmentation import build_augmentation
from .data.frame_sampling import inference_random_frames, select_random_frame, window_indices
from .data.io import check_same_size
from .seeding import seeded_rng

__all__ = ["VideoPredictor"]

logger = logging.getLogger(__name__)


@dataclass
class _FrameEntry:
    """Cached per-frame features (batch dimension 1). Fields are dropped when no longer needed."""

    scales: Optional[List[torch.Tensor]] = None  # projected U^l, STCF queries / target features
    pooled: Optional[List[torch.Tensor]] = None  # f(U^l): first frame of a window, random frame
    dense: Optional[torch.Tensor] = None  # F^V [1, D, h, w]
    finest: Optional[torch.Tensor] = None  # raw U^1, only while the frame is still to be a target
    unpadded: Tuple[int, int] = (0, 0)  # resized frame size
    padded: Tuple[int, int] = (0, 0)  # after padding to the model's size divisibility

    def empty(self) -> bool:
        return all(f is None for f in (self.scales, self.pooled, self.dense, self.finest))


def _stack_frames(frames: List[torch.Tensor]) -> torch.Tensor:
    """Per-frame features [1, ...] -> [1, T, ...] laid out in memory as one batched pass over
    the T frames lays them out (``OV2VSS.forward`` views its [T, ...] output as [1, T, ...]).

    The values are the same either way, but kernels downstream (the cost volume's matmul) take
    other code paths for other strides, and their rounding would then differ from
    window-by-window inference in the last bits.
    """
    first = frames[0]
    # the frame's dimensions from the outermost to the innermost in memory
    order = sorted(range(1, first.dim()), key=lambda d: -first.stride(d))
    batched = torch.cat([f.permute(0, *order) for f in frames])  # [T, ...] in that order
    inverse = [0] * first.dim()
    for position, dim in enumerate([0] + order):
        inverse[dim] = position
    return batched.permute(inverse).unsqueeze(0)


class VideoPredictor:
    """Segment a video frame by frame with OV2VSS, encoding every frame once.

    Args:
        cfg: the config (test resizing INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST, INPUT.FORMAT, the
            window offsets INPUT.TEMPORAL.*). Without ``model`` the model is built from it and
            ``MODEL.WEIGHTS`` is loaded (see :func:`load_model_weights`).
        model: an already built OV2VSS model (its weights are used as they are).
        frame_format: channel order of the frames passed in, "RGB" (PyAV, PIL) or "BGR" (OpenCV).

    Usage::

        predictor = VideoPredictor(cfg)
        predictor.model.set_test_vocabulary(["road", "car", "person"])
        for out in predictor.run(frames):        # a list (known length), or an iterator
            probs = out["sem_seg"]               # [N, H, W] class probabilities, original size

    or, one frame at a time: ``predictor.reset(num_frames, last_frame)`` then
    ``predictor.push(frame)`` for each frame in order.
    """

    def __init__(self, cfg: CfgNode, model: Optional[nn.Module] = None, frame_format: str = "RGB"):
        if frame_format not in ("RGB", "BGR"):
            raise ValueError(f"frame_format must be 'RGB' or 'BGR', got {frame_format!r}")
        if model is None:
            # seeded (SEED, else 0): without trained weights, reruns give the same labels
            with seeded_rng(cfg.SEED if cfg.SEED >= 0 else 0):
                model = build_model(cfg)
            self.weights_warning = load_model_weights(model, cfg)
        else:
            self.weights_warning = None
        self.model = model.eval()
        self.frame_format = frame_format
        self.input_format = cfg.INPUT.FORMAT
        self.offsets = [int(k) for k in cfg.INPUT.TEMPORAL.REFERENCE_OFFSETS]
        if any(k < 0 for k in self.offsets):
            raise ValueError(
                f"INPUT.TEMPORAL.REFERENCE_OFFSETS={self.offsets}: streaming needs past frames "
                "only (k >= 0)"
            )
        self.use_random_frame = bool(cfg.INPUT.TEMPORAL.RANDOM_FRAME)
        self.resize = T.AugmentationList(build_augmentation(cfg, is_train=False))
        # what each window position needs, and how far back (offset k) it reaches
        window_len = len(self.offsets) + 1
        ks = self.offsets + [0]
        stcf = self.model.stcf is not None
        scale_pos = self.model.backbone_positions(window_len)[1:] if stcf else []
        self._reach = {
            "scales": max([ks[p] for p in scale_pos], default=0),
            "pooled": ks[0] if stcf else None,
            "dense": max(ks[p] for p in self.model.dense_positions(window_len)),
        }
        self._needs_pooled = stcf or self.model.rfe is not None
        self.reset()

    # ------------------------------------------------------------------ video state
    def reset(
        self, num_frames: Optional[int] = None, last_frame: Optional[np.ndarray] = None
    ) -> None:
        """Start a new video. ``num_frames`` None means a live stream (random frame = frame 0).

        With a known length > 1 and RFE on, ``last_frame`` (the video's final frame) is required:
        it is the random frame of the first half of the video.
        """
        self._start(num_frames)
        needs_last = (
            num_frames is not None
            and num_frames > 1
            and self.model.rfe is not None
            and self.use_random_frame
        )
        if needs_last:
            if last_frame is None:
                raise ValueError(
                    "a video of known length needs its last frame up front (random frame of RFE): "
                    "pass last_frame=, or num_frames=None for a live stream"
                )
            self._check_size(last_frame, num_frames - 1)
            self._last_frame = last_frame
            self._encode(num_frames - 1, last_frame)

    def _start(self, num_frames: Optional[int]) -> None:
        """Forget the previous video: empty caches, next frame 0."""
        if num_frames is not None and num_frames < 1:
            raise ValueError(f"a video needs at least one frame, got num_frames={num_frames}")
        self.num_frames = num_frames
        self._next = 0
        # (H, W) of the first frame seen and that frame's index
        self._size: Optional[Tuple[Tuple[int, int], int]] = None
        self._last_frame: Optional[np.ndarray] = None
        self._cache: Dict[int, _FrameEntry] = {}
        self._regions: Dict[int, torch.Tensor] = {}

    @property
    def cached_frames(self) -> List[int]:
        """Indices of the frames whose features are currently cached."""
        return sorted(self._cache)

    @property
    def cache_bytes(self) -> int:
        """Memory held by the cached features and region features."""
        tensors = list(self._regions.values())
        for e in self._cache.values():
            tensors += (
                (e.scales or [])
                + (e.pooled or [])
                + [t for t in (e.dense, e.finest) if t is not None]
            )
        return sum(t.numel() * t.element_size() for t in tensors)

    def _check_size(self, frame: np.ndarray, index: int) -> None:
        """An HxWx3 array of the size of the first frame seen (raises FrameSizeError)."""
        if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3:
            shape = getattr(frame, "shape", type(frame).__name__)
            raise ValueError(f"frame {index}: expected an HxWx3 uint8 array, got {shape}")
        if self._size is None:
            self._size = (frame.shape[:2], index)
        else:
            size, ref = self._size
            check_same_size(frame, str(index), size, f"frame {ref}")

    # ------------------------------------------------------------------ encoding
    def _prepare(self, frame: np.ndarray) -> torch.Tensor:
        """The inference mapper's preprocessing: resize (PIL, as the mapper) and channel order."""
        if frame.dtype != np.uint8:
            raise ValueError(f"frames must be uint8, got {frame.dtype}")
        if self.frame_format != self.input_format:
            frame = frame[:, :, ::-1]
        frame = self.resize(T.AugInput(frame)).apply_image(frame)
        return torch.as_tensor(np.ascontiguousarray(frame.transpose(2, 0, 1)))

    def _is_random_candidate(self, index: int) -> bool:
        if self.model.rfe is None:
            return False
        if not self.use_random_frame:
            return True  # the target is its own "random" frame
        return index in inference_random_frames(self.num_frames)

    @torch.no_grad()
    def _encode(self, index: int, frame: np.ndarray) -> _FrameEntry:
        """Run the backbone (and CLIP) once on a frame and cache what later windows need."""
        image, unpadded = self.model.pad_frame(self._prepare(frame))
        scales, finest = self.model.frame_features(image)
        entry = _FrameEntry(
            scales=scales,
            finest=finest,
            pooled=self.model.pooled_features(scales) if self._needs_pooled else None,
            dense=self.model.clip_features(image),
            unpadded=tuple(unpadded),
            padded=tuple(image.shape[-2:]),
        )
        if self._is_random_candidate(index):
            self._regions[index] = self.model.random_regions(entry.pooled)
        self._cache[index] = entry
        return entry

    # ------------------------------------------------------------------ prediction
    def _length(self, target: int) -> int:
        """Frames of the video; for a live stream the frames seen so far (up to ``target``)."""
        return self.num_frames if self.num_frames is not None else target + 1

    def random_frame_index(self, target: int) -> int:
        """The random frame of ``target``: farthest frame of the video (of the frames seen so
        far for a live stream, i.e. frame 0), or the target itself with RANDOM_FRAME off."""
        length = self._length(target)
        return self._random_of(target, length, window_indices(target, length, self.offsets))

    @torch.no_grad()
    def push(self, frame: np.ndarray) -> Dict[str, torch.Tensor]:
        """Process the next frame of the video; returns ``{"sem_seg": [N, H, W] probabilities}``
        at the frame's original size (N = the model's test vocabulary)."""
        t = self._next
        if self.num_frames is not None and t >= self.num_frames:
            raise ValueError(
                f"the video was announced with {self.num_frames} frames; got frame {t}"
            )
        self._check_size(frame, t)
        entry = self._cache.get(t)
        if entry is not None and self._last_frame is not None and t == self.num_frames - 1:
            # encoded up front as the random frame: it must be the frame announced then
            if not np.array_equal(frame, self._last_frame):
                raise ValueError(f"frame {t} differs from the last_frame given to reset()")
        if entry is None or entry.finest is None:
            self._encode(t, frame)
        result = self._predict(t)
        self._next = t + 1
        self._evict(t)
        return result

    def _predict(self, t: int) -> Dict[str, torch.Tensor]:
        """The prediction of target ``t`` from the cached features of its window (all encoded)."""
        model = self.model
        entry = self._cache[t]
        window = window_indices(t, self._length(t), self.offsets)
        positions = model.backbone_positions(len(window))
        # STCF reads only the pooled tokens of the first window frame (its maps may be evicted)
        window_scales = [self._cache[window[p]].scales or [] for p in positions[:-1]]
        window_scales.append(entry.scales)
        first_pooled = self._cache[window[0]].pooled if model.stcf is not None else []
        o_t = model.temporal_context(window_scales, first_pooled)

        regions = None
        if model.rfe is not None:
            rand = self.random_frame_index(t)
            regions = self._regions[rand]
        dense_positions = model.dense_positions(len(window))
        dense = _stack_frames([self._cache[window[p]].dense for p in dense_positions])
        text = model.clip.encode_vocabulary(model.active_class_texts)
        logits = model.decode(o_t, regions, dense, entry.finest, text, entry.padded)
        return model.postprocess(logits, entry.padded, [entry.unpadded], [self._size[0]])[0]

    def _evict(self, t: int) -> None:
        """Drop every cached field no target after ``t`` can use (window indices grow with t)."""
        if self.num_frames is not None and t == self.num_frames - 1:  # the video is done
            self._cache.clear()
            self._regions.clear()
            return
        if not self.use_random_frame:
            self._regions.pop(t, None)
        for index in list(self._cache):
            entry = self._cache[index]
            if index <= t:
                entry.finest = None
            for name, reach in self._reach.items():
                if reach is None or index < t + 1 - reach:
                    setattr(entry, name, None)
            if entry.empty():
                del self._cache[index]

    # ------------------------------------------------------------------ sparse targets
    def frames_needed(self, num_frames: int, target: int) -> List[int]:
        """The frames whose features the prediction of ``target`` reads (sorted): the window
        positions the model uses (:meth:`OV2VSS.backbone_positions`, :meth:`dense_positions`)
        and, with RFE, the random frame."""
        window_frames, random_frame = self._needs(num_frames, target)
        return sorted(window_frames | ({random_frame} if random_frame is not None else set()))

    def _needs(self, num_frames: int, target: int) -> Tuple[Set[int], Optional[int]]:
        """The window frames whose cached features ``target`` reads, and its random frame (of
        which only the region features are read), None without RFE."""
        window = window_indices(target, num_frames, self.offsets)
        used = set(self.model.backbone_positions(len(window)))
        used |= set(self.model.dense_positions(len(window)))
        random_frame = None
        if self.model.rfe is not None:
            random_frame = self._random_of(target, num_frames, window)
        return {window[p] for p in used}, random_frame

    def _random_of(self, target: int, num_frames: int, window: List[int]) -> int:
        return select_random_frame(
            target, num_frames, window, training=False, enabled=self.use_random_frame
        )

    @torch.no_grad()
    def predict_targets(
        self,
        num_frames: int,
        targets: Iterable[int],
        read_frame: Callable[[int], np.ndarray],
    ) -> Iterator[Tuple[int, Dict[str, torch.Tensor]]]:
        """Predict some frames of a video of known length (a generator, targets in order).

        Reads (``read_frame(index)`` -> HxWx3 uint8 array) and encodes only the frames the
        targets' windows and random frames need (:meth:`frames_needed`), each once. Yields
        ``(target, {"sem_seg": [N, H, W] probabilities})``, equal to window-by-window
        inference of each target (with every frame a target: :meth:`run`).
        """
        targets = sorted({int(t) for t in targets})
        if targets and not 0 <= targets[0] <= targets[-1] < num_frames:
            raise ValueError(f"targets {targets} are outside the video (0..{num_frames - 1})")
        self._start(num_frames)
        try:
            for t in targets:
                window_frames, random_frame = self._needs(num_frames, t)
                for index in self.frames_needed(num_frames, t):
                    # what later targets read is never evicted; a random frame's regions stay
                    if (index in window_frames and index not in self._cache) or (
                        index == random_frame and index not in self._regions
                    ):
                        frame = read_frame(index)
                        self._check_size(frame, index)
                        self._encode(index, frame)
                yield t, self._predict(t)
                self._evict(t)
        finally:
            self._start(None)  # release the cached features

    def run(
        self,
        frames: Iterable[np.ndarray],
        num_frames: Optional[int] = None,
        last_frame: Optional[np.ndarray] = None,
    ) -> Iterator[Dict[str, torch.Tensor]]:
        """Predict every frame of a video, in order (a generator).

        ``frames``: a sequence (its length and last frame are used: exact window-by-window
        results), or an iterator with ``num_frames`` and ``last_frame`` given, or an iterator
        alone (live stream: see the module docstring).
        """
        if num_frames is None and hasattr(frames, "__len__") and hasattr(frames, "__getitem__"):
            if len(frames) == 0:
                raise ValueError("the video has no frames")
            num_frames, last_frame = len(frames), frames[-1]
        self.reset(num_frames, last_frame)
        for frame in frames:
            yield self.push(frame)
        if self.num_frames is not None and self._next != self.num_frames:
            raise ValueError(
                f"the video was announced with {self.num_frames} frames but had {self._next}"
            )
