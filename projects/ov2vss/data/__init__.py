from . import datasets  # noqa: F401  (registers datasets)
from .video_mapper import VideoSemSegDatasetMapper

__all__ = ["VideoSemSegDatasetMapper"]
