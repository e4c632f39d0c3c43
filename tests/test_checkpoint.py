"""Checkpoint files: the project's checkpoints, detectron2 .pkl backbones and
open_clip checkpoints load under torch's weights_only default; unreadable files give an
error naming the file; saves are atomic (a crash mid-save keeps the previous checkpoint)."""

import os
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from ov2vss.checkpoint import OV2VSSCheckpointer
from ov2vss.checkpoint_io import CheckpointError, atomic_torch_save, load_checkpoint_file


class Net(nn.Module):
    """A detectron2-style model: weights under ``backbone.``, plus a head with BN buffers."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.stem = nn.Module()
        self.backbone.stem.conv1 = nn.Conv2d(3, 4, 3)
        self.backbone.res2 = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
        self.head = nn.Linear(4, 2)


class Counter:
    """A checkpointable with state, like the trainer (iteration + optimizer state)."""

    def __init__(self):
        self.state = {"iteration": 0, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}}

    def state_dict(self):
        return self.state

    def load_state_dict(self, state):
        self.state = state


def randomized(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g))
    return model


def assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_project_checkpoint_round_trip_under_weights_only(tmp_path):
    src, counter = randomized(Net(), 0), Counter()
    counter.state["iteration"] = 7
    OV2VSSCheckpointer(src, str(tmp_path), trainer=counter).save("model_0000007")
    path = tmp_path / "model_0000007.pth"
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000007.pth"
    raw = torch.load(path)  # torch's default (weights_only=True) reads it
    assert raw["trainer"]["iteration"] == 7

    dst, restored = randomized(Net(), 1), Counter()
    ckpt = OV2VSSCheckpointer(dst, str(tmp_path), trainer=restored)
    ckpt.resume_or_load("", resume=True)
    assert_same_state(dst, src)
    assert restored.state["iteration"] == 7


def test_numpy_in_a_torch_checkpoint_is_allowed(tmp_path):
    """Older detectron2 .pth files store numpy arrays; they load without an unsafe switch."""
    path = str(tmp_path / "np.pth")
    torch.save(
        {"model": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, "step": np.int64(3)}, path
    )
    data = load_checkpoint_file(path)
    np.testing.assert_array_equal(data["model"]["w"], np.arange(6, dtype=np.float32).reshape(2, 3))
    assert data["step"] == 3


@pytest.mark.parametrize("protocol", [2, 4])
def test_detectron2_pkl_backbone_loads(tmp_path, protocol):
    """A torchvision-converted .pkl (detectron2 model-zoo format): numpy arrays, names
    without the ``backbone.`` prefix, matched by detectron2's heuristics."""
    src = randomized(Net(), 0)
    weights = {
        k[len("backbone.") :]: v.numpy()
        for k, v in src.state_dict().items()
        if k.startswith("backbone.")
    }
    path = tmp_path / "R-tiny.pkl"
    with open(path, "wb") as f:
        pickle.dump(
            {"model": weights, "__author__": "torchvision", "matching_heuristics": True},
            f,
            protocol,
        )

    dst = randomized(Net(), 1)
    head_before = dst.head.weight.clone()
    OV2VSSCheckpointer(dst).load(str(path))
    for k, v in src.state_dict().items():
        if k.startswith("backbone."):
            assert torch.equal(dst.state_dict()[k], v), k
    assert torch.equal(dst.head.weight, head_before)  # not in the file: untouched


def test_caffe2_style_pkl_loads(tmp_path):
    """Caffe2 / Detectron1 files: a plain dict of blobs; momentum blobs are dropped."""
    path = tmp_path / "c2.pkl"
    w = np.random.RandomState(0).rand(2, 4).astype(np.float32)
    with open(path, "wb") as f:
        pickle.dump({"blobs": {"fc_w": w, "fc_w_momentum": w}}, f, 2)
    data = OV2VSSCheckpointer(nn.Linear(4, 2))._load_file(str(path))
    assert data["__author__"] == "Caffe2" and list(data["model"]) == ["fc_w"]
    np.testing.assert_array_equal(data["model"]["fc_w"], w)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch " + _Evil.marker,))


def test_pkl_with_code_is_refused(tmp_path):
    _Evil.marker = str(tmp_path / "pwned")
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {"w": np.zeros(2)}, "x": _Evil()}, f)
    with pytest.raises(CheckpointError, match="evil.pkl.*posix.system|evil.pkl.*os.system"):
        OV2VSSCheckpointer(Net()).load(str(path))
    assert not os.path.exists(_Evil.marker)


def _corrupt_files(tmp_path):
    good = str(tmp_path / "good.pth")
    torch.save({"model": randomized(Net(), 0).state_dict(), "iteration": 1}, good)
    data = open(good, "rb").read()
    files = {
        "truncated.pth": data[: len(data) // 2],
        "cut_tail.pth": data[:-16],
        "empty.pth": b"",
        "garbage.pth": bytes(range(256)) * 8,
        "truncated.pkl": pickle.dumps({"model": {"w": np.zeros(100)}}, 2)[:50],
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    return [str(tmp_path / n) for n in files]


def test_corrupt_or_truncated_checkpoints_name_the_file(tmp_path):
    for path in _corrupt_files(tmp_path):
        with pytest.raises(CheckpointError) as e:
            OV2VSSCheckpointer(Net()).load(path)
        assert path in str(e.value) and ("corrupt" in str(e.value) or "empty" in str(e.value)), str(
            e.value
        )
    with pytest.raises(CheckpointError, match="missing.pth does not exist"):
        OV2VSSCheckpointer(Net()).load(str(tmp_path / "missing.pth"))


def test_checkpoint_with_objects_is_refused(tmp_path):
    path = str(tmp_path / "pickled_model.pth")
    torch.save({"model": Net()}, path)  # a whole pickled module, not a state_dict
    with pytest.raises(
        CheckpointError, match=r"pickled_model.pth contains Python objects .*state_dict"
    ):
        load_checkpoint_file(path)


def test_crash_mid_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = randomized(Net(), 0)
    ckpt = OV2VSSCheckpointer(model, str(tmp_path), trainer=Counter())
    ckpt.save("model_0000001")
    before = (tmp_path / "model_0000001.pth").read_bytes()

    real_save = torch.save

    def crashing_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.seek(0)
        f.truncate(100)  # half-written file ...
        raise OSError("No space left on device")  # ... and the process dies

    monkeypatch.setattr(torch, "save", crashing_save)
    randomized(model, 1)
    with pytest.raises(OSError, match="No space"):
        ckpt.save("model_0000001")  # overwrite the same file: the worst case
    with pytest.raises(OSError):
        ckpt.save("model_0000002")
    monkeypatch.setattr(torch, "save", real_save)

    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]  # no temp files
    assert (tmp_path / "model_0000001.pth").read_bytes() == before
    assert ckpt.get_checkpoint_file() == str(tmp_path / "model_0000001.pth")
    fresh = randomized(Net(), 2)
    OV2VSSCheckpointer(fresh, str(tmp_path)).resume_or_load("", resume=True)
    assert_same_state(fresh, randomized(Net(), 0))


def test_atomic_save_replaces_the_file(tmp_path):
    path = str(tmp_path / "w.pth")
    atomic_torch_save({"a": torch.ones(2)}, path)
    atomic_torch_save({"a": torch.zeros(3)}, path)
    assert torch.equal(torch.load(path)["a"], torch.zeros(3)) and os.listdir(tmp_path) == ["w.pth"]


# ---------------------------------------------------------------------------- open_clip
def _tiny_clip():
    from ov2vss.modeling.clip import build_open_clip

    return build_open_clip("OV2VSS-Tiny-CLIP", "")


def test_open_clip_checkpoint_loads_under_weights_only(tmp_path):
    from ov2vss.modeling.clip import build_open_clip

    torch.manual_seed(1)
    src = _tiny_clip()
    path = str(tmp_path / "tiny_clip.pt")
    torch.save(src.state_dict(), path)
    assert_same_state(build_open_clip("OV2VSS-Tiny-CLIP", path), src)


def test_open_clip_corrupt_or_unsafe_checkpoint_names_the_file(tmp_path):
    from ov2vss.modeling.clip import build_open_clip

    truncated = str(tmp_path / "truncated_clip.pt")
    torch.save(_tiny_clip().state_dict(), truncated)
    with open(truncated, "r+b") as f:
        f.truncate(os.path.getsize(truncated) // 3)
    unsafe = str(tmp_path / "unsafe_clip.pt")
    torch.save({"state_dict": {}, "extra": Counter()}, unsafe)
    for path in (truncated, unsafe):
        with pytest.raises(RuntimeError, match=path.replace(".", r"\.")):
            build_open_clip("OV2VSS-Tiny-CLIP", path)


# ---------------------------------------------------------------------------- command line
def test_eval_only_with_a_corrupt_checkpoint_is_one_line(tiny_config_file, run_train_net, tmp_path):
    bad = tmp_path / "model_final.pth"
    bad.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    proc = run_train_net(
        "--config-file", tiny_config_file, "--eval-only",
        "MODEL.WEIGHTS", bad, "OUTPUT_DIR", tmp_path, "DATASETS.TEST", "()", check=False,
    )  # fmt: skip
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    msg = proc.stderr.strip().splitlines()[-1]
    assert msg.startswith(f"error: checkpoint file {bad} is corrupt"), proc.stderr
