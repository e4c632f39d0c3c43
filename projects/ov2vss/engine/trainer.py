"""The OV2VSS trainer: detectron2's ``DefaultTrainer`` made ready for video and for scale.

DDP on CPU (gloo) as well as GPU, ``SOLVER.AMP`` on GPU (fp16) and CPU (bf16 autocast),
gradient accumulation, atomic, safely loaded checkpoints, and runs that resume exactly: the
data stream and every random draw are functions of ``(seed, sample position)`` /
``(seed, rank, iteration)``, so a run restarted with ``--resume`` ends with the same weights as
an uninterrupted one (docs/GETTING_STARTED.md, "Resume").
"""

from __future__ import annotations

import logging
import os
import weakref
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence

from detectron2.config import CfgNode
from detectron2.data import build_detection_test_loader
from detectron2.engine import DefaultTrainer
from detectron2.engine.train_loop import HookBase, TrainerBase
from detectron2.evaluation import DatasetEvaluator, inference_on_dataset, print_csv_format
from detectron2.solver.lr_scheduler import LRMultiplier
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch import nn

from ..checkpoint import OV2VSSCheckpointer
from ..data.build import ResumableTrainLoader, TrainBatches, build_resumable_train_loader
from ..data.video_mapper import VideoSemSegDatasetMapper
from ..evaluation import VideoSemSegEvaluator
from ..evaluation.report import write_evaluation_reports
from ..evaluation.streaming import inference_on_videos, with_progress
from ..seeding import MODEL_INIT, TRAIN_STEP, derive_seed, seed_all, seeded_rng
from ..solver import build_lr_scheduler, build_optimizer
from ..vocabulary import dataset_vocabulary
from .distributed import create_ddp_model, sync_model_buffers, unwrap_model
from .preemption import STOP_SIGNALS, SignalRecorder, StopOnSignalHook
from .train_step import build_step_trainer

logger = logging.getLogger(__name__)


def tell_calibration(evaluator: DatasetEvaluator, model: nn.Module) -> None:
    """Tell every :class:`VideoSemSegEvaluator` in ``evaluator`` (one, or detectron2's
    ``DatasetEvaluators``) the model's seen bias and training vocabulary: its seen-bias sweep
    is then in absolute gamma and biases the classes the model's calibration biases
    (docs/METRICS.md, "Seen-class calibration")."""
    for ev in getattr(evaluator, "_evaluators", None) or [evaluator]:
        if isinstance(ev, VideoSemSegEvaluator):
            ev.set_calibration(
                getattr(model, "seen_bias", 0.0), getattr(model, "train_class_texts", None)
            )


class StepSeedHook(HookBase):
    """Seeds the global RNGs from ``(seed, rank, iteration)`` before every step, so random
    draws in the model (dropout, sampling) resume exactly without storing RNG states."""

    def before_step(self) -> None:
        seed_all(derive_seed(self.trainer.seed, TRAIN_STEP, comm.get_rank(), self.trainer.iter))


class Trainer(DefaultTrainer):
    """detectron2's ``DefaultTrainer`` for OV2VSS (see the module docstring).

    Differences: the video window mapper and the resumable data stream
    (:class:`ResumableTrainLoader`, its position checkpointed), the video evaluator with one
    vocabulary per test dataset, OV2VSS's optimizer and schedule, a CPU-capable DDP wrapper
    (:func:`create_ddp_model`), mixed precision on CPU and gradient accumulation
    (:func:`build_step_trainer`),
    :class:`OV2VSSCheckpointer` and per-step seeding.
    """

    def __init__(self, cfg: CfgNode):
        # DefaultTrainer.__init__ would wrap CPU models with device_ids and assert CUDA for AMP
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        self.seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()

        # the initial weights are a function of the seed, not of what ran before
        with seeded_rng(derive_seed(self.seed, MODEL_INIT)):
            model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        if isinstance(data_loader, ResumableTrainLoader):
            data_loader.seed = self.seed
        model = create_ddp_model(model, broadcast_buffers=False)
        self._trainer = build_step_trainer(cfg, model, data_loader, optimizer)

        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = OV2VSSCheckpointer(
            model, cfg.OUTPUT_DIR, config=cfg, trainer=weakref.proxy(self)
        )
        self.start_iter = 0
        self._samples_seen = 0  # global position of the data stream
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self._stop_signals = SignalRecorder()
        self.register_hooks(self.build_hooks())

    def build_hooks(self) -> List[HookBase]:
        stop = StopOnSignalHook(self._stop_signals, self.cfg.SOLVER.CHECKPOINT_PERIOD)
        return stop.insert([StepSeedHook()] + super().build_hooks())

    def train(self):
        """detectron2's training loop, which SIGTERM, SIGINT and SIGUSR1 stop at an iteration
        boundary with a checkpoint (:mod:`.preemption`); the loader workers are shut down
        however it ends."""
        with self._stop_signals.installed():
            try:
                return super().train()
            finally:
                batches = self._trainer._data_loader_iter_obj
                self._trainer._data_loader_iter_obj = None
                if isinstance(batches, TrainBatches):
                    batches.close()

    def resume_or_load(self, resume: bool = True) -> None:
        """As in DefaultTrainer; a resumed run also continues the data stream and seeds."""
        self._samples_seen = 0
        super().resume_or_load(resume=resume)
        if isinstance(self.data_loader, ResumableTrainLoader):
            self.data_loader.start_sample = self._samples_seen
        if self.start_iter > 0 and isinstance(self.scheduler, LRMultiplier):
            # the optimizer holds the lr of the checkpoint's schedule; with another
            # SOLVER.MAX_ITER the next iteration must use the new schedule's value
            for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_lr()):
                group["lr"] = lr

    def run_step(self) -> None:
        """One iteration = one micro-batch of IMS_PER_BATCH windows; with
        SOLVER.ACCUMULATE_STEPS > 1 the optimizer steps after the last micro-batch of each
        group (:class:`~.train_step.StepTrainer`, which keeps partial gradients in
        checkpoints, so resuming mid-group stays exact)."""
        self._trainer.max_iter = self.max_iter  # the last group ends at MAX_ITER
        super().run_step()
        self._samples_seen += self.cfg.SOLVER.IMS_PER_BATCH

    def state_dict(self) -> Dict[str, Any]:
        ret = super().state_dict()
        ret["data"] = {"seed": self.seed, "samples_seen": self._samples_seen}
        return ret

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        data = state_dict.get("data")
        if data is None:  # a checkpoint of another trainer: assume this run's batch size
            self._samples_seen = (state_dict["iteration"] + 1) * self.cfg.SOLVER.IMS_PER_BATCH
            return
        if self.cfg.SEED < 0:
            self.seed = int(data["seed"])
        elif self.cfg.SEED != data["seed"]:
            logger.warning(
                f"SEED={self.cfg.SEED} differs from the checkpoint's seed {data['seed']}: the resumed "
                "run continues with the new seed and will not match an uninterrupted run"
            )
        self._samples_seen = int(data["samples_seen"])
        if isinstance(self.data_loader, ResumableTrainLoader):
            self.data_loader.seed = self.seed

    # ------------------------------------------------------------------ OV2VSS parts
    @classmethod
    def build_train_loader(cls, cfg: CfgNode) -> ResumableTrainLoader:
        # the loader workers leave stop signals to the training process (.preemption)
        mapper = VideoSemSegDatasetMapper(cfg, True)
        return build_resumable_train_loader(cfg, mapper, ignore_signals=STOP_SIGNALS)

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        mapper = VideoSemSegDatasetMapper(cfg, False, dataset_name=dataset_name)
        return build_detection_test_loader(cfg, dataset_name, mapper=mapper)

    @classmethod
    def build_evaluator(
        cls, cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None
    ) -> DatasetEvaluator:
        """The video evaluator, calibrated as a model built from ``cfg`` is (its SEEN_BIAS,
        DATASETS.TRAIN's vocabulary); :meth:`test` tells it the model's own."""
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        train = cfg.DATASETS.TRAIN
        return VideoSemSegEvaluator(
            dataset_name,
            distributed=True,
            output_dir=output_folder,
            vc_windows=cfg.TEST.VC_WINDOWS,
            dump_predictions=cfg.TEST.DUMP_PREDICTIONS,
            seen_bias=cfg.MODEL.OV2VSS.SEEN_BIAS,
            train_class_texts=dataset_vocabulary(train[0]) if train else None,
        )

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: nn.Module):
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg: CfgNode, optimizer):
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def test(
        cls,
        cfg: CfgNode,
        model: nn.Module,
        evaluators: Optional[Sequence[DatasetEvaluator]] = None,
    ):
        """Evaluate every DATASETS.TEST entry, each with its own vocabulary (open vocabulary):
        video by video with every frame encoded once (TEST.STREAMING, docs/METRICS.md), or
        window by window through :meth:`build_test_loader`. ``report.png`` is drawn beside
        every ``metrics.json`` written (:func:`write_evaluation_reports`). Each
        :class:`VideoSemSegEvaluator` is told the model's calibration first
        (:func:`tell_calibration`)."""
        sync_model_buffers(model)  # every process evaluates rank 0's BN statistics
        results = OrderedDict()
        for idx, name in enumerate(cfg.DATASETS.TEST):
            evaluator = (
                evaluators[idx] if evaluators is not None else cls.build_evaluator(cfg, name)
            )
            tell_calibration(evaluator, unwrap_model(model))
            with unwrap_model(model).vocabulary(dataset_vocabulary(name)):
                if cfg.TEST.STREAMING:
                    results[name] = inference_on_videos(model, cfg, name, evaluator)
                else:
                    loader = cls.build_test_loader(cfg, name)
                    counted = with_progress(evaluator, name, len(loader))
                    results[name] = inference_on_dataset(model, loader, counted)
            if comm.is_main_process():
                write_evaluation_reports(evaluator)
                logger.info(f"Evaluation results for {name} in csv format:")
                print_csv_format(results[name])
        return results[next(iter(results))] if len(results) == 1 else results
