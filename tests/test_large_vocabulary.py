"""Memory bounded for any vocabulary: VTE, the head and the output softmax work through the
classes in chunks, with the same outputs as all at once."""

import json
import os
import subprocess
import sys

import torch
from detectron2.modeling import build_model

NAMES = [f"object number {i}" for i in range(11)]


def test_chunked_classes_give_the_unchunked_outputs(tiny_cfg):
    opts = ("MODEL.CLIP.INPUT_SIZE", 32, "DATASETS.TRAIN", "()", "DATASETS.TEST", "()")
    g = torch.Generator().manual_seed(0)
    window = {
        "frames": torch.randint(0, 256, (4, 3, 40, 56), generator=g, dtype=torch.uint8),
        "random_frame": torch.randint(0, 256, (3, 40, 56), generator=g, dtype=torch.uint8),
        "height": 50,
        "width": 70,
    }
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


def test_a_3000_name_vocabulary_stays_near_the_output_size(repo_root):
    """Peak RSS of a streamed 640x272 frame with 3000 names, measured in its own process:
    growth within 1.1 x the [3000, 272, 640] output + 500 MB (unchunked it was ~17 GB)."""
    script = os.path.join(repo_root, "benchmarks", "bench_vocabulary_memory.py")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, script, "--names", "3000", "--frames", "1", "--json"],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    assert row["names"] == 3000 and row["output_mb"] > 1900
    assert row["ok"] and proc.returncode == 0, row
    assert row["growth_mb"] <= 1.1 * row["output_mb"] + 500
