"""Checkpoint files: the project's checkpoints, detectron2 .pkl backbones and
open_clip checkpoints load under torch's weights_only default; unreadable files give an
error naming the file; saves are atomic (a crash mid-save keeps the previous checkpoint)."""

import os
import pickle

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
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
def test_eval_only_with_a_corrupt_checkpoint_is_one_line(
    tiny_config_file, train_net_in_process, tmp_path
):
    """train_net.py --eval-only's main under its launcher, in this process: it ends with the
    one error line the command prints (test_run_hygiene.py runs such a command line)."""
    bad = tmp_path / "model_final.pth"
    bad.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    with pytest.raises(SystemExit) as stopped:
        train_net_in_process(
            "--config-file", tiny_config_file, "--eval-only",
            "MODEL.WEIGHTS", bad, "OUTPUT_DIR", tmp_path, "DATASETS.TEST", "()",
        )  # fmt: skip
    msg = stopped.value.code
    assert isinstance(msg, str) and "\n" not in msg, msg  # printed as one line, exit status 1
    assert msg.startswith(f"error: checkpoint file {bad} is corrupt"), msg


# ---------------------------------------------------------------------------- strict loading
@pytest.mark.parametrize("kind", ["pth", "pkl", "caffe2_pkl"])
def test_a_strict_refusal_leaves_the_model_untouched(tmp_path, kind):
    """A file with the backbone's tensors only, refused by a strict load (evaluation, demo):
    nothing of the model changed before the refusal, whatever the file's format (a detectron2
    .pkl's names are matched by heuristics, then checked, then loaded)."""
    src = randomized(Net(), 0)
    backbone = {k: v for k, v in src.state_dict().items() if k.startswith("backbone.")}
    path = tmp_path / f"backbone.{kind.split('_')[-1]}"
    if kind == "pth":
        torch.save({"model": backbone}, path)
    else:
        weights = {k[len("backbone.") :]: v.numpy() for k, v in backbone.items()}
        data = {"model": weights, "__author__": "torchvision", "matching_heuristics": True}
        if kind == "caffe2_pkl":  # Caffe2 / Detectron1: a plain dict of blobs
            data = {"blobs": {k.replace(".", "_"): v for k, v in weights.items()}}
        with open(path, "wb") as f:
            pickle.dump(data, f, 2)
    dst = randomized(Net(), 1)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(
        CheckpointError, match=rf"{path} does not match.*tensors differ.*missing from the file"
    ):
        OV2VSSCheckpointer(dst, strict=True).load(str(path))
    assert all(torch.equal(before[k], v) for k, v in dst.state_dict().items())
    if kind == "pkl":  # the same file initialises the backbone when loading is not strict
        OV2VSSCheckpointer(dst).load(str(path))
        assert torch.equal(dst.backbone.stem.conv1.weight, src.backbone.stem.conv1.weight)


def _leaves(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def test_every_model_and_input_key_is_classified(tiny_cfg):
    """The one table of architecture / free keys covers every MODEL.* and INPUT.* key of the
    project's config (a new key must be classified), and names no key that does not exist."""
    import yaml

    from ov2vss.checkpoint_config import ARCHITECTURE, CONFIG_KEY_CLASSES, FREE, key_class
    from ov2vss.config import get_ov2vss_cfg

    leaves = [
        k for k in _leaves(yaml.safe_load(get_ov2vss_cfg().dump())) if k[:6] in ("MODEL.", "INPUT.")
    ]
    assert len(leaves) > 150
    unclassified = [k for k in leaves if key_class(k) is None]
    assert not unclassified, f"classify these keys in ov2vss/checkpoint_config.py: {unclassified}"
    stale = [e for e in CONFIG_KEY_CLASSES if not any(k == e or k.startswith(e) for k in leaves)]
    assert not stale, stale
    # the keys of the examples in docs/GETTING_STARTED.md
    for key in ("MODEL.OV2VSS.NUM_HEADS", "MODEL.OV2VSS.HEAD.DECODER_STRIDE", "INPUT.FORMAT",
                "MODEL.OV2VSS.VTE.CLIP_FRAMES", "MODEL.CLIP.DENSE_MODE", "MODEL.PIXEL_STD",
                "MODEL.RESNETS.DEPTH", "MODEL.SAM_VIT.WINDOW_SIZE"):  # fmt: skip
        assert key_class(key) == ARCHITECTURE, key
    for key in ("MODEL.OV2VSS.SEEN_BIAS", "MODEL.OV2VSS.CLASS_CHUNK", "INPUT.MIN_SIZE_TEST",
                "MODEL.OV2VSS.TEST_VOCABULARY", "MODEL.WEIGHTS", "MODEL.CLIP.PRETRAINED",
                "MODEL.ROI_HEADS.NUM_CLASSES"):  # fmt: skip
        assert key_class(key) == FREE, key


SMALL = ("MODEL.CLIP.INPUT_SIZE", 32, "DATASETS.TRAIN", "()", "DATASETS.TEST", "()",
         "MODEL.OV2VSS.TEST_VOCABULARY", ["red circle", "blue star"])  # fmt: skip


@pytest.fixture(scope="module")
def four_heads(tiny_cfg, tmp_path_factory):
    """A checkpoint of the tiny model (4 attention heads, decoder stride 4), its config saved,
    as the training run writes it (OUTPUT_DIR/last_checkpoint names it)."""
    cfg = tiny_cfg(*SMALL)
    out = tmp_path_factory.mktemp("four_heads")
    model = build_model(cfg)
    OV2VSSCheckpointer(model, str(out), config=cfg).save("model_final")
    return cfg, model, str(out / "model_final.pth")


def test_a_checkpoint_of_another_architecture_is_refused_before_loading(four_heads, tiny_cfg):
    """Trained with NUM_HEADS 4 and DECODER_STRIDE 4, loaded under 1 and 8 (no tensor shape
    differs): --eval-only, --resume, the demo and VideoPredictor refuse it with one error naming
    both keys with both values and the file, and the model is untouched."""
    from ov2vss.checkpoint import load_model_weights

    _, _, path = four_heads
    other = ("MODEL.OV2VSS.NUM_HEADS", 1, "MODEL.OV2VSS.HEAD.DECODER_STRIDE", 8)
    cfg = tiny_cfg(*SMALL, *other, "MODEL.WEIGHTS", path)
    model = build_model(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loads = {
        "--eval-only": lambda: OV2VSSCheckpointer(
            model, os.path.dirname(path), strict=True, config=cfg
        ).resume_or_load(path, resume=False),
        "--resume": lambda: OV2VSSCheckpointer(
            model, os.path.dirname(path), config=cfg
        ).resume_or_load("", resume=True),
        "demo / VideoPredictor": lambda: load_model_weights(model, cfg),
    }
    for entry, load in loads.items():
        with pytest.raises(CheckpointError) as e:
            load()
        msg = str(e.value)
        assert msg.startswith(f"checkpoint file {path} does not match the model"), (entry, msg)
        assert "MODEL.OV2VSS.NUM_HEADS: 4 there, 1 here" in msg, (entry, msg)
        assert "MODEL.OV2VSS.HEAD.DECODER_STRIDE: 4 there, 8 here" in msg, (entry, msg)
        assert "\n" not in msg and "tensors differ" not in msg, (entry, msg)
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), entry
    # keys that change no tensor: input format and normalisation, the VTE frames
    keys = ("INPUT.FORMAT", "BGR", "MODEL.PIXEL_STD", [1.0, 1.0, 1.0],
            "MODEL.OV2VSS.VTE.CLIP_FRAMES", "target")  # fmt: skip
    cfg = tiny_cfg(*SMALL, *keys)
    with pytest.raises(CheckpointError) as e:
        OV2VSSCheckpointer(build_model(cfg), strict=True, config=cfg).load(path)
    for key in ("INPUT.FORMAT: 'RGB' there, 'BGR' here", "MODEL.OV2VSS.VTE.CLIP_FRAMES: 'all' "
                "there, 'target' here", "MODEL.PIXEL_STD: [58.395, 57.12, 57.375] there"):  # fmt: skip
        assert key in str(e.value), str(e.value)


def test_test_time_keys_may_differ_and_a_checkpoint_without_config_loads_with_a_warning(
    four_heads, tiny_cfg, tmp_path, caplog
):
    """Free keys (test-time, training-only, never read by this backbone) may differ; a
    checkpoint without a stored config is checked on its tensors alone, with a warning."""
    cfg, trained, path = four_heads
    free = (
        "MODEL.OV2VSS.SEEN_BIAS",
        2.0,
        "MODEL.OV2VSS.CLASS_CHUNK",
        3,
        "INPUT.MIN_SIZE_TEST",
        33,
        "MODEL.OV2VSS.TEST_VOCABULARY",
        ["sky"],
        "MODEL.CLIP.PRETRAINED",
        "elsewhere.pt",
        "MODEL.OV2VSS.AUX_LOSS_WEIGHT",
        0.5,
        "INPUT.CROP.SIZE",
        (16, 16),
        "MODEL.ROI_HEADS.NUM_CLASSES",
        3,
        "MODEL.SAM_VIT.DEPTH",
        2,
    )  # fmt: skip  (SAM's keys: not read by the ResNet)
    model = randomized(build_model(cfg), 3)
    OV2VSSCheckpointer(model, strict=True, config=tiny_cfg(*SMALL, *free)).load(path)
    assert_same_state(model, trained)
    # no stored config: the tensors alone are checked, and the log says so
    state = torch.load(path, weights_only=True)
    del state["config"]
    torch.save(state, tmp_path / "old.pth")
    model = randomized(build_model(cfg), 4)
    other = tiny_cfg(*SMALL, "MODEL.OV2VSS.NUM_HEADS", 1)
    with caplog.at_level("WARNING"):
        OV2VSSCheckpointer(model, strict=True, config=other).load(str(tmp_path / "old.pth"))
    assert_same_state(model, trained)
    assert any(
        "stores no config: only its tensors are checked" in r.message for r in caplog.records
    )
