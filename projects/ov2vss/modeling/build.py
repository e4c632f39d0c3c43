"""The parts of the OV2VSS meta-architecture (paper Fig. 3) built from the config.

:func:`build_components` reads MODEL.OV2VSS.*, MODEL.CLIP.*, INPUT.* and DATASETS.* and returns
the keyword arguments of :class:`ov2vss.ov2vss_model.OV2VSS` (its ``from_config``): the backbone
(U^1..U^L), the CLIP adapter (F^T, F^V), the P2T pools (Eq. 2), STCF (III-A, Eqs. 3-7), RFE
(III-B, Eqs. 8-10), the video text encoding (III-C, Eqs. 11-12), the head (Eqs. 13-15), the
auxiliary head (Eq. 7), the loss weights alpha and beta (Eq. 15) and the vocabularies.
"""

from __future__ import annotations

from typing import Dict

from detectron2.modeling import build_backbone
from torch import nn

from ..vocabulary import dataset_vocabulary
from .clip import build_clip_adapter
from .head import OpenVocabularyHead, TextAlignedAuxHead
from .p2t_pooling import P2TPooling
from .rfe import RandomFrameEnhancement
from .stcf import SpatialTemporalContextFusion
from .video_text_encoding import VideoTextEncoder


def build_components(cfg) -> Dict[str, object]:
    """The keyword arguments of ``OV2VSS.__init__`` from ``cfg`` (module docstring)."""
    m = cfg.MODEL.OV2VSS
    if m.VTE.CLIP_FRAMES not in ("all", "target"):
        raise ValueError(f"MODEL.OV2VSS.VTE.CLIP_FRAMES={m.VTE.CLIP_FRAMES!r}: 'all' or 'target'")
    train_texts = dataset_vocabulary(cfg.DATASETS.TRAIN[0]) if cfg.DATASETS.TRAIN else []
    if m.TEST_VOCABULARY:
        test_texts = list(m.TEST_VOCABULARY)
    elif cfg.DATASETS.TEST:
        test_texts = dataset_vocabulary(cfg.DATASETS.TEST[0])
    else:
        test_texts = train_texts
    # the sub-modules are created in this order (seeded initialisation depends on it)
    backbone = build_backbone(cfg)
    clip = build_clip_adapter(cfg)
    in_features = list(m.IN_FEATURES)
    shapes = backbone.output_shape()
    missing = [f for f in in_features if f not in shapes]
    if missing:
        raise ValueError(
            f"MODEL.OV2VSS.IN_FEATURES {missing} not produced by the backbone ({sorted(shapes)})"
        )
    hidden = m.HIDDEN_DIM
    lateral = nn.ModuleList(nn.Conv2d(shapes[f].channels, hidden, 1) for f in in_features)
    # P2T pools feed only STCF and RFE; without both they would get no gradient (DDP fails)
    use_pools = m.STCF.ENABLED or m.RFE.ENABLED
    pools = nn.ModuleList(
        P2TPooling(
            hidden,
            m.POOL_SIZES,
            mode=m.POOL_MODE,
            ratios=m.POOL_RATIOS,
            stride=shapes[f].stride,
            ratio_stride=m.POOL_RATIO_STRIDE,
        )
        for f in in_features
        if use_pools
    )
    stcf = (
        SpatialTemporalContextFusion(hidden, pools, m.STCF.FUSION, m.STCF.AGGREGATE)
        if m.STCF.ENABLED
        else None
    )
    rfe = (
        RandomFrameEnhancement(
            hidden, len(in_features), m.RFE.NUM_REGIONS, m.NUM_HEADS, m.RFE.REGION_HEAD
        )
        if m.RFE.ENABLED
        else None
    )
    template_channels = clip.template_mode == "channels"
    vte = (
        VideoTextEncoder(
            clip.embed_dim, m.NUM_HEADS, m.VTE.USE_FFN, m.CLASS_CHUNK, template_channels
        )
        if m.VTE.ENABLED
        else None
    )
    head = OpenVocabularyHead(
        temporal_dim=hidden,
        cost_dim=m.HEAD.COST_DIM,
        text_channels=clip.text_channels,
        pos_in_channels=shapes[in_features[0]].channels,
        pos_dim=m.HEAD.POS_DIM,
        decoder_dim=m.HEAD.DECODER_DIM,
        temperature_init=m.HEAD.TEMPERATURE_INIT,
        class_chunk=m.CLASS_CHUNK,
    )
    aux_head = (
        TextAlignedAuxHead(hidden, clip.embed_dim, m.HEAD.TEMPERATURE_INIT)
        if m.AUX_LOSS_WEIGHT > 0
        else None
    )
    return {
        "backbone": backbone,
        "clip": clip,
        "in_features": in_features,
        "lateral": lateral,
        "pools": pools,
        "stcf": stcf,
        "rfe": rfe,
        "vte": vte,
        "head": head,
        "aux_head": aux_head,
        "class_chunk": m.CLASS_CHUNK,
        "vte_all_frames": m.VTE.CLIP_FRAMES == "all",
        "decoder_stride": m.HEAD.DECODER_STRIDE,
        "main_loss_weight": m.MAIN_LOSS_WEIGHT,
        "aux_loss_weight": m.AUX_LOSS_WEIGHT,
        "ignore_value": m.IGNORE_VALUE,
        "pixel_mean": cfg.MODEL.PIXEL_MEAN,
        "pixel_std": cfg.MODEL.PIXEL_STD,
        "size_divisibility": cfg.INPUT.SIZE_DIVISIBILITY,
        "input_format": cfg.INPUT.FORMAT,
        "train_class_texts": train_texts,
        "test_class_texts": test_texts,
        "seen_bias": m.SEEN_BIAS,
    }
