"""Registration of VSPW (480p release) and of any dataset stored in the same layout
(:mod:`~ov2vss.data.datasets.vspw_layout`).

Registered for VSPW (root ``$DETECTRON2_DATASETS/VSPW_480p``): ``vspw_train_seen``,
``vspw_{val,test}_{unseen,seen,all}``. Registration never touches the disk; files are listed
when ``DatasetCatalog.get(name)`` is first called. Each record's ``sem_seg_file_name`` is the
label map of its protocol's label space (ids 0..len(stuff_classes)-1, 255 elsewhere), as
detectron2's stock mapper and evaluator expect; ``raw_sem_seg_file_name`` is the raw mask,
for what needs the original ids (INPUT.MASK_UNSEEN_PIXELS, VSPW's video consistency). A
missing label map is an error naming the file and the command that writes it.
"""

import os
from typing import List, Optional, Sequence

from ..label_maps import LABEL_SPACES, label_map_root, protocol_lut, protocols_of_split
from ..vspw_classes import VSPW_NUM_SEEN, class_name_to_text, get_vspw_class_names
from .common import register_dataset
from .root import datasets_root as default_datasets_root
from .vspw_layout import load_vspw_video, read_split_file

__all__ = [
    "vspw_protocol_metadata",
    "load_vspw_split",
    "register_vspw_family",
    "register_all_vspw",
]

_README = "datasets/README.md"


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
    from the raw masks; the mapper and evaluator read the label maps, not the lut.

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


def load_vspw_split(
    root: str,
    split: str,
    label_space: Optional[str] = None,
    generate_command: Optional[str] = None,
) -> List[dict]:
    """List one split of a VSPW-layout dataset: one record per (annotated) frame.

    Args:
        root: dataset root (holds ``{split}.txt``, ``data/`` and ``annotations_detectron2/``).
        split: "train", "val" or "test" (any name with a ``{split}.txt`` file).
        label_space: "seen", "unseen" or "all": ``sem_seg_file_name`` is the label map of that
            space, which must exist. None lists the raw masks only.
        generate_command: for a generated dataset (the toy data), the command that writes
            it, label maps included; quoted when the root or a label map is missing. Default:
            a downloaded tree, whose label maps ``python datasets/prepare_vspw.py --root
            <root>`` writes.
    Returns:
        records ``{"file_name", "sem_seg_file_name", "raw_sem_seg_file_name", "video_id",
        "frame_index", "video_frames", "height", "width"}``, videos in split-file order,
        frames in order.
    """
    if label_space is not None and label_space not in LABEL_SPACES:
        raise ValueError(f"unknown label space {label_space!r}; expected one of {LABEL_SPACES}")
    if generate_command and not os.path.isdir(root):
        raise FileNotFoundError(
            f"dataset root {root} does not exist (generate it with `{generate_command}`; see "
            f"{_README}; the root is read from $DETECTRON2_DATASETS)"
        )
    split_file, videos = read_split_file(root, split)
    if label_space is None:
        return [r for video in videos for r in load_vspw_video(root, video, split_file)]

    command = generate_command or f"python datasets/prepare_vspw.py --root {root}"
    space_dir = label_map_root(root, label_space)
    if not os.path.isdir(space_dir):
        raise FileNotFoundError(
            f"the label maps of {root} are missing: {space_dir} does not exist; write them "
            f"with `{command}` (see {_README})"
        )
    records = []
    for video in videos:
        video_records = load_vspw_video(root, video, split_file, label_space)
        # one directory listing per video, nothing decoded
        video_dir = os.path.join(space_dir, video)
        present = set(os.listdir(video_dir)) if os.path.isdir(video_dir) else set()
        missing = [
            r["sem_seg_file_name"]
            for r in video_records
            if os.path.basename(r["sem_seg_file_name"]) not in present
        ]
        if missing:
            raise FileNotFoundError(
                f"label map {missing[0]} does not exist ({len(missing)} of {len(video_records)} "
                f"label maps of video {video!r} missing); write the label maps with "
                f"`{command}` (see {_README})"
            )
        records.extend(video_records)
    return records


def register_vspw_family(
    prefix: str,
    root: str,
    class_names: Sequence[str],
    num_seen: int,
    splits: Sequence[str] = ("train", "val", "test"),
    class_texts: Optional[Sequence[str]] = None,
    overwrite: bool = False,
    generate_command: Optional[str] = None,
) -> List[str]:
    """Register ``{prefix}_train_seen`` and ``{prefix}_{split}_{unseen,seen,all}`` for the
    other splits (no disk access).

    Records point at the protocol's label maps (``sem_seg_root`` =
    ``root/annotations_detectron2/<space>``); raw masks stay under ``raw_sem_seg_root`` =
    ``root/data``. ``hidden_raw_ids`` (pixels hidden from the input by
    INPUT.MASK_UNSEEN_PIXELS) holds the unseen raw ids for the training split and is empty
    otherwise.

    Args:
        prefix: name prefix ("vspw", "vspw_toy", ...).
        root: dataset root in the VSPW layout.
        class_names: class names in raw-id order (raw id = index + 1).
        num_seen: the first ``num_seen`` classes are seen, the rest unseen.
        splits: split names (each a ``{split}.txt`` file); "train" is registered with the
            seen protocol only, every other split with all three.
        class_texts: prompt texts (default: "_or_" -> ", ", "_" -> " ").
        overwrite: replace existing registrations of the same names.
        generate_command: for a generated dataset, the command that writes it (see
            :func:`load_vspw_split`).
    Returns:
        the registered dataset names.
    """
    data_root = os.path.join(root, "data")
    names = []
    for split in splits:
        for protocol in protocols_of_split(split):  # a protocol's label space is its name
            name = f"{prefix}_{split}_{protocol}"
            hidden = (
                list(range(num_seen + 1, len(class_names) + 1))
                if split == "train" and protocol == "seen"
                else []
            )
            register_dataset(
                name,
                lambda split=split, space=protocol: load_vspw_split(
                    root, split, space, generate_command
                ),
                dict(
                    vspw_protocol_metadata(class_names, num_seen, protocol, class_texts),
                    hidden_raw_ids=hidden,
                    image_root=data_root,
                    sem_seg_root=label_map_root(root, protocol),
                    raw_sem_seg_root=data_root,
                    label_space=protocol,
                    dataset_root=root,
                ),
                overwrite=overwrite,
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
