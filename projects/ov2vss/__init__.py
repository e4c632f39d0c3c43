"""OV2VSS: open-vocabulary video semantic segmentation for detectron2.

Importing the package registers the datasets (``vspw_*``, ``cityscapes_video_*``,
``vspw_toy_*``) and the ``OV2VSS`` meta-architecture; it never touches the disk.

Entry points import it before detectron2, so that the filter below is in place when
detectron2's dependencies are first imported.
"""

import warnings

# fvcore scripts a loss with torch.jit.script when detectron2 imports it; the deprecation
# concerns fvcore's code, which OV2VSS never calls
warnings.filterwarnings(
    "ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning
)

# isort: split
from . import data  # noqa: F401  (registers datasets)
from . import modeling  # noqa: F401  (registers the CLIP ViT backbone)
from .config import add_ov2vss_config
from .data import VideoSemSegDatasetMapper
from .evaluation import VideoSemSegEvaluator
from .ov2vss_model import OV2VSS
from .predictor import VideoPredictor
from .training_free import TrainingFreePredictor

__all__ = [
    "add_ov2vss_config",
    "OV2VSS",
    "TrainingFreePredictor",
    "VideoPredictor",
    "VideoSemSegDatasetMapper",
    "VideoSemSegEvaluator",
]
