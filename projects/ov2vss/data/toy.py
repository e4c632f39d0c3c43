"""The embedded toy dataset: short videos of moving coloured shapes in the VSPW layout.

Classes are compositional, "<colour> <shape>" (6 colours x 6 shapes = 36 classes). Eight
combinations are held out as unseen classes, chosen cyclically over 4 colours and 4 shapes
so that within the unseen vocabulary every colour and every shape occurs twice (neither
word alone identifies an unseen class) and every unseen colour/shape also occurs in seen
classes (datasets/README.md, "Toy dataset"). Raw mask ids: 0 = background ("others", ignored
as in VSPW), 1..28 = seen classes, 29..36 = unseen classes, so the generic VSPW registration
(seen = the first ``TOY_NUM_SEEN`` raw ids) applies unchanged. The label maps of every
protocol (``annotations_detectron2/<space>/``) are written by the same code as
datasets/prepare_vspw.py (:func:`ov2vss.data.prepare_vspw.prepare_vspw`).

Generate with ``python -m ov2vss.data.toy --root datasets/VSPW_toy`` (a few seconds) or
:func:`generate_toy_dataset`. Frames and masks are drawn from the same per-object pixel
masks, so labels match the images exactly (up to JPEG noise on the frames).
"""

import argparse
import json
import os
import shutil
from typing import List, Optional, Sequence, Tuple

import numpy as np

# The class design lives with the registration (which must not import this module: running
# `python -m ov2vss.data.toy` would otherwise execute it twice).
from .datasets.register_vspw_toy import TOY_CLASS_NAMES, TOY_COLORS, TOY_NUM_SEEN, TOY_SHAPES
from .label_maps import LABEL_MAP_DIR
from .prepare_vspw import prepare_vspw

__all__ = ["TOY_MARKER", "toy_class_color", "draw_shape_mask", "generate_toy_dataset", "main"]

TOY_MARKER = ".ov2vss_toy_complete.json"  # written last; holds the generation parameters
_FORMAT_VERSION = 3  # 3: label maps under annotations_detectron2/
_OWNED = (
    "data",
    LABEL_MAP_DIR,
    "train.txt",
    "val.txt",
    "test.txt",
    "label_num_dic_final.json",
    TOY_MARKER,
)


def toy_class_color(name: str) -> Tuple[int, int, int]:
    """RGB colour of a toy class ("red star" -> (220, 30, 30))."""
    return TOY_COLORS[name.split(" ")[0]]


def draw_shape_mask(
    height: int, width: int, shape: str, center: Tuple[float, float], radius: float
) -> np.ndarray:
    """Boolean HxW mask of ``shape`` centred at ``center`` = (x, y) with outer radius ``radius``."""
    import cv2  # lazy: importing ov2vss must stay cheap

    canvas = np.zeros((height, width), np.uint8)
    cx, cy = center
    c = (int(round(cx)), int(round(cy)))
    r = max(2.0, radius)

    def poly(points):
        pts = np.array([[cx + x, cy + y] for x, y in points], np.float64)
        cv2.fillPoly(canvas, [np.round(pts).astype(np.int32)], 1, lineType=cv2.LINE_8)

    if shape == "circle":
        cv2.circle(canvas, c, int(round(r)), 1, -1, lineType=cv2.LINE_8)
    elif shape == "ring":
        cv2.circle(canvas, c, int(round(r)), 1, -1, lineType=cv2.LINE_8)
        cv2.circle(canvas, c, int(round(0.55 * r)), 0, -1, lineType=cv2.LINE_8)
    elif shape == "square":
        h = 0.85 * r
        poly([(-h, -h), (h, -h), (h, h), (-h, h)])
    elif shape == "triangle":
        poly([(0, -r), (0.94 * r, 0.75 * r), (-0.94 * r, 0.75 * r)])
    elif shape == "star":
        angles = -np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
        poly(list(zip(radii * np.cos(angles), radii * np.sin(angles))))
    elif shape == "cross":
        a, t = r, 0.35 * r
        poly(
            [
                (-t, -a),
                (t, -a),
                (t, -t),
                (a, -t),
                (a, t),
                (t, t),
                (t, a),
                (-t, a),
                (-t, t),
                (-a, t),
                (-a, -t),
                (-t, -t),
            ]
        )
    else:
        raise ValueError(f"unknown toy shape {shape!r}; expected one of {TOY_SHAPES}")
    return canvas.astype(bool)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth low-saturation grey texture (float RGB), so that the object colours stand out."""
    import cv2

    coarse = rng.normal(size=(max(2, height // 8), max(2, width // 8))).astype(np.float32)
    smooth = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    grey = 125.0 + 22.0 * smooth
    tint = rng.uniform(-8, 8, size=3)
    return grey[..., None] + tint[None, None, :]


def _video_objects(
    rng: np.random.Generator, classes: Sequence[int], height: int, width: int, num_frames: int
) -> list:
    """Per object: raw id, shape, colour and per-frame (center, radius) of a bouncing motion."""
    objects = []
    for raw in classes:
        colour_name, shape = TOY_CLASS_NAMES[raw - 1].split(" ")
        r0 = rng.uniform(0.12, 0.2) * min(height, width)
        pos = np.array([rng.uniform(r0, width - r0), rng.uniform(r0, height - r0)])
        speed, angle = rng.uniform(1.5, 4.0), rng.uniform(0, 2 * np.pi)
        vel = speed * np.array([np.cos(angle), np.sin(angle)])
        phase, period = rng.uniform(0, 2 * np.pi), rng.uniform(8, 20)
        colour = np.clip(
            np.array(TOY_COLORS[colour_name], np.float64) + rng.uniform(-12, 12, size=3), 0, 255
        )
        track = []
        for t in range(num_frames):
            # slight scale change
            radius = r0 * (1.0 + 0.15 * np.sin(2 * np.pi * t / period + phase))
            track.append((tuple(pos), radius))
            pos = pos + vel
            for d, size in ((0, width), (1, height)):  # bounce off the borders
                if pos[d] < r0 or pos[d] > size - r0:
                    vel[d] = -vel[d]
                    pos[d] = np.clip(pos[d], r0, size - r0)
        objects.append({"raw": raw, "shape": shape, "colour": colour, "track": track})
    return objects


def _write_video(
    rng: np.random.Generator,
    video_dir: str,
    objects: list,
    height: int,
    width: int,
    num_frames: int,
) -> None:
    import cv2

    os.makedirs(os.path.join(video_dir, "origin"))
    os.makedirs(os.path.join(video_dir, "mask"))
    background = _background(rng, height, width)
    for t in range(num_frames):
        image = background.copy()
        mask = np.zeros((height, width), np.uint8)
        for obj in objects:  # later objects are drawn on top
            center, radius = obj["track"][t]
            region = draw_shape_mask(height, width, obj["shape"], center, radius)
            image[region] = obj["colour"]
            mask[region] = obj["raw"]
        image += rng.normal(0.0, 6.0, size=image.shape)  # sensor noise, objects included
        bgr = np.clip(np.round(image), 0, 255).astype(np.uint8)[..., ::-1]
        cv2.imwrite(
            os.path.join(video_dir, "origin", f"{t:05d}.jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, 95]
        )
        cv2.imwrite(os.path.join(video_dir, "mask", f"{t:05d}.png"), mask)


def _assign_classes(
    rng: np.random.Generator,
    num_videos: int,
    objects_per_video: Tuple[int, int],
    split: str,
    unseen_in_train_prob: float,
) -> List[List[int]]:
    """Raw class ids of each video's objects (drawn in this order; the last is on top).

    Seen-class slots are filled round-robin from a shuffled cycle of the seen classes, so every
    seen class occurs once the split has at least 28 seen slots. Training videos may also hold
    unseen objects (any slot but the first). Evaluation videos get the unseen classes spread
    over them round-robin (every unseen class is present) next to at least one seen class.
    """
    seen = list(range(1, TOY_NUM_SEEN + 1))
    unseen = list(range(TOY_NUM_SEEN + 1, len(TOY_CLASS_NAMES) + 1))
    seen_cycle = [int(c) for c in rng.permutation(seen)]
    lo, hi = objects_per_video
    videos, next_seen = [], 0
    for i in range(num_videos):
        if split == "train":
            count = int(rng.integers(lo, hi + 1))
            slots_unseen = [j > 0 and rng.random() < unseen_in_train_prob for j in range(count)]
            fixed_unseen = [
                int(c) for c in rng.choice(unseen, size=sum(slots_unseen), replace=False)
            ]
        else:
            fixed_unseen = [
                unseen[k % len(unseen)] for k in range(i, max(num_videos, len(unseen)), num_videos)
            ]
            count = max(int(rng.integers(lo, hi + 1)), len(fixed_unseen) + 1)
        chosen = []
        for _ in range(count - len(fixed_unseen)):
            # consecutive entries are distinct
            chosen.append(seen_cycle[next_seen % len(seen_cycle)])
            next_seen += 1
        # unseen objects go last (on top) so occlusion never hides them completely
        videos.append(chosen + fixed_unseen)
    return videos


def _read_marker(root: str) -> Optional[dict]:
    path = os.path.join(root, TOY_MARKER)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _check_params(p: dict) -> None:
    (flo, fhi), (h, w), (olo, ohi) = p["frames_per_video"], p["image_size"], p["objects_per_video"]
    if p["num_train_videos"] < 1 or p["num_val_videos"] < 1 or p["num_test_videos"] < 0:
        raise ValueError(
            "the toy dataset needs >= 1 train and >= 1 val video (and >= 0 test videos)"
        )
    if not 1 <= flo <= fhi:
        raise ValueError(f"frames_per_video={p['frames_per_video']} must satisfy 1 <= min <= max")
    if h < 32 or w < 32:
        raise ValueError(f"image_size={p['image_size']} must be at least 32x32")
    if not 2 <= olo <= ohi <= 6:
        raise ValueError(
            f"objects_per_video={p['objects_per_video']} must satisfy 2 <= min <= max <= 6"
        )
    unseen = len(TOY_CLASS_NAMES) - TOY_NUM_SEEN
    for split in ("val", "test"):
        n = p[f"num_{split}_videos"]
        if n and n * (ohi - 1) < unseen:
            raise ValueError(
                f"{n} {split} videos with at most {ohi} objects cannot show all {unseen} unseen "
                "classes next to a seen one; use more videos or a larger objects_per_video"
            )
    if not 0.0 <= p["unseen_in_train_prob"] <= 1.0:
        raise ValueError(f"unseen_in_train_prob={p['unseen_in_train_prob']} must lie in [0, 1]")


def _generate(target: str, p: dict) -> None:
    rng = np.random.default_rng(p["seed"])
    (h, w), (flo, fhi) = p["image_size"], p["frames_per_video"]
    os.makedirs(os.path.join(target, "data"))
    for split in ("train", "val", "test"):
        n = p[f"num_{split}_videos"]
        if n == 0:
            continue
        names = []
        for i, classes in enumerate(
            _assign_classes(rng, n, tuple(p["objects_per_video"]), split, p["unseen_in_train_prob"])
        ):
            name, num_frames = f"{split}_{i:03d}", int(rng.integers(flo, fhi + 1))
            objects = _video_objects(rng, classes, h, w, num_frames)
            _write_video(rng, os.path.join(target, "data", name), objects, h, w, num_frames)
            names.append(name)
        with open(os.path.join(target, f"{split}.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(names) + "\n")
    with open(os.path.join(target, "label_num_dic_final.json"), "w", encoding="utf-8") as f:
        json.dump({"others": 0, **{n: i + 1 for i, n in enumerate(TOY_CLASS_NAMES)}}, f, indent=1)
    splits = [s for s in ("train", "val", "test") if p[f"num_{s}_videos"]]
    report = prepare_vspw(target, splits, TOY_CLASS_NAMES, TOY_NUM_SEEN)
    if report.problems:  # a generator bug: the masks are drawn with valid ids only
        raise RuntimeError("toy label maps: " + "; ".join(report.problems[:3]))
    with open(os.path.join(target, TOY_MARKER), "w", encoding="utf-8") as f:
        json.dump(p, f, indent=1)


def generate_toy_dataset(
    root: str,
    seed: int = 0,
    num_train_videos: int = 24,
    num_val_videos: int = 8,
    num_test_videos: int = 0,
    frames_per_video: Tuple[int, int] = (14, 20),
    image_size: Tuple[int, int] = (96, 160),
    objects_per_video: Tuple[int, int] = (2, 4),
    unseen_in_train_prob: float = 0.1,
) -> None:
    """Write the toy dataset in the VSPW_480p layout under ``root`` (deterministic in ``seed``),
    with the label maps of every protocol (``annotations_detectron2/{seen,unseen,all}/``).

    Idempotent: does nothing when ``root`` already holds a toy dataset generated with the same
    parameters; regenerates it when they differ. Refuses to overwrite a non-empty directory
    that the generator did not write. The data is generated next to ``root`` and moved into
    place at the end, so an interrupted run never leaves a half-written dataset behind.

    Args:
        root: output directory (e.g. ``datasets/VSPW_toy``).
        seed: random seed of the whole dataset.
        num_train_videos, num_val_videos, num_test_videos: videos per split (no test.txt
            when ``num_test_videos`` is 0).
        frames_per_video: (min, max) frames per video, all annotated.
        image_size: (height, width) of the frames.
        objects_per_video: (min, max) moving shapes per video.
        unseen_in_train_prob: chance that an additional object of a training video is of an
            unseen class (relabelled 255 by ``vspw_toy_train_seen``, as in real VSPW).
    """
    p = {
        "version": _FORMAT_VERSION,
        "seed": int(seed),
        "num_train_videos": int(num_train_videos),
        "num_val_videos": int(num_val_videos),
        "num_test_videos": int(num_test_videos),
        "frames_per_video": [int(v) for v in frames_per_video],
        "image_size": [int(v) for v in image_size],
        "objects_per_video": [int(v) for v in objects_per_video],
        "unseen_in_train_prob": float(unseen_in_train_prob),
        "class_names": list(TOY_CLASS_NAMES),
    }
    _check_params(p)
    root = os.path.normpath(root)
    if os.path.isdir(root) and _read_marker(root) == p:
        return
    if (
        os.path.exists(root)
        and _read_marker(root) is None
        and (not os.path.isdir(root) or os.listdir(root))
    ):
        raise FileExistsError(
            f"{root} exists and was not written by the toy generator (no {TOY_MARKER}); "
            "refusing to overwrite it"
        )

    tmp = f"{root}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _generate(tmp, p)
        if os.path.isdir(root):
            if _read_marker(root) == p:  # another process finished the same dataset meanwhile
                return
            for entry in _OWNED:  # only what the generator wrote
                path = os.path.join(root, entry)
                if os.path.isdir(path):
                    shutil.rmtree(path)
                elif os.path.exists(path):
                    os.remove(path)
            os.rmdir(root)  # fails (and keeps the directory) if anything else is in it
        os.rename(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Command line: ``python -m ov2vss.data.toy --root DIR [--seed S] [...]``."""
    parser = argparse.ArgumentParser(description="Generate the OV2VSS toy dataset (VSPW layout).")
    parser.add_argument("--root", required=True, help="output directory, e.g. datasets/VSPW_toy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train-videos", type=int, default=24)
    parser.add_argument("--num-val-videos", type=int, default=8)
    parser.add_argument("--num-test-videos", type=int, default=0)
    parser.add_argument(
        "--frames-per-video", type=int, nargs=2, default=(14, 20), metavar=("MIN", "MAX")
    )
    parser.add_argument("--image-size", type=int, nargs=2, default=(96, 160), metavar=("H", "W"))
    parser.add_argument(
        "--objects-per-video", type=int, nargs=2, default=(2, 4), metavar=("MIN", "MAX")
    )
    parser.add_argument("--unseen-in-train-prob", type=float, default=0.1)
    args = parser.parse_args(argv)
    generate_toy_dataset(
        args.root,
        seed=args.seed,
        num_train_videos=args.num_train_videos,
        num_val_videos=args.num_val_videos,
        num_test_videos=args.num_test_videos,
        frames_per_video=tuple(args.frames_per_video),
        image_size=tuple(args.image_size),
        objects_per_video=tuple(args.objects_per_video),
        unseen_in_train_prob=args.unseen_in_train_prob,
    )
    print(
        f"toy dataset ready in {args.root}: {TOY_NUM_SEEN} seen + "
        f"{len(TOY_CLASS_NAMES) - TOY_NUM_SEEN} unseen classes"
    )


if __name__ == "__main__":
    main()
