#!/usr/bin/env python
"""OV2VSS training / evaluation entry point (detectron2 ``DefaultTrainer``).

    python train_net.py --config-file configs/vspw/ov2vss_R101.yaml --num-gpus 4
    python train_net.py --config-file configs/vspw/ov2vss_R101.yaml --num-gpus 4 --resume
    python train_net.py --config-file configs/vspw/ov2vss_R101.yaml --eval-only MODEL.WEIGHTS m.pth
    CUDA_VISIBLE_DEVICES= python train_net.py --config-file configs/toy/ov2vss_tiny_cpu.yaml \
        --num-gpus 2 --dist-url auto
    torchrun --nproc-per-node 4 --max-restarts 3 train_net.py --config-file CONFIG

On CPU, --num-gpus is the number of processes (gloo backend). Flags go before the KEY VALUE
overrides. SIGTERM, SIGINT or SIGUSR1 stop training with a checkpoint and exit status 75
(docs/GETTING_STARTED.md, "Preemption, SLURM, Kubernetes"). The trainer and the set-up live in
the package (:mod:`ov2vss.engine`).
"""

import ov2vss  # noqa: F401  isort: skip  (first: registers everything, quiets import noise)
from detectron2.engine import default_argument_parser
from detectron2.evaluation import verify_results
from detectron2.utils import comm

from ov2vss.checkpoint import OV2VSSCheckpointer
from ov2vss.engine import Trainer, check_dataset_files, check_eval_weights, launch_cli, setup


def main(args):
    cfg = setup(args)
    check_dataset_files(cfg, train=not args.eval_only)
    if args.eval_only:
        check_eval_weights(cfg)
        model = Trainer.build_model(cfg)
        checkpointer = OV2VSSCheckpointer(model, cfg.OUTPUT_DIR, strict=True, config=cfg)
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch_cli(main, args)
