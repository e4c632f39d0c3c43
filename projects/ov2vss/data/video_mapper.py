"""Video window mapper: turns one dataset record (an annotated frame of a video) into the
window of frames the OV2VSS model consumes.

For target frame ``t`` the window is the reference frames t-k (``INPUT.TEMPORAL
.REFERENCE_OFFSETS``, paper IV-B: t-9, t-6, t-3) and t, plus one distant "random" frame for
random frame enhancement (paper III-B); :mod:`ov2vss.data.frame_sampling` has the rules.

One geometric augmentation (resize, crop, flip) and one photometric draw are computed on
the target frame and its label and applied to every frame, so the window stays aligned
(:mod:`ov2vss.data.augmentation`). Two switches follow the official code
(docs/OFFICIAL_CODE.md): ``INPUT.COLOR_AUG_PER_FRAME`` draws the photometric change per frame,
and ``INPUT.TEMPORAL.REVERSE_PROB`` (training) takes the window from the video played
backwards, frames ``[t+9, t+6, t+3, t]`` (one extra ``np.random.rand()`` per window, drawn only
when the probability is > 0).
"""

import logging
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T

from .augmentation import (
    apply_transforms,
    augment_window,
    build_augmentation,
    build_frame_color_augmentation,
)
from .frame_sampling import select_random_frame, window_indices
from .io import check_label_range, check_same_size, read_frame, read_mask

__all__ = ["VideoSemSegDatasetMapper"]


class VideoSemSegDatasetMapper:
    """Map one dataset record (``file_name``, ``sem_seg_file_name``, ``video_id``,
    ``frame_index``, ``video_frames``, ``height``, ``width``, optionally
    ``raw_sem_seg_file_name``) to a model input::

        {"frames": uint8 Tensor[T, 3, H, W]   # t-k for k in offsets (given order), then t
         "random_frame": uint8 Tensor[3, H, W],
         "sem_seg": int64 Tensor[H, W],       # the label map's ids as stored, 255 = ignore
         "height", "width",                   # original frame size, for postprocessing
         "file_name", "video_id", "frame_index"}

    Frames are in ``INPUT.FORMAT`` channel order and unpadded (the model pads).
    ``"sem_seg"`` is read from ``sem_seg_file_name``, a label map already in the dataset's
    label space (what detectron2's stock DatasetMapper reads; no relabelling here), and is
    absent at inference when the record has no ``sem_seg_file_name`` (unlabelled videos).
    With ``random_frame=False`` the ``"random_frame"`` entry is the
    (augmented) target frame, so the model input always has the same structure.

    ``mask_unseen_pixels`` (training, paper IV-C): pixels whose *raw* mask value
    (``raw_sem_seg_file_name``; ``sem_seg_file_name`` for a record without one) is in
    ``hidden_raw_ids`` are replaced by the pixel mean in every window frame and in the random
    frame, before the geometric augmentation. The raw mask of a non-target frame is found by
    the dataset's path rule (see :meth:`frame_mask_path`); a frame whose mask file does not
    exist is left unmasked (e.g. the unannotated frames of Cityscapes snippets).
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
        reverse_prob: float = 0.0,
        frame_color_augmentation: Optional[T.Augmentation] = None,
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
            is_train: training (random frame outside the window, labels required) or inference.
            augmentations: applied to the target frame + label; the resulting transforms are
                replayed on every other frame.
            image_format: "RGB" or "BGR" (channel order of the output frames).
            reference_offsets: temporal distances k of the reference frames t-k.
            random_frame: sample a distant frame (off: the target frame is repeated).
            num_classes: size of the vocabulary; labels must be < num_classes or ignore_label.
            ignore_label: the ignored label id.
            mask_unseen_pixels: hide pixels of ``hidden_raw_ids`` in the input frames.
            hidden_raw_ids: raw mask values of classes outside the training vocabulary.
            pixel_mean: fill value of hidden pixels, in ``image_format`` channel order.
            image_root, sem_seg_root: the dataset's frame and raw mask roots (mask path rule).
            reverse_prob: training: probability of a window of the video played backwards
                (references t+k; module docstring).
            frame_color_augmentation: a photometric augmentation drawn for every frame on its
                own, after the geometric ones (None: off).
        """
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        if len(pixel_mean) != 3:
            raise ValueError(f"pixel_mean needs 3 values, got {list(pixel_mean)}")
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.reference_offsets = [int(k) for k in reference_offsets]
        self.random_frame = random_frame
        if not 0.0 <= float(reverse_prob) <= 1.0:
            raise ValueError(
                f"INPUT.TEMPORAL.REVERSE_PROB={reverse_prob!r}: must be a probability in [0, 1]"
            )
        self.reverse_prob = float(reverse_prob) if is_train else 0.0
        self.frame_color_augmentation = frame_color_augmentation
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
            + (f", per frame {frame_color_augmentation}" if frame_color_augmentation else "")
            + (f", reversed windows p={self.reverse_prob}" if self.reverse_prob > 0 else "")
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
        stuff_classes = meta.get("stuff_classes", None)
        return {
            "is_train": is_train,
            "augmentations": build_augmentation(cfg, is_train),
            "image_format": cfg.INPUT.FORMAT,
            "reference_offsets": cfg.INPUT.TEMPORAL.REFERENCE_OFFSETS,
            "random_frame": cfg.INPUT.TEMPORAL.RANDOM_FRAME,
            "reverse_prob": cfg.INPUT.TEMPORAL.REVERSE_PROB if is_train else 0.0,
            "frame_color_augmentation": build_frame_color_augmentation(cfg, is_train),
            "num_classes": None if stuff_classes is None else len(stuff_classes),
            "ignore_label": meta.get("ignore_label", 255),
            "mask_unseen_pixels": is_train and cfg.INPUT.MASK_UNSEEN_PIXELS,
            "hidden_raw_ids": meta.get("hidden_raw_ids", []),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "image_root": meta.get("image_root", None),
            # the raw masks (MASK_UNSEEN_PIXELS); sem_seg_root holds the label maps
            "sem_seg_root": meta.get("raw_sem_seg_root", meta.get("sem_seg_root", None)),
        }

    def frame_mask_path(self, frame_path: str, record: Dict[str, Any]) -> Optional[str]:
        """Raw mask file of any frame of the record's video, by the dataset's path rule.

        The rule is taken from the record's own (frame, mask) pair when the frame lies next
        to the target frame (VSPW: ``<video>/origin/<f>.jpg`` -> ``<video>/mask/<f>.png``);
        otherwise from the metadata roots (``image_root`` -> ``sem_seg_root``, extension
        ``.png``). Returns None when neither rule applies.
        """
        target_path, target_mask = record["file_name"], _raw_mask_path(record)
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

    # ------------------------------------------------------------------ the steps
    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        """Map one record (left unmodified); see the class docstring for the output."""
        record = dataset_dict
        target = self._check_record(record)
        window, random_index = self._choose_window(target, len(record["video_frames"]))
        target_img = self._read_target_frame(record)
        raw_mask, labels = self._read_label(record, target_img)
        images = self._read_frames(record, target, target_img, set(window) | {random_index})
        if self.mask_unseen_pixels:
            self._hide_unseen_pixels(images, record, target, raw_mask)
        images, sem_seg = self._augment(images, target, labels)
        return self._to_model_input(record, target_img, images, window, random_index, sem_seg)

    def _check_record(self, record: Dict[str, Any]) -> int:
        """The target's index, after checking it against ``video_frames``."""
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
        return target

    def _choose_window(self, target: int, num_frames: int) -> Tuple[List[int], int]:
        """The window's frame indices and the random frame (a random draw in training)."""
        offsets = self.reference_offsets
        if self.reverse_prob > 0 and np.random.rand() < self.reverse_prob:
            offsets = [-k for k in offsets]  # the video played backwards: t+k, ..., t
        window = window_indices(target, num_frames, offsets)
        random_index = select_random_frame(
            target, num_frames, window, training=self.is_train, enabled=self.random_frame
        )
        return window, random_index

    def _read_target_frame(self, record: Dict[str, Any]) -> np.ndarray:
        """The target frame, checked against the record's height and width."""
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
        return target_img

    def _read_label(
        self, record: Dict[str, Any], target_img: np.ndarray
    ) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
        """The target's raw mask (read only for ``mask_unseen_pixels``) and its label ids (the
        uint8 label map as stored, range-checked); both None for an unlabelled record at
        inference."""
        target_path, mask_path = record["file_name"], record.get("sem_seg_file_name")
        if not mask_path and self.is_train:
            raise ValueError(f"training record {target_path} has no sem_seg_file_name")
        if not mask_path:
            return None, None
        label_map = read_mask(mask_path)
        check_same_size(label_map, mask_path, target_img.shape, target_path, "mask")
        if self.num_classes is not None:  # checked as uint8: no int64 copy of the map
            check_label_range(label_map, mask_path, self.num_classes, self.ignore_label)
        labels = label_map
        raw_mask = None
        if self.mask_unseen_pixels:
            raw_path = _raw_mask_path(record)
            raw_mask = label_map if raw_path == mask_path else read_mask(raw_path)
            check_same_size(raw_mask, raw_path, target_img.shape, target_path, "mask")
        return raw_mask, labels

    def _read_frames(
        self,
        record: Dict[str, Any],
        target: int,
        target_img: np.ndarray,
        indices: Iterable[int],
    ) -> Dict[int, np.ndarray]:
        """Every distinct frame of ``indices`` (clamping repeats indices), read once, in
        index order, each checked against the target's size."""
        target_path = record["file_name"]
        images: Dict[int, np.ndarray] = {target: target_img}
        for idx in sorted(indices):
            if idx not in images:
                path = record["video_frames"][idx]
                img = read_frame(path, self.image_format)
                check_same_size(img, path, target_img.shape, target_path, "frame")
                images[idx] = img
        return images

    def _hide_unseen_pixels(
        self,
        images: Dict[int, np.ndarray],
        record: Dict[str, Any],
        target: int,
        raw_mask: Optional[np.ndarray],
    ) -> None:
        """Paper IV-C, in place: fill the pixels of hidden classes with the pixel mean in
        every frame whose mask exists (unannotated frames are left as they are)."""
        video_frames = record["video_frames"]
        for idx, img in images.items():
            if idx == target:
                if raw_mask is not None:
                    images[idx] = self._hide_pixels(
                        img, raw_mask, record["file_name"], _raw_mask_path(record)
                    )
                continue
            path = self.frame_mask_path(video_frames[idx], record)
            if path is not None and os.path.isfile(path):
                images[idx] = self._hide_pixels(img, read_mask(path), video_frames[idx], path)

    def _hide_pixels(
        self, image: np.ndarray, raw_mask: np.ndarray, image_path: str, mask_path: str
    ) -> np.ndarray:
        check_same_size(raw_mask, mask_path, image.shape, image_path, "mask")
        hidden = np.isin(raw_mask, self.hidden_raw_ids)
        if hidden.any():
            image = image.copy()
            image[hidden] = self.fill_value
        return image

    def _augment(
        self, images: Dict[int, np.ndarray], target: int, labels: Optional[np.ndarray]
    ) -> Tuple[Dict[int, np.ndarray], Optional[np.ndarray]]:
        """One augmentation for the window, drawn on the target frame (+ label) and replayed
        on the other frames; returns the augmented frames and label."""
        # uint8 label ids resize with PIL "nearest"
        sem_seg = None if labels is None else np.asarray(labels, dtype=np.uint8)
        transforms, target_img, sem_seg = augment_window(
            self.augmentations, images[target], sem_seg
        )
        out_images = {target: target_img}
        for idx, img in images.items():
            if idx != target:
                out_images[idx] = apply_transforms(transforms, img)
        if self.frame_color_augmentation is not None:
            # one photometric draw per frame: the target first, then by frame index
            for idx in [target] + sorted(i for i in out_images if i != target):
                img = out_images[idx]
                out_images[idx] = self.frame_color_augmentation.get_transform(img).apply_image(img)
        return out_images, sem_seg

    @staticmethod
    def _to_model_input(
        record: Dict[str, Any],
        target_img: np.ndarray,
        images: Dict[int, np.ndarray],
        window: Sequence[int],
        random_index: int,
        sem_seg: Optional[np.ndarray],
    ) -> Dict[str, Any]:
        """The output dict of the class docstring (CHW uint8 tensors)."""

        def to_chw(img: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.ascontiguousarray(img.transpose(2, 0, 1)))

        height, width = target_img.shape[:2]
        # one copy of each frame, straight into the [T, 3, H, W] batch
        frames = np.empty((len(window),) + images[window[-1]].transpose(2, 0, 1).shape, np.uint8)
        for slot, i in enumerate(window):
            frames[slot] = images[i].transpose(2, 0, 1)
        result = {
            "frames": torch.from_numpy(frames),
            "random_frame": to_chw(images[random_index]),
            "height": height,
            "width": width,
            "file_name": record["file_name"],
            "video_id": record.get("video_id"),
            "frame_index": int(record["frame_index"]),
        }
        if sem_seg is not None:
            result["sem_seg"] = torch.as_tensor(sem_seg.astype(np.int64))
        return result


def _raw_mask_path(record: Dict[str, Any]) -> Optional[str]:
    """The record's raw mask (original ids): ``raw_sem_seg_file_name``, else the label map."""
    return record.get("raw_sem_seg_file_name") or record.get("sem_seg_file_name")
