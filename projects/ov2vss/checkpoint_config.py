"""The config stored in checkpoints, compared with the run's: the one place where a
checkpoint's config (saved by :class:`ov2vss.checkpoint.OV2VSSCheckpointer`, or the
``config.yaml`` beside the file) is read and compared with the config of the run loading it."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple

import yaml

__all__ = ["config_differences", "config_hint"]


def _flatten(node: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(node, dict):
        out: Dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


def config_differences(saved_yaml: str, config: Any) -> List[Tuple[str, Any, Any]]:
    """MODEL.* keys (the architecture) whose values differ between a saved config (yaml
    text) and ``config``: ``[(key, saved value, this value)]`` (weights and device left out)."""
    try:
        saved = _flatten(yaml.safe_load(saved_yaml) or {})
    except yaml.YAMLError:
        return []
    current = _flatten(yaml.safe_load(config.dump()))
    skip = {"MODEL.WEIGHTS", "MODEL.DEVICE", "MODEL.CLIP.PRETRAINED"}
    diffs = []
    for key in sorted(set(saved) & set(current)):
        if not key.startswith("MODEL.") or key in skip:
            continue
        a, b = saved[key], current[key]
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            a, b = list(a), list(b)
        if a != b:
            diffs.append((key, saved[key], current[key]))
    return diffs


def config_hint(saved_config: Optional[str], path: Optional[str], config: Optional[Any]) -> str:
    """Which config the checkpoint file ``path`` was probably trained with — the one saved in
    it, else the ``config.yaml`` beside it — and its MODEL keys that differ from ``config``."""
    source = "the config saved in it"
    if not saved_config and path and "://" not in path:
        beside = os.path.join(os.path.dirname(os.path.abspath(path)), "config.yaml")
        if os.path.isfile(beside):
            with open(beside, encoding="utf-8") as f:
                saved_config, source = f.read(), beside
    if not saved_config:
        return (
            "It was trained with another config (no config.yaml beside it to compare): "
            "use the config of the run that wrote it"
        )
    if config is None:
        return f"It was probably trained with {source}"
    diffs = config_differences(saved_config, config)
    if not diffs:
        return f"It was probably trained with {source} (its MODEL keys equal this config's)"
    shown = "; ".join(f"{k}: {a!r} there, {b!r} here" for k, a, b in diffs[:8])
    more = f" (+{len(diffs) - 8} more)" if len(diffs) > 8 else ""
    return f"It was probably trained with {source}, which differs in {shown}{more}"
