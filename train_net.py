#!/usr/bin/env python
"""OV2VSS training / evaluation script (detectron2 DefaultTrainer).

    python train_net.py --config-file configs/vspw/ov2vss_R101.yaml --num-gpus 4
    python train_net.py --config-file configs/vspw/ov2vss_R101.yaml --num-gpus 4 --resume
    python train_net.py --config-file configs/vspw/ov2vss_R101.yaml --eval-only MODEL.WEIGHTS model.pth
    CUDA_VISIBLE_DEVICES= python train_net.py --config-file configs/toy/ov2vss_tiny_cpu.yaml --num-gpus 2

On CPU, --num-gpus is the number of processes (gloo backend).
"""
import logging
import os
from collections import OrderedDict

import detectron2.utils.comm as comm
from detectron2.config import get_cfg
from detectron2.data import build_detection_test_loader
from detectron2.engine import default_argument_parser, default_setup
from detectron2.evaluation import inference_on_dataset, print_csv_format, verify_results
from detectron2.utils.logger import setup_logger

import ov2vss  # noqa: F401  (registers datasets and the model)
from ov2vss import VideoSemSegDatasetMapper, VideoSemSegEvaluator, add_ov2vss_config
from ov2vss.checkpoint import OV2VSSCheckpointer
from ov2vss.engine import (
    OV2VSSTrainerBase,
    build_resumable_train_loader,
    check_dataset_files,
    check_weights_file,
    configure_cpu_threads,
    launch_cli,
    prepare_datasets_for_cfg,
    sync_model_buffers,
    unwrap_model,
)
from ov2vss.ov2vss_model import dataset_vocabulary
from ov2vss.solver import build_lr_scheduler, build_optimizer


class Trainer(OV2VSSTrainerBase):
    """DefaultTrainer (via OV2VSSTrainerBase: DDP on CPU/GPU, AMP, exact resume, safe
    checkpoints) with the video clip mapper, the video evaluator and OV2VSS's solver."""

    @classmethod
    def build_train_loader(cls, cfg):
        return build_resumable_train_loader(cfg, VideoSemSegDatasetMapper(cfg, True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        mapper = VideoSemSegDatasetMapper(cfg, False, dataset_name=dataset_name)
        return build_detection_test_loader(cfg, dataset_name, mapper=mapper)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return VideoSemSegEvaluator(
            dataset_name,
            distributed=True,
            output_dir=output_folder,
            vc_windows=cfg.TEST.VC_WINDOWS,
            dump_predictions=cfg.TEST.DUMP_PREDICTIONS,
        )

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Evaluate every DATASETS.TEST entry, each with its own vocabulary (open vocabulary)."""
        logger = logging.getLogger(__name__)
        sync_model_buffers(model)  # every process evaluates rank 0's BN statistics
        results = OrderedDict()
        for idx, name in enumerate(cfg.DATASETS.TEST):
            loader = cls.build_test_loader(cfg, name)
            evaluator = evaluators[idx] if evaluators is not None else cls.build_evaluator(cfg, name)
            with unwrap_model(model).vocabulary(dataset_vocabulary(name)):
                results[name] = inference_on_dataset(model, loader, evaluator)
            if comm.is_main_process():
                logger.info(f"Evaluation results for {name} in csv format:")
                print_csv_format(results[name])
        return results[next(iter(results))] if len(results) == 1 else results


def setup(args):
    cfg = get_cfg()
    add_ov2vss_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="ov2vss")
    configure_cpu_threads(cfg)
    prepare_datasets_for_cfg(cfg)
    return cfg


def main(args):
    cfg = setup(args)
    check_dataset_files(cfg, train=not args.eval_only)
    if args.eval_only:
        check_weights_file(cfg.MODEL.WEIGHTS)
        model = Trainer.build_model(cfg)
        OV2VSSCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
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
