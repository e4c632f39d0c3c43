"""Video clip mapper: turns one dataset record (an annotated frame of a video) into the
clip the OV2VSS model consumes (SPEC section 2, "Clip sampling").

For target frame ``t`` of a video with ``N`` frames the clip is
``[t - k for k in REFERENCE_OFFSETS] + [t]`` (default t-9, t-6, t-3, t), each index clamped
to ``[0, N-1]``, plus one "random" frame for random frame enhancement:

* training: drawn uniformly from the video's frames outside the clip (if the clip already
  covers the whole video: the frame farthest from ``t``);
* inference: the frame farthest in time from ``t`` (frame 0 or N-1, ties go to frame 0).

One geometric augmentation (resize, crop, flip) and one photometric draw are computed on
the target frame and its label and applied to every frame, so the clip stays aligned.
"""

import logging
import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T

from .io import check_same_size, read_frame, read_mask, relabel

__all__ = [
    "VideoSemSegDatasetMapper",
    "ClipColorAugmentation",
    "ClipColorTransform",
    "clip_indices",
    "farthest_frame",
]


def clip_indices(target: int, num_frames: int, offsets: Sequence[int]) -> List[int]:
    """Frame indices of the clip: ``target - k`` for each offset (clamped to the video),
    then the target itself."""
    if num_frames <= 0:
        raise ValueError("a video needs at least one frame")
    if not 0 <= target < num_frames:
        raise ValueError(f"frame index {target} is outside the video (0..{num_frames - 1})")
    refs = [min(max(target - int(k), 0), num_frames - 1) for k in offsets]
    return refs + [target]


def farthest_frame(target: int, num_frames: int) -> int:
    """The frame farthest in time from ``target``: 0 or the last one (ties go to 0)."""
    return 0 if target >= num_frames - 1 - target else num_frames - 1


class ClipColorTransform(T.Transform):
    """Photometric change with fixed parameters, so every frame of a clip gets the same one.

    ``out = saturation-blend(contrast-blend(x + brightness))``. The contrast pivot is one
    scalar (the target frame's mean), so the whole transform is the same pixel-wise map for
    every frame: a static pixel keeps the same colour across the clip. Labels are untouched.
    """

    def __init__(
        self,
        brightness: float,
        contrast: float,
        contrast_center: float,
        saturation: float,
        gray_weights: Sequence[float],
    ):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        x = img.astype(np.float32) + self.brightness
        x = self.contrast * x + (1.0 - self.contrast) * self.contrast_center
        if self.saturation != 1.0 and x.shape[-1] == 3:
            gray = x.dot(np.asarray(self.gray_weights, dtype=np.float32))[..., None]
            x = self.saturation * x + (1.0 - self.saturation) * gray
        return np.clip(np.rint(x), 0, 255).astype(np.uint8)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation


class ClipColorAugmentation(T.Augmentation):
    """SSD-style photometric augmentation (random brightness shift, contrast and saturation,
    each applied with probability 1/2), drawn once per clip (see :class:`ClipColorTransform`).

    detectron2's RandomContrast / RandomSaturation blend with statistics of the image they
    were drawn on (a whole grey image for saturation), which would paste the target frame
    into the reference frames; this augmentation avoids that.
    """

    def __init__(
        self,
        image_format: str = "RGB",
        brightness_delta: float = 32.0,
        contrast_range: Sequence[float] = (0.5, 1.5),
        saturation_range: Sequence[float] = (0.5, 1.5),
        prob: float = 0.5,
    ):
        super().__init__()
        weights = (0.299, 0.587, 0.114)  # ITU-R 601 luma, RGB order
        self.gray_weights = weights[::-1] if image_format == "BGR" else weights
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> T.Transform:
        def draw(lo: float, hi: float, neutral: float) -> float:
            return float(np.random.uniform(lo, hi)) if np.random.rand() < self.prob else neutral

        brightness = draw(-self.brightness_delta, self.brightness_delta, 0.0)
        contrast = draw(*self.contrast_range, 1.0)
        saturation = draw(*self.saturation_range, 1.0)
        center = float(np.clip(image.astype(np.float32) + brightness, 0, 255).mean())
        return ClipColorTransform(brightness, contrast, center, saturation, self.gray_weights)


def test_augmentations(cfg) -> List[T.Augmentation]:
    """Inference resizing (shared with the streaming predictor, which must match it):
    ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST); MIN_SIZE_TEST 0 disables it
    (detectron2 convention)."""
    if cfg.INPUT.MIN_SIZE_TEST <= 0:
        return []
    return [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")]


class VideoSemSegDatasetMapper:
    """Map one dataset record (``file_name``, ``sem_seg_file_name``, ``video_id``,
    ``frame_index``, ``video_frames``, ``height``, ``width``) to a model input::

        {"frames": uint8 Tensor[T, 3, H, W]   # t-k for k in offsets (given order), then t
         "random_frame": uint8 Tensor[3, H, W],
         "sem_seg": int64 Tensor[H, W],       # label ids via metadata.label_lut, 255 = ignore
         "height", "width",                   # original frame size, for postprocessing
         "file_name", "video_id", "frame_index"}

    Frames are in ``INPUT.FORMAT`` channel order and unpadded (the model pads).
    ``"sem_seg"`` is absent at inference when the record has no ``sem_seg_file_name``
    (unlabelled videos). With ``random_frame=False`` the ``"random_frame"`` entry is the
    (augmented) target frame, so the model input always has the same structure.

    ``mask_unseen_pixels`` (training, paper IV-C): pixels whose *raw* mask value is in
    ``hidden_raw_ids`` are replaced by the pixel mean in every clip frame and in the random
    frame, before the geometric augmentation. The mask of a non-target frame is found by the
    dataset's path rule (see :meth:`frame_mask_path`); a frame whose mask file does not exist
    is left unmasked (e.g. the unannotated frames of Cityscapes snippets).
    """

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: List[T.Augmentation],
        image_format: str,
        reference_offsets: Sequence[int] = (9, 6, 3),
        random_frame: bool = True,
        label_lut: Optional[Sequence[int]] = None,
        num_classes: Optional[int] = None,
        ignore_label: int = 255,
        mask_unseen_pixels: bool = False,
        hidden_raw_ids: Sequence[int] = (),
        pixel_mean: Sequence[float] = (0.0, 0.0, 0.0),
        image_root: Optional[str] = None,
        sem_seg_root: Optional[str] = None,
    ):
        """
        Args:
            is_train: training (random frame outside the clip, labels required) or inference.
            augmentations: applied to the target frame + label; the resulting transforms are
                replayed on every other frame.
            image_format: "RGB" or "BGR" (channel order of the output frames).
            reference_offsets: temporal distances k of the reference frames t-k.
            random_frame: sample a distant frame (off: the target frame is repeated).
            label_lut: 256 entries, raw mask value -> label id / 255 / -1 (not allowed).
            num_classes: size of the vocabulary; labels must be < num_classes or ignore_label.
            ignore_label: the ignored label id.
            mask_unseen_pixels: hide pixels of ``hidden_raw_ids`` in the input frames.
            hidden_raw_ids: raw mask values of classes outside the training vocabulary.
            pixel_mean: fill value of hidden pixels, in ``image_format`` channel order.
            image_root, sem_seg_root: the dataset's frame and mask roots (mask path rule).
        """
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        if label_lut is not None and (
            len(label_lut) != 256 or min(label_lut) < -1 or max(label_lut) > 255
        ):
            raise ValueError(f"label_lut needs 256 entries in -1..255, got {list(label_lut)}")
        if len(pixel_mean) != 3:
            raise ValueError(f"pixel_mean needs 3 values, got {list(pixel_mean)}")
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.reference_offsets = [int(k) for k in reference_offsets]
        self.random_frame = random_frame
        self.label_lut = None if label_lut is None else np.asarray(label_lut, dtype=np.int64)
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.hidden_raw_ids = np.asarray(
            sorted(set(int(v) for v in hidden_raw_ids)), dtype=np.int64
        )
        # nothing to hide -> skip reading the reference frames' masks altogether
        self.mask_unseen_pixels = bool(mask_unseen_pixels) and self.hidden_raw_ids.size > 0
        self.fill_value = np.clip(np.rint(np.asarray(pixel_mean, dtype=np.float64)), 0, 255).astype(
            np.uint8
        )
        self.image_root = image_root
        self.sem_seg_root = sem_seg_root

        mode = "training" if is_train else "inference"
        logging.getLogger(__name__).info(
            f"[VideoSemSegDatasetMapper] {mode}: offsets {self.reference_offsets}, "
            f"augmentations {augmentations}"
        )

    @classmethod
    def from_config(
        cls, cfg, is_train: bool = True, dataset_name: Optional[str] = None
    ) -> Dict[str, Any]:
        if dataset_name is None:
            names = cfg.DATASETS.TRAIN if is_train else cfg.DATASETS.TEST
            if len(names) == 0:
                split = "TRAIN" if is_train else "TEST"
                raise ValueError(f"no dataset_name given and cfg.DATASETS.{split} is empty")
            dataset_name = names[0]
        meta = MetadataCatalog.get(dataset_name)

        if is_train:
            augs: List[T.Augmentation] = [
                T.ResizeShortestEdge(
                    cfg.INPUT.MIN_SIZE_TRAIN,
                    cfg.INPUT.MAX_SIZE_TRAIN,
                    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING,
                )
            ]
            if cfg.INPUT.CROP.ENABLED:
                augs.append(T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
            augs.append(T.RandomFlip(horizontal=True, vertical=False))
            if cfg.INPUT.COLOR_AUG_SSD:
                augs.append(ClipColorAugmentation(cfg.INPUT.FORMAT))
        else:
            augs = test_augmentations(cfg)

        stuff_classes = meta.get("stuff_classes", None)
        return {
            "is_train": is_train,
            "augmentations": augs,
            "image_format": cfg.INPUT.FORMAT,
            "reference_offsets": cfg.INPUT.CLIP.REFERENCE_OFFSETS,
            "random_frame": cfg.INPUT.CLIP.RANDOM_FRAME,
            "label_lut": meta.get("label_lut", None),
            "num_classes": None if stuff_classes is None else len(stuff_classes),
            "ignore_label": meta.get("ignore_label", 255),
            "mask_unseen_pixels": is_train and cfg.INPUT.MASK_UNSEEN_PIXELS,
            "hidden_raw_ids": meta.get("hidden_raw_ids", []),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "image_root": meta.get("image_root", None),
            "sem_seg_root": meta.get("sem_seg_root", None),
        }

    # ------------------------------------------------------------------ frame choice
    def select_random_frame(self, target: int, num_frames: int, clip: Sequence[int]) -> int:
        """Index of the random frame (see the class docstring)."""
        if not self.random_frame:
            return target
        if self.is_train:
            taken = set(clip)
            candidates = [i for i in range(num_frames) if i not in taken]
            if candidates:
                return candidates[np.random.randint(len(candidates))]
        return farthest_frame(target, num_frames)

    def frame_mask_path(self, frame_path: str, record: Dict[str, Any]) -> Optional[str]:
        """Mask file of any frame of the record's video, by the dataset's path rule.

        The rule is taken from the record's own (frame, mask) pair when the frame lies next
        to the target frame (VSPW: ``<video>/origin/<f>.jpg`` -> ``<video>/mask/<f>.png``);
        otherwise from the metadata roots (``image_root`` -> ``sem_seg_root``, extension
        ``.png``). Returns None when neither rule applies.
        """
        target_path, target_mask = record["file_name"], record.get("sem_seg_file_name")
        if target_mask and os.path.normpath(frame_path) == os.path.normpath(target_path):
            return target_mask
        stem = os.path.splitext(os.path.basename(frame_path))[0]
        if target_mask and os.path.dirname(os.path.normpath(frame_path)) == os.path.dirname(
            os.path.normpath(target_path)
        ):
            return os.path.join(
                os.path.dirname(target_mask), stem + os.path.splitext(target_mask)[1]
            )
        if self.image_root and self.sem_seg_root:
            rel = os.path.relpath(frame_path, self.image_root)
            if not rel.startswith(os.pardir):
                return os.path.join(self.sem_seg_root, os.path.splitext(rel)[0] + ".png")
        return None

    # ------------------------------------------------------------------ reading
    def _hide_pixels(
        self, image: np.ndarray, raw_mask: np.ndarray, image_path: str, mask_path: str
    ) -> np.ndarray:
        check_same_size(raw_mask, mask_path, image.shape, image_path, "mask")
        hidden = np.isin(raw_mask, self.hidden_raw_ids)
        if hidden.any():
            image = image.copy()
            image[hidden] = self.fill_value
        return image

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        """Map one record (left unmodified); see the class docstring for the output."""
        record = dataset_dict
        video_frames = record["video_frames"]
        target = int(record["frame_index"])
        num_frames = len(video_frames)
        if not 0 <= target < num_frames:
            raise ValueError(
                f"frame_index {target} of {record['file_name']} is outside video_frames "
                f"(length {num_frames})"
            )
        if os.path.normpath(video_frames[target]) != os.path.normpath(record["file_name"]):
            raise ValueError(
                f"record {record['file_name']}: video_frames[{target}] is {video_frames[target]}"
            )
        clip = clip_indices(target, num_frames, self.reference_offsets)
        rand_idx = self.select_random_frame(target, num_frames, clip)

        # ---- target frame and its label
        target_path = record["file_name"]
        target_img = read_frame(target_path, self.image_format)
        height, width = target_img.shape[:2]
        if ("height" in record and record["height"] != height) or (
            "width" in record and record["width"] != width
        ):
            raise ValueError(
                f"frame {target_path} has size {width}x{height} (WxH) but the record says "
                f"{record.get('width')}x{record.get('height')}"
            )
        mask_path = record.get("sem_seg_file_name")
        if not mask_path and self.is_train:
            raise ValueError(f"training record {target_path} has no sem_seg_file_name")
        raw_mask, labels = None, None
        if mask_path:
            raw_mask = read_mask(mask_path)
            check_same_size(raw_mask, mask_path, target_img.shape, target_path, "mask")
            labels = relabel(
                raw_mask, self.label_lut, mask_path, self.num_classes, self.ignore_label
            )

        # ---- the other frames (each distinct index read once; clamping repeats indices)
        images: Dict[int, np.ndarray] = {target: target_img}
        for idx in sorted(set(clip) | {rand_idx}):
            if idx not in images:
                path = video_frames[idx]
                img = read_frame(path, self.image_format)
                check_same_size(img, path, target_img.shape, target_path, "frame")
                images[idx] = img

        if self.mask_unseen_pixels:
            for idx, img in images.items():
                if idx == target:
                    if raw_mask is not None:
                        images[idx] = self._hide_pixels(img, raw_mask, target_path, mask_path)
                    continue
                path = self.frame_mask_path(video_frames[idx], record)
                # unannotated frames have no mask on disk: they are left as they are
                if path is not None and os.path.isfile(path):
                    images[idx] = self._hide_pixels(img, read_mask(path), video_frames[idx], path)

        # ---- one augmentation for the clip, computed on the target frame (+ label)
        # label ids fit in uint8 (the LUT maps into 0..255), which resizes with PIL "nearest"
        sem_seg = None if labels is None else labels.astype(np.uint8)
        aug_input = T.AugInput(images[target], sem_seg=sem_seg)
        transforms = self.augmentations(aug_input)
        out_images = {target: aug_input.image}
        for idx, img in images.items():
            if idx != target:
                out_images[idx] = transforms.apply_image(img)

        def to_chw(img: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.ascontiguousarray(img.transpose(2, 0, 1)))

        result = {
            "frames": torch.stack([to_chw(out_images[i]) for i in clip]),
            "random_frame": to_chw(out_images[rand_idx]),
            "height": height,
            "width": width,
            "file_name": target_path,
            "video_id": record.get("video_id"),
            "frame_index": target,
        }
        if aug_input.sem_seg is not None:
            result["sem_seg"] = torch.as_tensor(aug_input.sem_seg.astype(np.int64))
        return result
