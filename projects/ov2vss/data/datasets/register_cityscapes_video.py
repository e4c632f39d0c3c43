"""Registration of Cityscapes as a video dataset (cross-dataset zero-shot, paper Table II).

Layout under ``$DETECTRON2_DATASETS/cityscapes`` (see datasets/README.md)::

    leftImg8bit_sequence/{split}/{city}/{city}_{seq:06d}_{frame:06d}_leftImg8bit.png
                                                     30-frame snippets
    gtFine/{split}/{city}/{city}_{seq:06d}_{frame:06d}_gtFine_labelTrainIds.png
                                                     19 train ids, 255 = ignore

Only the 20th frame of each snippet is annotated. One record per ground-truth file; its
snippet (frames f-19 .. f+10) is built by frame-number arithmetic, so frame files are not
listed here (the mapper reports a missing one by name). ``sem_seg_file_name`` is the
``*_labelTrainIds.png`` file, already in the label space of ``stuff_classes`` (19 train ids,
255 ignored), so detectron2's stock mapper and evaluator read correct labels; there are no
other raw ids to keep (no ``raw_sem_seg_file_name``).
Registered: ``cityscapes_video_train``, ``cityscapes_video_val`` (vocabulary = the 19 train-id
names; ``novel_classes`` = classes without a counterpart among the VSPW seen classes).
"""

import os
import re
from typing import Dict, List, Optional, Tuple

from ...fileio import read_image_size
from ..label_maps import IGNORE_LABEL
from ..vspw_classes import VSPW_NUM_SEEN, get_vspw_class_names
from .common import VideoFrameList, register_dataset
from .root import datasets_root as default_datasets_root

__all__ = [
    "CITYSCAPES_CLASS_NAMES",
    "CITYSCAPES_TO_VSPW",
    "SNIPPET_FRAMES_BEFORE",
    "SNIPPET_FRAMES_AFTER",
    "cityscapes_novel_classes",
    "cityscapes_video_metadata",
    "load_cityscapes_video",
    "register_cityscapes_video",
    "register_all_cityscapes_video",
]

# train ids 0..18 (the trainId order of cityscapesscripts' labels.py)
CITYSCAPES_CLASS_NAMES = [
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
]  # fmt: skip

# Each Cityscapes class -> the VSPW classes (raw names) whose pixels show the same concept.
# A class is novel when none of its counterparts is a VSPW *seen* class (raw id 1..80): the
# model trained on vspw_train_seen has then never been supervised on it. Judgement calls:
#  - sidewalk: VSPW has no sidewalk class; paved walkways are "path".
#  - vegetation / terrain: VSPW splits them into tree / other_plant / flower and grass /
#    ground / sand; the concepts are seen even though the words differ.
#  - traffic sign: VSPW has no sign class ("billboard_or_Bulletin_Board" is advertising).
#  - rider: VSPW labels a person on a bicycle or motorcycle "person"; the rider/pedestrian
#    distinction is new, so rider counts as novel.
#  - train: VSPW's "train" is raw id 124, an unseen class.
# (The paper states that 8 Cityscapes classes are novel without naming them; this table,
# not that count, defines novel_classes here.)
CITYSCAPES_TO_VSPW: Dict[str, Tuple[str, ...]] = {
    "road": ("road", "crosswalk"),
    "sidewalk": ("path",),
    "building": ("building", "house"),
    "wall": ("wall",),
    "fence": ("handrail_or_fence",),
    "pole": ("pole",),
    "traffic light": ("traffic_light",),
    "traffic sign": (),
    "vegetation": ("tree", "other_plant", "flower"),
    "terrain": ("grass", "ground", "sand"),
    "sky": ("sky",),
    "person": ("person",),
    "rider": (),
    "car": ("car",),
    "truck": ("truck",),
    "bus": ("bus",),
    "train": ("train",),
    "motorcycle": ("motorcycle",),
    "bicycle": ("bicycle",),
}

# Cityscapes sequences: the annotated frame is the 20th of a 30-frame snippet.
SNIPPET_FRAMES_BEFORE = 19
SNIPPET_FRAMES_AFTER = 10
_GT_SUFFIX = "_gtFine_labelTrainIds.png"
_GT_PATTERN = re.compile(
    r"^(?P<city>.+)_(?P<seq>\d{6})_(?P<frame>\d{6})" + re.escape(_GT_SUFFIX) + "$"
)
_README = "datasets/README.md"


def cityscapes_novel_classes() -> List[int]:
    """Train ids of the Cityscapes classes with no VSPW seen-class counterpart."""
    vspw = get_vspw_class_names()
    seen = set(vspw[:VSPW_NUM_SEEN])
    novel = []
    for i, name in enumerate(CITYSCAPES_CLASS_NAMES):
        unknown = [c for c in CITYSCAPES_TO_VSPW[name] if c not in vspw]
        if unknown:
            raise ValueError(f"CITYSCAPES_TO_VSPW[{name!r}] names unknown VSPW classes {unknown}")
        if not seen.intersection(CITYSCAPES_TO_VSPW[name]):
            novel.append(i)
    return novel


def cityscapes_video_metadata() -> dict:
    """Vocabulary, label mapping and class split of the Cityscapes video datasets."""
    num = len(CITYSCAPES_CLASS_NAMES)
    lut = [-1] * 256
    for i in range(num):
        lut[i] = i
    lut[IGNORE_LABEL] = IGNORE_LABEL
    novel = cityscapes_novel_classes()
    return {
        "stuff_classes": list(CITYSCAPES_CLASS_NAMES),
        "class_texts": list(CITYSCAPES_CLASS_NAMES),
        "label_lut": lut,
        "seen_classes": [i for i in range(num) if i not in novel],
        "unseen_classes": novel,
        "novel_classes": list(novel),
        "hidden_raw_ids": [],
    }


def load_cityscapes_video(root: str, split: str) -> List[dict]:
    """One record per ``*_gtFine_labelTrainIds.png`` of ``split``, with its 30-frame snippet.

    Args:
        root: the Cityscapes root (holds ``leftImg8bit_sequence/`` and ``gtFine/``).
        split: "train", "val" or "test".
    Returns:
        records sorted by file name; ``frame_index`` is the annotated frame's position in
        ``video_frames`` (19, fewer only if the frame number is below 19).
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"Cityscapes root {root} does not exist (see {_README}; the root is read from "
            "$DETECTRON2_DATASETS)"
        )
    gt_root = os.path.join(root, "gtFine", split)
    image_root = os.path.join(root, "leftImg8bit_sequence", split)
    for d in (gt_root, image_root):
        if not os.path.isdir(d):
            raise FileNotFoundError(f"Cityscapes directory {d} does not exist (see {_README})")

    records = []
    for city in sorted(e.name for e in os.scandir(gt_root) if e.is_dir()):
        gt_dir = os.path.join(gt_root, city)
        for gt in sorted(f for f in os.listdir(gt_dir) if f.endswith(_GT_SUFFIX)):
            m = _GT_PATTERN.match(gt)
            if m is None or m["city"] != city:
                raise ValueError(
                    f"unexpected Cityscapes file name {os.path.join(gt_dir, gt)}: expected "
                    f"{city}_SSSSSS_FFFFFF{_GT_SUFFIX}"
                )
            seq, frame = int(m["seq"]), int(m["frame"])
            first = max(0, frame - SNIPPET_FRAMES_BEFORE)
            names = [
                f"{city}_{seq:06d}_{f:06d}_leftImg8bit.png"
                for f in range(first, frame + SNIPPET_FRAMES_AFTER + 1)
            ]
            video_frames = VideoFrameList(os.path.join(image_root, city), names)
            gt_path = os.path.join(gt_dir, gt)
            height, width = read_image_size(gt_path)  # header only; the label has the frame's size
            records.append(
                {
                    "file_name": video_frames[frame - first],
                    "sem_seg_file_name": gt_path,
                    "video_id": f"{city}_{seq:06d}",
                    "frame_index": frame - first,
                    "video_frames": video_frames,
                    "height": height,
                    "width": width,
                }
            )
    if not records:
        raise FileNotFoundError(
            f"no *{_GT_SUFFIX} file under {gt_root}; create them with "
            "datasets/prepare_cityscapes_video.py "
            f"or cityscapesscripts' createTrainIdLabelImgs (see {_README})"
        )
    return records


def register_cityscapes_video(name: str, root: str, split: str, overwrite: bool = False) -> None:
    """Register ``split`` of the Cityscapes video layout under ``name`` (no disk access)."""
    register_dataset(
        name,
        lambda: load_cityscapes_video(root, split),
        dict(
            cityscapes_video_metadata(),
            image_root=os.path.join(root, "leftImg8bit_sequence", split),
            sem_seg_root=os.path.join(root, "gtFine", split),
            dataset_root=root,
        ),
        overwrite=overwrite,
    )


def register_all_cityscapes_video(
    datasets_root: Optional[str] = None, overwrite: bool = False
) -> List[str]:
    """Register ``cityscapes_video_{train,val}`` under ``datasets_root/cityscapes`` (default
    :func:`~ov2vss.data.datasets.root.datasets_root`); ``overwrite`` replaces them."""
    root = os.path.join(datasets_root or default_datasets_root(), "cityscapes")
    names = []
    for split in ("train", "val"):
        register_cityscapes_video(f"cityscapes_video_{split}", root, split, overwrite=overwrite)
        names.append(f"cityscapes_video_{split}")
    return names


register_all_cityscapes_video()
