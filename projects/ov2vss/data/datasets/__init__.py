from . import register_cityscapes_video, register_vspw, register_vspw_toy  # noqa: F401
