"""Training-free open-vocabulary segmentation with CLIP alone (no OV2VSS weights).

With real CLIP weights, the cosine cost volume of CLIP's dense image features against the
class texts (paper Eq. 12 without the video text encoding) is already a segmentation, as in
MaskCLIP, SCLIP and ClearCLIP — provided the dense features keep their locality. They come
from the value path of the last image block ("vv",
:func:`ov2vss.modeling.clip.dense.value_path_block`), whatever ``MODEL.CLIP.DENSE_MODE`` says:
CLIP's own query-key attention in the last block mixes every patch with the whole image and
gives no usable per-pixel labels.

Each pixel takes the class whose text embedding (prompt ensemble of
``MODEL.CLIP.PROMPT_TEMPLATES``) best matches its dense feature; the cost volume is computed at
CLIP's patch grid (short side ``MODEL.CLIP.INPUT_SIZE``) and upsampled bilinearly to the
frame. Optionally the cost volumes of the last ``k`` frames are averaged (``temporal_window``;
1 = every frame on its own), which steadies labels that flicker between frames — at the
price of trailing behind moving objects by up to ``k - 1`` frames.

What it cannot do (docs/DEMO.md, training-free mode): it is as coarse as CLIP's patch grid
(16 px patches at the input size), it has no notion of the video beyond that averaging, and
it is only as good as CLIP's zero-shot patch matching. With randomly initialised CLIP
(``MODEL.CLIP.PRETRAINED ""``) the labels are noise, so that is refused unless asked for
(``allow_random_clip``, for tests).
"""

from __future__ import annotations

import collections
import logging
from typing import Deque, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import CfgNode
from torch import nn

from .data.io import check_same_size
from .modeling.clip import CLIPAdapter, build_clip_adapter, patch_grid
from .modeling.video_text_encoding import cosine_cost_volume
from .seeding import seeded_rng
from .vocabulary import validate_vocabulary

__all__ = ["RandomCLIPError", "TrainingFreeSegmenter", "TrainingFreePredictor"]

logger = logging.getLogger(__name__)


class RandomCLIPError(ValueError):
    """Training-free mode asked for with randomly initialised CLIP weights."""


def _check_window(temporal_window: int) -> int:
    if isinstance(temporal_window, bool) or int(temporal_window) != temporal_window:
        raise ValueError(
            f"temporal_window (--temporal-window) must be an integer, got {temporal_window!r}"
        )
    if temporal_window < 1:
        raise ValueError(
            f"temporal_window (--temporal-window) must be >= 1 frames (1 = per frame), got "
            f"{temporal_window}"
        )
    return int(temporal_window)


class TrainingFreeSegmenter(nn.Module):
    """CLIP as a segmenter: ``argmax_c cos(F^T_c, F^V(pixel))`` with the "vv" dense features.

    Args:
        clip: a :class:`CLIPAdapter` (its ``dense_mode`` is used as it is; :meth:`from_config`
            builds one with "vv").
        class_texts: the vocabulary (can be set later with :meth:`set_test_vocabulary`).
    """

    def __init__(self, clip: CLIPAdapter, class_texts: Sequence[str] = ()):
        super().__init__()
        self.clip = clip.eval()
        self.test_class_texts: List[str] = list(class_texts)

    @classmethod
    def from_config(cls, cfg: CfgNode, allow_random_clip: bool = False) -> "TrainingFreeSegmenter":
        """Build CLIP from MODEL.CLIP.* with the "vv" dense path, frozen, on MODEL.DEVICE.

        Raises:
            RandomCLIPError: MODEL.CLIP.PRETRAINED is empty and ``allow_random_clip`` is False.
        """
        if not cfg.MODEL.CLIP.PRETRAINED and not allow_random_clip:
            raise RandomCLIPError(
                "training-free mode labels pixels with CLIP alone, and MODEL.CLIP.PRETRAINED is "
                "empty: CLIP would be randomly initialised and every label would be noise. Give "
                "real CLIP weights (MODEL.CLIP.PRETRAINED openai, or a local open_clip checkpoint "
                "file), or pass --allow-random-clip (allow_random_clip=True) to run anyway"
            )
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.CLIP.DENSE_MODE = "vv"  # locality of the dense features (module docstring)
        cfg.MODEL.CLIP.FINETUNE = "none"
        with seeded_rng(cfg.SEED if cfg.SEED >= 0 else 0):  # random CLIP: same labels each run
            clip = build_clip_adapter(cfg)
        texts = list(cfg.MODEL.OV2VSS.TEST_VOCABULARY)
        return cls(clip, texts).to(torch.device(cfg.MODEL.DEVICE))

    @property
    def device(self) -> torch.device:
        return self.clip.pixel_mean.device

    def set_test_vocabulary(self, class_texts: Sequence[str]) -> None:
        """The class names to segment (any number; checked by ``validate_vocabulary``)."""
        self.test_class_texts = validate_vocabulary(class_texts)

    @property
    def temperature_scale(self) -> float:
        """CLIP's own logit scale (exp of ``logit_scale``, at most 100), turning cosines into
        probabilities; 100 for OpenAI's weights."""
        scale = getattr(self.clip.model, "logit_scale", None)
        return float(scale.exp().clamp(max=100)) if scale is not None else 100.0

    def text_embeddings(self) -> torch.Tensor:
        """F^T [N, D] of the vocabulary (cached by the CLIP adapter)."""
        if not self.test_class_texts:
            raise ValueError("no vocabulary: call set_test_vocabulary([...]) first")
        # one embedding per class (template mean), whatever MODEL.CLIP.TEMPLATE_MODE says
        return self.clip.encode_vocabulary(self.test_class_texts, template_mode="mean")

    @torch.no_grad()
    def cost_volume(self, image: torch.Tensor) -> torch.Tensor:
        """Cosine cost volume [N, h, w] at CLIP's patch grid of one RGB 0..255 image [3, H, W].

        The image is resized (antialiased) to the grid the dense features use (short side
        MODEL.CLIP.INPUT_SIZE, a multiple of the patch size), then encoded.
        """
        image = image.to(self.device, torch.float32)[None]
        h, w = image.shape[-2:]
        ps = self.clip.patch_size
        gh, gw = patch_grid(h, w, self.clip.input_size, ps)  # the grid dense_features uses
        size = (gh * ps, gw * ps)
        if size != (h, w):
            image = F.interpolate(image, size=size, mode="bilinear", antialias=True)
        dense = self.clip.dense_features(image)  # [1, D, h', w'], no further resize
        return cosine_cost_volume(self.text_embeddings(), dense)[0]

    def probabilities(self, cost: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        """[N, h, w] cost volume -> [N, H, W] class probabilities: bilinear upsampling to the
        frame, softmax of the cosines times :attr:`temperature_scale`."""
        up = F.interpolate(cost[None], size=size, mode="bilinear", align_corners=False)[0]
        return (up * self.temperature_scale).softmax(dim=0)


class TrainingFreePredictor:
    """Frames in, ``{"sem_seg": [N, H, W] probabilities}`` out, with CLIP alone.

    The interface of :class:`ov2vss.predictor.VideoPredictor` (``model.set_test_vocabulary``,
    ``reset``, ``push``, ``run``), so the demo drives both the same way.

    Args:
        cfg: MODEL.CLIP.* (weights, prompt templates, input size), MODEL.DEVICE,
            MODEL.OV2VSS.TEST_VOCABULARY (the initial vocabulary, may be empty).
        temporal_window: average the cost volumes of the last ``k`` frames (1 = per frame).
        allow_random_clip: run even with MODEL.CLIP.PRETRAINED "" (labels are then noise).
        frame_format: channel order of the frames passed in, "RGB" or "BGR".
        model: an already built :class:`TrainingFreeSegmenter` (then ``cfg`` is not used
            to build one).
    """

    def __init__(
        self,
        cfg: CfgNode,
        temporal_window: int = 1,
        allow_random_clip: bool = False,
        frame_format: str = "RGB",
        model: Optional[TrainingFreeSegmenter] = None,
    ):
        if frame_format not in ("RGB", "BGR"):
            raise ValueError(f"frame_format must be 'RGB' or 'BGR', got {frame_format!r}")
        self.temporal_window = _check_window(temporal_window)
        self.model = model or TrainingFreeSegmenter.from_config(cfg, allow_random_clip)
        self.frame_format = frame_format
        self.weights_warning: Optional[str] = None
        if not cfg.MODEL.CLIP.PRETRAINED:
            self.weights_warning = (
                "training-free mode with randomly initialised CLIP (MODEL.CLIP.PRETRAINED is "
                "empty, allowed explicitly): the labels are noise"
            )
            logger.warning(self.weights_warning)
        self.reset()

    def reset(
        self, num_frames: Optional[int] = None, last_frame: Optional[np.ndarray] = None
    ) -> None:
        """Start a new video (the arguments exist for VideoPredictor's interface; unused)."""
        self._costs: Deque[torch.Tensor] = collections.deque(maxlen=self.temporal_window)
        self._costs_of: Tuple[str, ...] = ()  # the vocabulary the cached cost volumes score
        self._size: Optional[Tuple[int, int]] = None
        self._next = 0

    @torch.no_grad()
    def push(self, frame: np.ndarray) -> Dict[str, torch.Tensor]:
        """The next frame (HxWx3 uint8) -> ``{"sem_seg": [N, H, W] probabilities, "cost_volume":
        [N, h, w] the (averaged) cosines at CLIP's grid}``."""
        if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3:
            shape = getattr(frame, "shape", type(frame).__name__)
            raise ValueError(f"frame {self._next}: expected an HxWx3 uint8 array, got {shape}")
        if frame.dtype != np.uint8:
            raise ValueError(f"frames must be uint8, got {frame.dtype}")
        if self._size is None:
            self._size = frame.shape[:2]
        else:
            check_same_size(frame, str(self._next), self._size, "frame 0")
        rgb = frame if self.frame_format == "RGB" else frame[:, :, ::-1]
        image = torch.as_tensor(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
        vocabulary = tuple(self.model.test_class_texts)
        if vocabulary != self._costs_of:  # a new vocabulary: older cost volumes do not apply
            self._costs.clear()
            self._costs_of = vocabulary
        self._costs.append(self.model.cost_volume(image))
        cost = torch.stack(list(self._costs)).mean(dim=0)
        self._next += 1
        return {"sem_seg": self.model.probabilities(cost, self._size), "cost_volume": cost}

    def run(self, frames: Iterable[np.ndarray], **_: object) -> Iterator[Dict[str, torch.Tensor]]:
        """Predict every frame of a video, in order (a generator)."""
        self.reset()
        for frame in frames:
            yield self.push(frame)
