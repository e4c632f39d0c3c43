"""Loading open_clip models: MODEL.CLIP.ARCH (an open_clip name, a model-config json, or a
config shipped in modeling/clip_configs/) and MODEL.CLIP.PRETRAINED (a tag, a checkpoint file, or
"" for a random initialisation, whose open_clip notice is filtered out)."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

from torch import nn

# the json model configs shipped with the package (modeling/clip_configs/)
_CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "clip_configs")

# open_clip logs through the root logger (``logging.warning``); a module logger in other versions
_OPEN_CLIP_LOGGERS = ("", "open_clip", "open_clip.factory")


def resolve_arch(arch: str) -> str:
    """An open_clip model name, a json model-config file, or a config shipped in clip_configs/.

    Json configs are registered with open_clip under their file stem (only when asked for,
    never at import).
    """
    import open_clip

    path = arch
    if not arch.endswith(".json"):
        if arch in open_clip.list_models():
            return arch
        path = os.path.join(_CONFIG_DIR, arch + ".json")
        if not os.path.isfile(path):
            raise ValueError(
                f"MODEL.CLIP.ARCH={arch!r} is not an open_clip model or model-config json"
            )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MODEL.CLIP.ARCH: open_clip model config {path} does not exist")
    open_clip.add_model_config(path)
    return os.path.splitext(os.path.basename(path))[0]


class _DropRandomInitNotice(logging.Filter):
    """Drops open_clip's "No pretrained weights loaded for model ..." record: with
    MODEL.CLIP.PRETRAINED "" a random CLIP is what the config asks for, and the project says
    what that means itself (``load_model_weights`` warns when MODEL.WEIGHTS is empty too)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No pretrained weights loaded for model")


@contextlib.contextmanager
def _without_random_init_notice() -> Iterator[None]:
    """Silence open_clip's random-initialisation notice, for the duration of one call only."""
    quiet = _DropRandomInitNotice()
    loggers = [logging.getLogger(name) for name in _OPEN_CLIP_LOGGERS]
    for log in loggers:
        log.addFilter(quiet)
    try:
        yield
    finally:
        for log in loggers:
            log.removeFilter(quiet)


def build_open_clip(arch: str, pretrained: str) -> nn.Module:
    """Create an open_clip model; `pretrained` is a tag ("openai"), a checkpoint file, or ""
    (random initialisation, asked for: open_clip's notice about it is not shown)."""
    import open_clip

    name = resolve_arch(arch)
    looks_like_path = bool(pretrained) and (
        os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors"))
    )
    if looks_like_path and not os.path.isfile(pretrained):
        raise FileNotFoundError(
            f"MODEL.CLIP.PRETRAINED: checkpoint file {pretrained} does not exist"
        )
    try:
        with _without_random_init_notice() if not pretrained else contextlib.nullcontext():
            model = open_clip.create_model(name, pretrained=pretrained or None)
    except Exception as e:  # network errors, unknown tags, corrupt files: say which weights
        raise RuntimeError(
            f"could not load CLIP weights MODEL.CLIP.PRETRAINED={pretrained!r} for {name}: {e}. "
            "Use an open_clip tag (needs a network), a local checkpoint file, or '' (random init)."
        ) from e
    return model
