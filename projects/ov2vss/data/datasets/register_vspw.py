"""Registration of VSPW (480p release) and of any dataset stored in the same layout.

Layout under ``root`` (see datasets/README.md)::

    train.txt, val.txt, test.txt       one video name per line
    data/<video>/origin/<frame>.jpg    every frame of the video
    data/<video>/mask/<frame>.png      annotation of every frame; raw values 0..N, 255
    annotations_detectron2/<space>/<video>/<frame>.png
                                       label maps written by datasets/prepare_vspw.py
                                       (space: seen, unseen or all; see ov2vss.data.label_maps)

Registered for VSPW (root ``$DETECTRON2_DATASETS/VSPW_480p``): ``vspw_train_seen``,
``vspw_{val,test}_{unseen,seen,all}``. Registration never touches the disk; files are listed
when ``DatasetCatalog.get(name)`` is first called. Each record's ``sem_seg_file_name`` is the
label map of its protocol's label space (ids 0..len(stuff_classes)-1, 255 elsewhere), as
detectron2's stock mapper and evaluator expect; ``raw_sem_seg_file_name`` is the raw mask,
for what needs the original ids (INPUT.MASK_UNSEEN_PIXELS, VSPW's video consistency). A
missing label map is an error naming the file and the prepare command.

VSPW annotates every frame, so a video whose mask folder lacks the mask of one of its frames
is an error naming the first missing mask (no record is silently left out of training or
evaluation), and a video without any mask is reported as unannotated: it can be neither
trained on nor evaluated. These checks list folders only; nothing is decoded
(``datasets/prepare_vspw.py --full`` decodes every frame and mask, see datasets/README.md).
"""

import collections
import os
import re
from typing import Callable, List, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from ..label_maps import (
    IGNORE_LABEL,
    LABEL_SPACES,
    SPLIT_PROTOCOLS,
    label_map_path,
    label_map_root,
    label_space_of,
    protocol_lut,
    protocols_of_split,
)
from ..vspw_classes import VSPW_NUM_SEEN, class_name_to_text, get_vspw_class_names
from .root import datasets_root as default_datasets_root

__all__ = [
    "VideoFrameList",
    "natural_sort_key",
    "read_image_size",
    "vspw_protocol_metadata",
    "load_vspw_video",
    "load_vspw_split",
    "read_split_file",
    "default_prepare_command",
    "register_dataset",
    "register_vspw_split",
    "register_vspw_family",
    "register_all_vspw",
    "SPLIT_PROTOCOLS",
    "PROTOCOLS",
    "IGNORE_LABEL",
]

PROTOCOLS = LABEL_SPACES  # each protocol has its own label space
_README = "datasets/README.md"


class VideoFrameList(list):
    """A list of frame paths that share one directory, pickled as (directory, file names).

    detectron2 pickles every dataset record separately; with one record per annotated frame a
    plain list of full paths would be stored ~70 times per VSPW video (about 1 GB for the
    training split). Behaves exactly like ``list[str]`` of full paths otherwise.
    """

    def __init__(self, directory: str, file_names: Sequence[str]):
        super().__init__(os.path.join(directory, f) for f in file_names)
        self._directory = directory

    def __reduce__(self):
        names = tuple(os.path.basename(p) for p in self)
        if any(os.path.join(self._directory, n) != p for n, p in zip(names, self)):
            return (list, (list(self),))  # modified after construction: pickle as a plain list
        return (VideoFrameList, (self._directory, names))


def natural_sort_key(name: str) -> tuple:
    """Sort key that orders embedded numbers numerically ("9.jpg" < "10.jpg")."""
    return tuple(
        (0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name) if p
    )


def read_image_size(path: str) -> Tuple[int, int]:
    """(height, width) of an image from its header, without decoding the pixels."""
    try:
        with Image.open(path) as img:
            width, height = img.size
    except OSError as e:
        raise OSError(f"cannot read the image header of {path}: {e}") from e
    return height, width


def vspw_protocol_metadata(
    class_names: Sequence[str],
    num_seen: int,
    protocol: str,
    class_texts: Optional[Sequence[str]] = None,
) -> dict:
    """Vocabulary and label mapping of one evaluation protocol.

    Raw mask value r in 1..N is class ``class_names[r - 1]``; raw ids 1..num_seen are seen,
    the rest unseen; raw 0 ("others") and 255 ("void") are ignored; any other raw value is
    not allowed (lut -1). ``label_lut`` documents how the protocol's label maps were made
    from the raw masks (datasets/prepare_vspw.py); the mapper and evaluator read the label
    maps, not the lut.

    Args:
        class_names: the N class names in raw-id order.
        num_seen: how many of them (the first ones) are seen in training.
        protocol: "seen" (vocabulary = seen names, unseen pixels ignored), "unseen" (unseen
            names, seen pixels ignored) or "all" (every name).
        class_texts: prompt texts in the same order (default: :func:`class_name_to_text`).
    Returns:
        dict with stuff_classes, class_texts, label_lut, seen_classes, unseen_classes.
    """
    num = len(class_names)
    lut = protocol_lut(num, num_seen, protocol)  # checks num, num_seen and protocol
    texts = (
        [class_name_to_text(n) for n in class_names] if class_texts is None else list(class_texts)
    )
    if len(texts) != num:
        raise ValueError(f"{len(texts)} class_texts for {num} class names")

    first_raw, last_raw = {"seen": (1, num_seen), "unseen": (num_seen + 1, num), "all": (1, num)}[
        protocol
    ]
    vocab = list(range(first_raw - 1, last_raw))  # indices into class_names
    # seen/unseen are indices into this protocol's vocabulary
    seen = [i for i, c in enumerate(vocab) if c < num_seen]
    unseen = [i for i, c in enumerate(vocab) if c >= num_seen]
    return {
        "stuff_classes": [class_names[c] for c in vocab],
        "class_texts": [texts[c] for c in vocab],
        "label_lut": lut,
        "seen_classes": seen,
        "unseen_classes": unseen,
    }


def _list_files(directory: str, suffix: str) -> List[str]:
    return sorted(
        (e.name for e in os.scandir(directory) if e.is_file() and e.name.endswith(suffix)),
        key=natural_sort_key,
    )


def default_prepare_command(root: str) -> str:
    """The command that writes the label maps of a VSPW tree."""
    return f"python datasets/prepare_vspw.py --root {root}"


def _check_label_maps(
    records: List[dict], video: str, space_dir: str, prepare_command: str
) -> None:
    """Every record's label map exists (one directory listing per video, nothing decoded)."""
    video_dir = os.path.join(space_dir, video)
    present = set(os.listdir(video_dir)) if os.path.isdir(video_dir) else set()
    missing = [
        r["sem_seg_file_name"]
        for r in records
        if os.path.basename(r["sem_seg_file_name"]) not in present
    ]
    if missing:
        raise FileNotFoundError(
            f"label map {missing[0]} does not exist ({len(missing)} of {len(records)} label "
            f"maps of video {video!r} missing); write the label maps with `{prepare_command}` "
            f"(see {_README})"
        )


def _report_missing_masks(video: str, frames: List[str], annotated: set, mask_dir: str) -> None:
    """VSPW annotates every frame: a frame without its mask is an error naming the first one."""
    missing = [f for f in frames if os.path.splitext(f)[0] not in annotated]
    first = os.path.join(mask_dir, os.path.splitext(missing[0])[0] + ".png")
    raise FileNotFoundError(
        f"mask {first} does not exist: {len(missing)} of {len(frames)} frames of video "
        f"{video!r} have no mask, but VSPW annotates every frame (an incomplete download or "
        f"extraction?); no frame is left out silently (see {_README})"
    )


def load_vspw_video(
    root: str,
    video: str,
    listed_in: str = "the split file",
    label_space: Optional[str] = None,
    prepare_command: Optional[str] = None,
) -> List[dict]:
    """Records of one video of a VSPW-layout dataset (one per frame, in frame order).

    Every frame must have its mask and every mask its frame (module docstring); the folders
    are listed, nothing is decoded.

    Args:
        root: dataset root.
        video: video name (a directory under ``root/data``).
        listed_in: where the video name came from, quoted in errors.
        label_space: "seen", "unseen" or "all": ``sem_seg_file_name`` is the label map of
            that space, which must exist. None: only the raw masks are listed (no
            ``sem_seg_file_name``), as the prepare step needs.
        prepare_command: quoted when a label map is missing
            (default :func:`default_prepare_command`).
    Returns:
        records ``{"file_name", "raw_sem_seg_file_name", "video_id", "frame_index",
        "video_frames", "height", "width"}`` plus ``sem_seg_file_name`` with a label space.
    """
    frame_dir = os.path.join(root, "data", video, "origin")
    mask_dir = os.path.join(root, "data", video, "mask")
    frames = _list_files(frame_dir, ".jpg") if os.path.isdir(frame_dir) else []
    if not frames:
        raise FileNotFoundError(
            f"video {video!r} listed in {listed_in} has no frames: no .jpg in {frame_dir}"
        )
    masks = _list_files(mask_dir, ".png") if os.path.isdir(mask_dir) else []
    if not masks:
        where = "no .png in" if os.path.isdir(mask_dir) else "no mask folder"
        raise FileNotFoundError(
            f"video {video!r} listed in {listed_in} is unannotated ({where} {mask_dir}): "
            "VSPW annotates every frame, and a video without masks can be neither trained on "
            f"nor evaluated; complete the data or leave the video out of the split (see {_README})"
        )
    video_frames = VideoFrameList(frame_dir, frames)
    index = {os.path.splitext(f)[0]: i for i, f in enumerate(frames)}
    height, width = read_image_size(video_frames[0])  # VSPW frames of one video share a size
    records = []
    for mask in masks:
        stem = os.path.splitext(mask)[0]
        if stem not in index:
            raise FileNotFoundError(
                f"mask {os.path.join(mask_dir, mask)} has no matching frame "
                f"{os.path.join(frame_dir, stem + '.jpg')}"
            )
        i = index[stem]
        record = {"file_name": video_frames[i]}
        if label_space is not None:
            record["sem_seg_file_name"] = label_map_path(root, label_space, video, mask)
        record.update(
            {
                "raw_sem_seg_file_name": os.path.join(mask_dir, mask),
                "video_id": video,
                "frame_index": i,
                "video_frames": video_frames,
                "height": height,
                "width": width,
            }
        )
        records.append(record)
    if len(records) < len(frames):
        _report_missing_masks(video, frames, {os.path.splitext(m)[0] for m in masks}, mask_dir)
    if label_space is not None:
        _check_label_maps(
            records,
            video,
            label_map_root(root, label_space),
            prepare_command or default_prepare_command(root),
        )
    return records


def read_split_file(root: str, split: str, hint: str = f"see {_README}") -> Tuple[str, List[str]]:
    """Path of ``root/{split}.txt`` and the video names it lists (checked: present, non-empty,
    unique)."""
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"dataset root {root} does not exist ({hint}; the root is read from "
            "$DETECTRON2_DATASETS)"
        )
    split_file = os.path.join(root, f"{split}.txt")
    if not os.path.isfile(split_file):
        raise FileNotFoundError(f"split file {split_file} does not exist ({hint})")
    with open(split_file, encoding="utf-8") as f:
        videos = [line.strip() for line in f if line.strip()]
    if not videos:
        raise ValueError(f"split file {split_file} lists no video")
    duplicates = sorted(v for v, n in collections.Counter(videos).items() if n > 1)
    if duplicates:
        raise ValueError(f"split file {split_file} lists videos more than once: {duplicates[:5]}")
    return split_file, videos


def load_vspw_split(
    root: str,
    split: str,
    hint: str = f"see {_README}",
    label_space: Optional[str] = None,
    prepare_command: Optional[str] = None,
) -> List[dict]:
    """List one split of a VSPW-layout dataset: one record per (annotated) frame.

    Args:
        root: dataset root (holds ``{split}.txt``, ``data/`` and ``annotations_detectron2/``).
        split: "train", "val" or "test" (any name with a ``{split}.txt`` file).
        hint: appended to "file not found" errors (how to obtain the data).
        label_space: the label space of ``sem_seg_file_name`` (see :func:`load_vspw_video`);
            its label maps must exist. None lists the raw masks only.
        prepare_command: quoted when label maps are missing.
    Returns:
        records ``{"file_name", "sem_seg_file_name", "raw_sem_seg_file_name", "video_id",
        "frame_index", "video_frames", "height", "width"}``, videos in split-file order,
        frames in order.
    """
    split_file, videos = read_split_file(root, split, hint)
    command = prepare_command or default_prepare_command(root)
    if label_space is not None:
        space_dir = label_map_root(root, label_space)
        if not os.path.isdir(space_dir):
            raise FileNotFoundError(
                f"the label maps of {root} are missing: {space_dir} does not exist; write them "
                f"with `{command}` (see {_README})"
            )
    records = []
    for video in videos:
        records.extend(load_vspw_video(root, video, split_file, label_space, command))
    return records


def register_dataset(
    name: str, loader: Callable[[], List[dict]], metadata: dict, overwrite: bool = False
) -> None:
    """Register ``loader`` under ``name`` with ``metadata`` (plus the shared evaluation keys).

    With ``overwrite`` an existing registration of ``name`` (records and metadata) is replaced.
    """
    if overwrite and name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if overwrite and name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(
        ignore_label=IGNORE_LABEL, evaluator_type="video_sem_seg", **metadata
    )


def register_vspw_split(
    name: str,
    root: str,
    split: str,
    class_names: Sequence[str],
    num_seen: int,
    protocol: str,
    class_texts: Optional[Sequence[str]] = None,
    hint: str = f"see {_README}",
    overwrite: bool = False,
    prepare_command: Optional[str] = None,
) -> None:
    """Register one (split, protocol) of a VSPW-layout dataset under ``name`` (no disk access).

    Records point at the protocol's label maps (``sem_seg_root`` =
    ``root/annotations_detectron2/<space>``); raw masks stay under ``raw_sem_seg_root`` =
    ``root/data``. ``hidden_raw_ids`` (pixels hidden from the input by
    INPUT.MASK_UNSEEN_PIXELS) holds the unseen raw ids for the training split and is empty
    otherwise.
    """
    meta = vspw_protocol_metadata(class_names, num_seen, protocol, class_texts)
    space = label_space_of(protocol)
    hidden = (
        list(range(num_seen + 1, len(class_names) + 1))
        if split == "train" and protocol == "seen"
        else []
    )
    data_root = os.path.join(root, "data")
    command = prepare_command or default_prepare_command(root)
    register_dataset(
        name,
        lambda: load_vspw_split(root, split, hint, space, command),
        dict(
            meta,
            hidden_raw_ids=hidden,
            image_root=data_root,
            sem_seg_root=label_map_root(root, space),
            raw_sem_seg_root=data_root,
            label_space=space,
            dataset_root=root,
        ),
        overwrite=overwrite,
    )


def register_vspw_family(
    prefix: str,
    root: str,
    class_names: Sequence[str],
    num_seen: int,
    splits: Sequence[str] = ("train", "val", "test"),
    class_texts: Optional[Sequence[str]] = None,
    hint: str = f"see {_README}",
    overwrite: bool = False,
    prepare_command: Optional[str] = None,
) -> List[str]:
    """Register ``{prefix}_train_seen`` and ``{prefix}_{split}_{unseen,seen,all}`` for the others.

    Args:
        prefix: name prefix ("vspw", "vspw_toy", ...).
        root: dataset root in the VSPW layout.
        class_names: class names in raw-id order (raw id = index + 1).
        num_seen: the first ``num_seen`` classes are seen, the rest unseen.
        splits: split names (each a ``{split}.txt`` file); "train" is registered with the
            seen protocol only (SPLIT_PROTOCOLS), every other split with all three.
        class_texts: prompt texts (default: "_or_" -> ", ", "_" -> " ").
        hint: how to obtain the data, appended to "file not found" errors.
        overwrite: replace existing registrations of the same names.
        prepare_command: the command that writes the label maps, quoted when they are
            missing (default ``python datasets/prepare_vspw.py --root <root>``).
    Returns:
        the registered dataset names.
    """
    names = []
    for split in splits:
        for protocol in protocols_of_split(split):
            name = f"{prefix}_{split}_{protocol}"
            register_vspw_split(
                name,
                root,
                split,
                class_names,
                num_seen,
                protocol,
                class_texts,
                hint,
                overwrite,
                prepare_command,
            )
            names.append(name)
    return names


def register_all_vspw(datasets_root: Optional[str] = None, overwrite: bool = False) -> List[str]:
    """Register the official VSPW datasets found under ``datasets_root/VSPW_480p`` (default
    :func:`~ov2vss.data.datasets.root.datasets_root`); ``overwrite`` replaces them."""
    root = os.path.join(datasets_root or default_datasets_root(), "VSPW_480p")
    return register_vspw_family(
        "vspw", root, get_vspw_class_names(), VSPW_NUM_SEEN, overwrite=overwrite
    )


register_all_vspw()
