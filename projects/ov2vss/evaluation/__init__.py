from .video_sem_seg_evaluation import VideoSemSegEvaluator

__all__ = ["VideoSemSegEvaluator"]
