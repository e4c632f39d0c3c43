"""Memory bounded for any vocabulary: VTE, the head and the output softmax work through the
classes in chunks (MODEL.OV2VSS.CLASS_CHUNK), with the same outputs as all at once, and no
tensor of a streamed frame grows with the vocabulary beyond one chunk's, except the output.

The bound is checked in-process by recording every tensor that PyTorch's operators allocate
(a dispatch mode); benchmarks/bench_vocabulary_memory.py measures the peak RSS at 124 to 5000
names (docs/BENCHMARKS.md)."""

from typing import List, Tuple

import numpy as np
import torch
from detectron2.modeling import build_model
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ov2vss.engine.training_cost import synthetic_window
from ov2vss.predictor import VideoPredictor

NAMES = [f"object number {i}" for i in range(11)]


def test_chunked_classes_give_the_unchunked_outputs(tiny_cfg):
    opts = ("MODEL.CLIP.INPUT_SIZE", 32, "DATASETS.TRAIN", "()", "DATASETS.TEST", "()")
    window = synthetic_window(4, (40, 56), num_classes=1, seed=0)
    del window["sem_seg"]  # an inference input, to be resized to 50 x 70
    window.update(height=50, width=70)
    outs = []
    for chunk in (64, 4, 1):
        torch.manual_seed(0)
        model = build_model(tiny_cfg(*opts, "MODEL.OV2VSS.CLASS_CHUNK", chunk)).eval()
        # the zero-initialised VTE residuals would hide the text refinement
        torch.nn.init.normal_(model.vte.attn.out_proj.weight, std=0.2)
        torch.nn.init.normal_(model.vte.ffn[-1].weight, std=0.2)
        model.set_test_vocabulary(NAMES)
        with torch.no_grad():
            outs.append(model([window])[0]["sem_seg"])
    assert outs[0].shape == (len(NAMES), 50, 70)
    for other in outs[1:]:
        torch.testing.assert_close(other, outs[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(outs[0].sum(0), torch.ones(50, 70), atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------- memory bound
class Allocations(TorchDispatchMode):
    """Records (bytes, operator, shape) of every new tensor storage an operator returns
    (views of an input's storage allocate nothing and are not recorded)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: List[Tuple[int, str, tuple]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage().data_ptr()
            for t in tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor)
        }
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.records.append((t.untyped_storage().nbytes(), str(func), tuple(t.shape)))
        return out


CHUNK = 8
FRAME = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)


def largest_intermediate(tiny_cfg, num_names: int, chunk: int) -> Tuple[int, str]:
    """Bytes (and what) of the largest tensor allocated while one 64x96 frame is streamed with
    ``num_names`` names, the [N, 64, 96] output itself left out; the vocabulary's text
    embeddings are computed before (cached: not a per-frame cost)."""
    cfg = tiny_cfg(
        "MODEL.CLIP.INPUT_SIZE", 32, "DATASETS.TRAIN", "()", "DATASETS.TEST", "()",
        "INPUT.MIN_SIZE_TEST", 64, "MODEL.OV2VSS.CLASS_CHUNK", chunk,
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model(cfg)
    names = [f"object number {i}" for i in range(num_names)]
    model.set_test_vocabulary(names)
    predictor = VideoPredictor(cfg, model=model)
    monitor = Allocations()
    with torch.no_grad():
        model.clip.encode_vocabulary(names)
        with monitor:
            (out,) = list(predictor.run([FRAME]))
    output = out["sem_seg"]
    assert output.shape == (num_names, 64, 96)
    records = sorted(monitor.records, reverse=True)
    # the output's own allocation (one tensor of its size) is allowed once
    nbytes = output.untyped_storage().nbytes()
    records.remove(next(r for r in records if r[0] == nbytes))
    return records[0][0], f"{records[0][1]} {records[0][2]}"


def test_no_tensor_grows_with_the_vocabulary_beyond_one_chunk(tiny_cfg):
    """48 names in 6 chunks of 8: the largest tensor of a streamed frame (other than the
    output) is no larger than with 8 names (one chunk). Not chunked (CLASS_CHUNK 64), the head's
    activations and the upsampled logits of all 48 classes are several times larger."""
    one_chunk, what = largest_intermediate(tiny_cfg, CHUNK, CHUNK)
    chunked, chunked_what = largest_intermediate(tiny_cfg, 6 * CHUNK, CHUNK)
    assert chunked <= one_chunk, (chunked_what, what)
    unchunked, unchunked_what = largest_intermediate(tiny_cfg, 6 * CHUNK, 64)
    assert unchunked > 2 * one_chunk, (unchunked_what, what)
