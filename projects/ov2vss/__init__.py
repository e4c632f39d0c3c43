"""OV2VSS: open-vocabulary video semantic segmentation for detectron2.

Importing the package registers the datasets (``vspw_*``, ``cityscapes_video_*``,
``vspw_toy_*``) and the ``OV2VSS`` meta-architecture; it never touches the disk.
"""
from . import data  # noqa: F401  (registers datasets)
from .config import add_ov2vss_config
from .data import VideoSemSegDatasetMapper
from .evaluation import VideoSemSegEvaluator
from . import modeling  # noqa: F401  (registers the CLIP ViT backbone)
from .ov2vss_model import OV2VSS
from .predictor import VideoPredictor

__all__ = ["add_ov2vss_config", "OV2VSS", "VideoPredictor", "VideoSemSegDatasetMapper", "VideoSemSegEvaluator"]
