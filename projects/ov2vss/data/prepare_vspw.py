"""The prepare step of a VSPW-layout tree: check it and write its label maps
(:mod:`ov2vss.data.label_maps`).

:func:`prepare_vspw` walks a tree, checks it (split files, frames, masks, mask sizes and
values) and writes the missing or outdated label maps (a label map is up to date when it is
newer than its raw mask); ``datasets/prepare_vspw.py`` is its command line and the toy
generator (``ov2vss.data.toy``) calls it on the data it draws. With ``full`` it decodes every
frame and every mask (:func:`check_frame`, :func:`check_mask`), so that a truncated JPEG or a
bad mask value is found before a long run rather than in the middle of it. See
datasets/README.md.
"""

import json
import multiprocessing
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from ..fileio import read_image_size, write_png
from .datasets.vspw_layout import load_vspw_video, read_split_file
from .label_maps import IGNORE_LABEL, LABEL_SPACES, label_map_path, protocol_lut, protocols_of_split
from .vspw_classes import parse_label_num_dic

__all__ = ["check_mask", "check_frame", "write_label_map", "PrepareReport", "prepare_vspw"]


# ---------------------------------------------------------------------------- one mask
def check_mask(
    path: str, frame_size: Tuple[int, int], num_classes: int
) -> Tuple[Optional[np.ndarray], Optional[str]]:
    """Read a raw mask and check it: (mask, None), or (None, problem naming ``path``).

    Args:
        path: the raw mask (PNG, values 0..num_classes and 255).
        frame_size: (height, width) of its frame.
        num_classes: N, the largest class id.
    """
    try:
        with Image.open(path) as img:
            mask = np.asarray(img)  # palette ("P") masks: the indices are the raw ids
    except (OSError, ValueError, SyntaxError) as e:  # PIL reports corrupt data with these
        return None, f"{path}: unreadable ({e})"
    if mask.ndim != 2:
        return None, f"{path}: expected a single-channel mask, got shape {mask.shape}"
    if mask.shape != tuple(frame_size):
        return None, f"{path}: size {mask.shape} differs from its frame's {tuple(frame_size)}"
    values = np.unique(mask)
    bad = values[(values > num_classes) & (values != IGNORE_LABEL)].tolist()
    if bad:
        return None, f"{path}: values {bad[:10]} outside 0..{num_classes} and {IGNORE_LABEL}"
    return mask.astype(np.uint8), None


def check_frame(path: str, size: Optional[Tuple[int, int]] = None) -> Optional[str]:
    """Decode a frame completely: None, or a problem naming ``path`` (unreadable, truncated,
    or not of ``size`` = (height, width), its video's frame size).

    Reading only the header, as registration does, does not find a truncated JPEG.
    """
    try:
        with Image.open(path) as img:
            img.load()
            width, height = img.size
    except (OSError, ValueError, SyntaxError) as e:  # PIL reports corrupt data with these
        return f"{path}: unreadable frame ({e})"
    if size is not None and (height, width) != tuple(size):
        return f"{path}: size {(height, width)} differs from the video's {tuple(size)}"
    return None


def _up_to_date(out: str, raw_mtime: int) -> bool:
    try:
        return os.stat(out).st_mtime_ns >= raw_mtime
    except FileNotFoundError:
        return False


def write_label_map(
    raw_path: str,
    frame: Union[str, Tuple[int, int]],
    num_classes: int,
    outputs: Sequence[Tuple[str, Sequence[int]]],
    force: bool = False,
    verify: bool = False,
) -> Tuple[int, int, Optional[str]]:
    """Write the label maps of one raw mask: ``outputs`` = [(label map path, lut), ...].

    Label maps newer than the raw mask are skipped (all of them up to date: neither the mask
    nor its frame is read, unless ``verify``) unless ``force``. A mask that fails
    :func:`check_mask` writes nothing, and its existing label maps are removed (they would
    describe an older mask).

    Args:
        raw_path: the raw mask.
        frame: its frame's path (the header gives the size) or (height, width).
        num_classes: N; raw values 0..N and 255 are allowed.
        outputs: label map paths with their 256-entry lut (``label_maps.protocol_lut``).
        force: rewrite up-to-date label maps too.
        verify: check the mask even when nothing is to be written.
    Returns:
        (label maps written, label maps skipped, problem or None).
    """
    raw_mtime = os.stat(raw_path).st_mtime_ns if os.path.exists(raw_path) else 0
    todo = [(out, lut) for out, lut in outputs if force or not _up_to_date(out, raw_mtime)]
    skipped = len(outputs) - len(todo)
    if not todo and not verify:
        return 0, skipped, None
    try:
        height, width = read_image_size(frame) if isinstance(frame, str) else frame
    except OSError as e:  # the message names the frame
        mask, problem = None, str(e)
    else:
        mask, problem = check_mask(raw_path, (int(height), int(width)), num_classes)
    if problem:
        for out, _ in outputs:
            if os.path.exists(out):
                os.remove(out)
        return 0, 0, problem
    for out, lut in todo:
        table = np.asarray(lut, dtype=np.int64)
        # check_mask admitted only values with a non-negative entry
        write_png(out, table[mask].astype(np.uint8))
    return len(todo), skipped, None


def _prepare_task(task) -> Tuple[int, int, Optional[str], Optional[str]]:
    """One annotated frame: (label maps written, skipped, mask problem, frame problem)."""
    raw, frame, num_classes, outputs, force, verify, frame_size = task
    # frame_size: (H, W) of the video, to decode the frame against (None: the frame is not read)
    frame_problem = None
    if frame_size is not None:
        frame_problem = check_frame(frame, frame_size)
        frame = frame_size  # the mask is checked against the video's size, even if the frame is bad
    return (*write_label_map(raw, frame, num_classes, outputs, force, verify), frame_problem)


# ---------------------------------------------------------------------------- a tree
@dataclass
class PrepareReport:
    """What :func:`prepare_vspw` found and did."""

    problems: List[str] = field(default_factory=list)  # one line each, naming the file
    summary: List[str] = field(default_factory=list)  # per split: videos, frames, masks
    written: int = 0  # label maps written
    skipped: int = 0  # label maps already up to date
    refused: int = 0  # raw masks refused (nothing written for them)
    decoded: int = 0  # frames decoded with their masks (``full``)
    bad_frames: int = 0  # frames that could not be decoded or have another size (``full``)

    def counts_line(self) -> str:
        return (
            f"label maps: wrote {self.written}, skipped {self.skipped} (up to date), "
            f"refused {self.refused} mask(s)"
        )


def _sample(records: List[dict], masks_per_video: int) -> List[dict]:
    if masks_per_video < 0 or masks_per_video >= len(records):
        return records
    if masks_per_video == 0:
        return []
    picks = np.linspace(0, len(records) - 1, masks_per_video).round().astype(int)
    return [records[i] for i in sorted(set(picks.tolist()))]


def prepare_vspw(
    root: str,
    splits: Sequence[str],
    class_names: Sequence[str],
    num_seen: int,
    *,
    write: bool = True,
    masks_per_video: int = -1,
    workers: int = 1,
    force: bool = False,
    progress: bool = False,
    expected_videos: Optional[Dict[str, int]] = None,
    full: bool = False,
) -> PrepareReport:
    """Check a VSPW-layout tree and (``write``) write its label maps.

    Checks: ``root/label_num_dic_final.json`` (if present) lists ``class_names``; each split
    file exists, is non-empty and lists each video once; every video has frames, every frame
    its mask and every mask its frame; masks are single-channel PNGs of their frame's size with
    values 0..N and 255. With ``write`` every mask whose label maps are missing or older than it
    is checked and converted (all masks are checked when nothing is up to date yet); without it
    ``masks_per_video`` masks per video are read for the checks (-1: all). ``full`` decodes
    every frame and every mask, whether its label maps are up to date or not.

    Args:
        root: dataset root (``train.txt``..., ``data/<video>/{origin,mask}/``).
        splits: split names; "train" gets the seen label space, the others all three.
        class_names: the N classes in raw-id order; the first ``num_seen`` are seen.
        workers: processes converting masks (1: in this process).
        force: rewrite label maps even when they are up to date.
        progress: show a tqdm progress bar.
        expected_videos: {split: video count} of the official release; a different count
            is noted in the summary (not a problem).
        full: decode every frame (truncated or corrupt files, sizes) and every mask.
    """
    num_classes = len(class_names)
    luts = {s: protocol_lut(num_classes, num_seen, s) for s in LABEL_SPACES}
    report = PrepareReport()
    label_file = os.path.join(root, "label_num_dic_final.json")
    if os.path.isfile(label_file):
        try:
            if parse_label_num_dic(label_file) != list(class_names):
                report.problems.append(
                    f"{label_file}: class names differ from the list shipped with ov2vss"
                )
        except (ValueError, json.JSONDecodeError) as e:
            report.problems.append(str(e))

    # video -> (records, label spaces); a video listed by several splits gets their union
    videos: Dict[str, Tuple[List[dict], List[str]]] = {}
    for split in splits:
        try:
            split_file, names = read_split_file(root, split)
        except (OSError, ValueError) as e:
            report.problems.append(str(e))
            continue
        if expected_videos and split in expected_videos and len(names) != expected_videos[split]:
            report.summary.append(
                f"note: {split_file} lists {len(names)} videos; the release has "
                f"{expected_videos[split]}"
            )
        num_records = num_frames = 0
        spaces = list(protocols_of_split(split))  # a protocol's label space is its name
        for video in names:
            if video in videos:
                records, known = videos[video]
                known.extend(s for s in spaces if s not in known)
            else:
                try:
                    records = load_vspw_video(root, video, split_file)
                except (OSError, ValueError) as e:
                    report.problems.append(str(e))
                    continue
                videos[video] = (records, list(spaces))
            num_records += len(records)
            num_frames += len(records[0]["video_frames"])
        report.summary.append(
            f"{split}: {len(names)} videos, {num_frames} frames, {num_records} annotated frames"
        )

    tasks = []
    for video, (records, spaces) in videos.items():
        chosen = records if write or full else _sample(records, masks_per_video)
        for r in chosen:
            raw = r["raw_sem_seg_file_name"]
            outputs = [
                (label_map_path(root, s, video, os.path.basename(raw)), luts[s]) for s in spaces
            ]
            size = (r["height"], r["width"]) if full else None
            verify = full or not write
            tasks.append(
                (raw, r["file_name"], num_classes, outputs if write else [], force, verify, size)
            )
    desc = "frames and masks" if full else "label maps" if write else "masks"
    _run_tasks(tasks, workers, progress, report, desc)
    report.decoded = len(tasks) if full else 0
    return report


def _run_tasks(tasks: list, workers: int, progress: bool, report: PrepareReport, desc: str) -> None:
    from tqdm import tqdm

    first_problem = len(report.problems)
    bar = tqdm(total=len(tasks), unit="frame", desc=desc, disable=not progress)
    try:
        if workers > 1 and len(tasks) > 1:
            chunk = max(1, min(64, len(tasks) // (4 * workers)))
            with multiprocessing.Pool(workers) as pool:
                for result in pool.imap_unordered(_prepare_task, tasks, chunksize=chunk):
                    _count(result, report)
                    bar.update()
        else:
            for task in tasks:
                _count(_prepare_task(task), report)
                bar.update()
    finally:
        bar.close()
    # workers finish in any order: report the masks' problems in a stable order
    report.problems[first_problem:] = sorted(report.problems[first_problem:])


def _count(result: Tuple[int, int, Optional[str], Optional[str]], report: PrepareReport) -> None:
    written, skipped, problem, frame_problem = result
    report.written += written
    report.skipped += skipped
    if problem:
        report.problems.append(problem)
        report.refused += 1
    if frame_problem:
        report.problems.append(frame_problem)
        report.bad_frames += 1
