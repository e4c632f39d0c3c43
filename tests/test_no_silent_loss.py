"""Nothing silently wrong, nothing lost: the demo's outputs (checked before any work, kept when
a run stops early, the weights recorded, repeatable without weights), gaps and corrupt files
in VSPW-layout data (README "Segment your own video", datasets/README.md).

The demo runs are made by the module fixture ``demo``: one as a real command line (a
subprocess: a fresh process's warnings), the others through demo.py's ``main(argv)`` in this
process meanwhile; the failing ones stop before the model is built, the others segment 3-4
small frames.
"""

import json
import os
import re
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor

import av
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from PIL import Image

from ov2vss.data.datasets.register_vspw import register_vspw_family
from ov2vss.data.prepare_vspw import prepare_vspw
from ov2vss.data.vspw_classes import VSPW_NUM_SEEN, get_vspw_class_names

SMALL = ["--opts", "INPUT.MIN_SIZE_TEST", "64"]
VOCAB = "road, car, person"
NOISE = ("No pretrained weights loaded", "torch.jit.script` is deprecated")


@pytest.fixture(scope="module")
def small_frames(bikes_video):
    """The first 4 frames of bikes.mp4 at a quarter of its size (160x68), decoded once."""
    with av.open(bikes_video) as container:
        frames = []
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24")[::4, ::4])
            if len(frames) == 4:
                return frames


def frame_folder(folder, frames, count=4):
    folder.mkdir()
    for i, frame in enumerate(frames[:count]):
        Image.fromarray(frame).save(folder / f"img_{i:03d}.jpg", quality=90)
    return folder


def truncate(path, keep=0.5):
    """Cut a file: a JPEG keeps its header (its size is readable) but cannot be decoded."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# ---------------------------------------------------------------- demo runs
def _sys_video(tmp, tiny_cfg, frames):
    return ["--input", str(frame_folder(tmp / "f", frames)), "--output", "/sys/ov2vss_test/out.mp4"]


def _parent_is_a_file(tmp, tiny_cfg, frames):
    (tmp / "afile").write_text("a file, not a folder")
    return [
        "--input",
        str(frame_folder(tmp / "f", frames)),
        "--output",
        str(tmp / "afile" / "out.mp4"),
    ]


def _disk_full(tmp, tiny_cfg, frames):
    os.symlink("/dev/full", tmp / "out.mp4")  # every write fails with ENOSPC
    return ["--input", str(frame_folder(tmp / "f", frames, 3)), "--output", str(tmp / "out.mp4")]


def _corrupt_frame(tmp, tiny_cfg, frames):
    folder = frame_folder(tmp / "f", frames)
    truncate(folder / "img_002.jpg")
    return ["--input", str(folder), "--output", str(tmp / "out" / "seg.mp4")]


def _repeat(tmp, tiny_cfg, frames):
    return ["--input", str(frame_folder(tmp / "f", frames, 3)), "--output", str(tmp / "pngs")]


def _with_weights(tmp, tiny_cfg, frames):
    model = build_model(tiny_cfg(*SMALL[1:]))  # the architecture the demo builds
    torch.save({"model": model.state_dict()}, tmp / "model.pth")
    args = ["--input", str(frame_folder(tmp / "f", frames, 3)), "--output", str(tmp / "pngs")]
    return args + SMALL + ["MODEL.WEIGHTS", str(tmp / "model.pth")]


CASES = {
    "sys_video": _sys_video,
    "parent_is_a_file": _parent_is_a_file,
    "disk_full": _disk_full,
    "corrupt_frame": _corrupt_frame,
    "repeat_a": _repeat,
    "repeat_b": _repeat,
    "with_weights": _with_weights,
}


# third-party notices of a fresh process (NOISE) are checked on the command line
COMMAND_LINE_RUNS = ("repeat_a",)


@pytest.fixture(scope="module")
def demo(run_demos, demo_main, tiny_config_file, tiny_cfg, small_frames, tmp_path_factory):
    """``case -> (CompletedProcess, tmp folder)`` of the demo runs: COMMAND_LINE_RUNS as
    ``python demo/demo.py``, the others in-process while it runs."""
    cases = {}
    for name, make in CASES.items():
        tmp = tmp_path_factory.mktemp(name)
        args = make(tmp, tiny_cfg, small_frames)
        if "--opts" not in args:
            args += SMALL
        cases[name] = (["--config-file", tiny_config_file, "--vocabulary", VOCAB, *args], tmp)

    with ThreadPoolExecutor(1) as pool:
        command_lines = pool.submit(run_demos, {name: cases[name][0] for name in COMMAND_LINE_RUNS})
        procs = {
            name: demo_main(args)
            for name, (args, _) in cases.items()
            if name not in COMMAND_LINE_RUNS
        }
        procs.update(command_lines.result())
    return {name: (procs[name], tmp) for name, (_, tmp) in cases.items()}


def one_error_line(proc):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.mark.parametrize(
    "case, expected",
    [
        ("sys_video", "cannot write the output video /sys/ov2vss_test/out.mp4: cannot create "
                      "the folder /sys/ov2vss_test"),
        ("parent_is_a_file", "cannot write the output video {tmp}/afile/out.mp4: {tmp}/afile is "
                             "a file, not a folder"),
    ],
)  # fmt: skip
def test_an_unwritable_output_stops_the_demo_before_any_work(demo, case, expected):
    proc, tmp = demo[case]
    line = one_error_line(proc)
    assert line.startswith("error: " + expected.format(tmp=tmp)), line
    # nothing was segmented: the model was never built (its weights warning comes first)
    assert "MODEL.WEIGHTS is empty" not in proc.stderr and "OV2VSS:" not in proc.stderr
    assert proc.stdout == ""


def test_a_full_disk_names_the_video_and_the_summary_is_still_written(demo):
    proc, tmp = demo["disk_full"]
    line = one_error_line(proc)
    assert f"writing the output video {tmp / 'out.mp4'} failed" in line
    assert "No space left on device" in line and "the file is incomplete" in line
    summary = json.loads((tmp / "out.json").read_text())
    assert summary["error"] in line
    assert summary["num_frames"] == summary["input_frames"] == 3
    assert summary["frames_written"] == 3  # handed to the encoder; the file could not hold them
    assert sum(summary["pixel_share"].values()) == pytest.approx(1.0)
    assert "Pixel share over 3 frames" in proc.stdout


def test_a_run_stopped_by_a_bad_frame_keeps_the_video_so_far(demo):
    proc, tmp = demo["corrupt_frame"]
    line = one_error_line(proc)
    bad = tmp / "f" / "img_002.jpg"
    assert f"cannot read frame {bad}" in line and "stopped after 2 of 4 frames" in line
    with av.open(str(tmp / "out" / "seg.mp4")) as container:  # closed cleanly: playable
        assert sum(1 for _ in container.decode(video=0)) == 2
    summary = json.loads((tmp / "out" / "seg.json").read_text())
    assert (summary["num_frames"], summary["frames_written"], summary["input_frames"]) == (2, 2, 4)
    assert str(bad) in summary["error"]
    assert "Pixel share over the first 2 frames" in proc.stdout


def test_without_weights_the_json_says_so_and_two_runs_agree(demo):
    """A command line and a run in this process (whose random generators other tests have
    used) give the same labels: the random model is seeded."""
    runs = [demo["repeat_a"], demo["repeat_b"]]
    summaries, pngs = [], []
    for proc, tmp in runs:
        assert proc.returncode == 0, proc.stderr
        for noise in NOISE:  # open_clip's random-init notice, fvcore's deprecation
            assert noise not in proc.stderr, proc.stderr
        summaries.append(json.loads((tmp / "pngs" / "summary.json").read_text()))
        names = sorted(p for p in os.listdir(tmp / "pngs") if p.endswith(".png"))
        assert names == [f"img_{i:03d}.png" for i in range(3)]
        pngs.append([(tmp / "pngs" / n).read_bytes() for n in names])
    first = summaries[0]
    assert first["weights"] is None and first["clip_pretrained"] is None
    assert "MODEL.WEIGHTS is empty" in first["weights_warning"]
    assert (first["frames_written"], first["error"]) == (3, None)
    # the random model is seeded: identical labels, so identical shares and images
    assert summaries[0]["pixel_share"] == summaries[1]["pixel_share"]
    assert max(first["pixel_share"].values()) < 1.0  # not a constant map
    assert pngs[0] == pngs[1]


def test_the_json_records_the_weights_file(demo):
    proc, tmp = demo["with_weights"]
    assert proc.returncode == 0, proc.stderr
    assert "MODEL.WEIGHTS is empty" not in proc.stderr
    assert "No pretrained weights loaded" not in proc.stderr
    summary = json.loads((tmp / "pngs" / "summary.json").read_text())
    assert summary["weights"] == str(tmp / "model.pth")
    assert summary["weights_warning"] is None
    assert summary["clip_arch"] == "OV2VSS-Tiny-CLIP"


def test_an_output_that_would_overwrite_the_input_is_refused(
    demo_main, tiny_config_file, bikes_video, small_frames, tmp_path
):
    """--output naming the input video (or a link to it), or a PNG folder where a frame's
    overlay would replace an input frame: one error line before the model is built, the
    input left as it was."""
    video = tmp_path / "in.mp4"
    shutil.copy(bikes_video, video)
    os.symlink(video, tmp_path / "link.mp4")
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(small_frames[:2]):
        Image.fromarray(frame).save(folder / f"img_{i:03d}.png")
    before = {p: p.read_bytes() for p in [video, *folder.iterdir()]}
    common = ["--config-file", tiny_config_file, "--vocabulary", VOCAB, *SMALL]
    for inputs, output, expected in [
        (["--video-input", video], video, f"--output {video} is the input video"),
        (["--video-input", video], tmp_path / "link.mp4", "link.mp4 is the input video"),
        (["--input", folder], folder, "would overwrite the input frame "
         + os.path.realpath(folder / "img_000.png")),
    ]:  # fmt: skip
        proc = demo_main(inputs + ["--output", output] + common)
        line = one_error_line(proc)
        assert line.startswith("error: ") and expected in line, line
        assert "MODEL.WEIGHTS is empty" not in proc.stderr and proc.stdout == ""
    assert {p: p.read_bytes() for p in [video, *folder.iterdir()]} == before


# ---------------------------------------------------------------- VSPW-layout data
H, W = 48, 64  # a JPEG whose second half is cut keeps its header


def vspw_tree(root):
    """train: video "tr", val: "va", 3 frames each (real JPEGs), every frame annotated
    (raw 1 = wall, a seen class, and 81 = trash_can, unseen)."""
    rng = np.random.default_rng(0)
    for video in ("tr", "va"):
        for t in range(3):
            frame = root / "data" / video / "origin" / f"{t:08d}.jpg"
            frame.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(frame)
            mask = root / "data" / video / "mask" / f"{t:08d}.png"
            mask.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.choice([1, 81], (H, W)).astype(np.uint8)).save(mask)
    (root / "train.txt").write_text("tr\n")
    (root / "val.txt").write_text("va\n")
    report = prepare_vspw(str(root), ["train", "val"], get_vspw_class_names(), VSPW_NUM_SEEN)
    assert not report.problems and report.written == 3 + 3 * 3, report
    prefix = f"loss_{uuid.uuid4().hex[:8]}"
    register_vspw_family(prefix, str(root), get_vspw_class_names(), VSPW_NUM_SEEN, ("train", "val"))
    return prefix


def test_a_missing_mask_is_an_error_naming_it(tmp_path, dataset_script):
    root = tmp_path / "VSPW_480p"
    prefix = vspw_tree(root)
    assert len(DatasetCatalog.get(f"{prefix}_val_all")) == 3
    missing = root / "data" / "va" / "mask" / "00000001.png"
    missing.unlink()  # its label maps stay: before, the frame was simply left out
    with pytest.raises(FileNotFoundError) as e:
        DatasetCatalog.get(f"{prefix}_val_all")
    assert str(e.value).startswith(f"mask {missing} does not exist: 1 of 3 frames")
    assert "VSPW annotates every frame" in str(e.value)
    out = dataset_script(
        "prepare_vspw", "--root", root, "--splits", "train", "val", "--no-progress"
    )
    assert out.returncode == 1, out.stdout
    problems = [line for line in out.stdout.splitlines() if line.startswith("PROBLEM")]
    assert len(problems) == 1 and f"mask {missing} does not exist" in problems[0], out.stdout


def test_a_video_without_masks_is_called_unannotated(tmp_path):
    root = tmp_path / "VSPW_480p"
    prefix = vspw_tree(root)
    mask_dir = root / "data" / "va" / "mask"
    for mask in mask_dir.iterdir():
        mask.unlink()
    with pytest.raises(FileNotFoundError, match="is unannotated") as e:
        DatasetCatalog.get(f"{prefix}_val_unseen")
    assert f"(no .png in {mask_dir})" in str(e.value) and "val.txt" in str(e.value)
    assert len(DatasetCatalog.get(f"{prefix}_train_seen")) == 3  # the other split is fine


def test_full_check_decodes_every_frame_and_mask(tmp_path, dataset_script):
    root = tmp_path / "VSPW_480p"
    vspw_tree(root)
    jpeg = root / "data" / "tr" / "origin" / "00000001.jpg"
    truncate(jpeg)
    mask = root / "data" / "va" / "mask" / "00000002.png"
    Image.fromarray(np.full((H, W), 200, np.uint8)).save(mask)
    out = dataset_script(
        "prepare_vspw", "--root", root, "--splits", "train", "val", "--no-progress",
        "--check-only", "--full", "--workers", "2",
    )  # fmt: skip
    assert out.returncode == 1, out.stdout + out.stderr
    problems = [line for line in out.stdout.splitlines() if line.startswith("PROBLEM")]
    assert len(problems) == 2, out.stdout
    text = "\n".join(problems)
    assert re.search(rf"{re.escape(str(jpeg))}: unreadable frame \(.*truncated", text, re.I), text
    assert f"{mask}: values [200] outside 0..124 and 255" in text
    assert "full check: decoded 6 frames and their masks; 1 bad frame(s), 1 bad mask(s)" in (
        out.stdout
    )
