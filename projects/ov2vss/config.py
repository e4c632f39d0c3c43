"""Config keys of OV2VSS (:func:`add_ov2vss_config`) and the one way to build a config.

Vocabulary: a *window* is the run of frames t-k_1, ..., t (plus the distant "random" frame)
that one prediction looks at; *CLIP* always means the CLIP model (``MODEL.CLIP``).
"""

from __future__ import annotations

from typing import Optional, Sequence

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg


def add_ov2vss_config(cfg: CN) -> None:
    """Declare every key the project uses (each with a one-line comment)."""
    # ---------------------------------------------------------------- input
    cfg.INPUT.TEMPORAL = CN()
    # temporal distances k_1 > ... > k_n of the reference frames t-k (paper IV-B: 9, 6, 3)
    cfg.INPUT.TEMPORAL.REFERENCE_OFFSETS = [9, 6, 3]
    cfg.INPUT.TEMPORAL.RANDOM_FRAME = True  # also load the distant "random" frame (RFE input)
    # training: probability of playing a window backwards, references t+k (official code: 0.5)
    cfg.INPUT.TEMPORAL.REVERSE_PROB = 0.0
    # paper IV-C: hide pixels of classes outside the training vocabulary in the input frames
    cfg.INPUT.MASK_UNSEEN_PIXELS = False
    cfg.INPUT.COLOR_AUG_SSD = False  # photometric augmentation (one draw per window)
    # with COLOR_AUG_SSD: one photometric draw per frame instead of per window (official code)
    cfg.INPUT.COLOR_AUG_PER_FRAME = False
    cfg.INPUT.SIZE_DIVISIBILITY = 32  # pad frames so H, W divide this (ResNet needs /32)
    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE = "absolute"
    cfg.INPUT.CROP.SIZE = (480, 480)  # paper: random crop 480

    # ---------------------------------------------------------------- dataset
    cfg.DATASETS.TOY = CN()
    cfg.DATASETS.TOY.ROOT = ""  # where the toy dataset lives ("" = $DETECTRON2_DATASETS/VSPW_toy)

    # ---------------------------------------------------------------- model
    cfg.MODEL.OV2VSS = CN()
    cfg.MODEL.OV2VSS.IN_FEATURES = ["res2", "res3", "res4", "res5"]  # backbone maps U^1..U^L
    cfg.MODEL.OV2VSS.HIDDEN_DIM = 256  # channel width C of the temporal branch (STCF/RFE)
    cfg.MODEL.OV2VSS.POOL_SIZES = [1, 2, 3, 6]  # P2T output grids; P = sum(s*s) tokens per scale
    # P2T grids: "grid" (POOL_SIZES) or "ratio" (map size / POOL_RATIOS, official code)
    cfg.MODEL.OV2VSS.POOL_MODE = "grid"
    cfg.MODEL.OV2VSS.POOL_RATIOS = [2, 4, 6, 8]  # "ratio": grid of ratio r = round(H16 / r)
    # "ratio": the ratios divide the map of this stride (official: SAM's 1/16 maps), at every scale
    cfg.MODEL.OV2VSS.POOL_RATIO_STRIDE = 16
    cfg.MODEL.OV2VSS.NUM_HEADS = 8  # attention heads in RFE and video text encoding
    cfg.MODEL.OV2VSS.MAIN_LOSS_WEIGHT = 1.0  # alpha in Eq. 15
    cfg.MODEL.OV2VSS.AUX_LOSS_WEIGHT = 1.0  # beta in Eq. 15
    cfg.MODEL.OV2VSS.IGNORE_VALUE = 255  # label ignored by the losses
    # classes processed at once by VTE, the head and the output softmax: memory stays bounded
    # for any vocabulary size (the results do not depend on it)
    cfg.MODEL.OV2VSS.CLASS_CHUNK = 64
    # STCF: spatial-temporal context fusion (paper III-A)
    cfg.MODEL.OV2VSS.STCF = CN()
    cfg.MODEL.OV2VSS.STCF.ENABLED = True  # off: the target frame's own features are used
    cfg.MODEL.OV2VSS.STCF.FUSION = "concat"  # how O_t joins U_t: "concat" or "add" (Table III)
    # Eq. 5's conv: "tokens" (Conv2d(P, P), needs POOL_MODE "grid") or "shared" (one conv for
    # every token's map, as the official code's HPN; any P)
    cfg.MODEL.OV2VSS.STCF.AGGREGATE = "tokens"
    # RFE: random frame enhancement (paper III-B)
    cfg.MODEL.OV2VSS.RFE = CN()
    cfg.MODEL.OV2VSS.RFE.ENABLED = True
    cfg.MODEL.OV2VSS.RFE.NUM_REGIONS = 16  # soft regions in L_d = Conv(D_random) (Eq. 9)
    # the Conv of Eq. 9: "linear" (1x1) or "conv3x3" (3-tap conv-BN-ReLU + 1x1, official code)
    cfg.MODEL.OV2VSS.RFE.REGION_HEAD = "linear"
    # VTE: video text encoding (paper III-C)
    cfg.MODEL.OV2VSS.VTE = CN()
    cfg.MODEL.OV2VSS.VTE.ENABLED = True  # off: plain CLIP text embeddings
    cfg.MODEL.OV2VSS.VTE.USE_FFN = True  # MHSA + FFN (on) or MHSA only (Table III)
    # dense CLIP features of "all" window frames or only the "target" frame
    cfg.MODEL.OV2VSS.VTE.CLIP_FRAMES = "all"
    # class-agnostic prediction head (paper Eqs. 13-15; docs/OFFICIAL_CODE.md, design decisions)
    cfg.MODEL.OV2VSS.HEAD = CN()
    cfg.MODEL.OV2VSS.HEAD.COST_DIM = 32  # C': per-class channels after Eq. 13's Linear
    cfg.MODEL.OV2VSS.HEAD.POS_DIM = 32  # channels of U^1 projected for Eq. 13
    cfg.MODEL.OV2VSS.HEAD.DECODER_DIM = 64  # width of the per-(class, pixel) decoder
    cfg.MODEL.OV2VSS.HEAD.TEMPERATURE_INIT = 0.07  # initial temperature of the cosine cost volume
    cfg.MODEL.OV2VSS.HEAD.DECODER_STRIDE = 8  # per-class decoding stride; logits are upsampled
    # vocabulary used at inference when no dataset metadata supplies one (demo / API)
    cfg.MODEL.OV2VSS.TEST_VOCABULARY = []
    # gamma >= 0 subtracted at inference from the log-probabilities of classes in the training
    # vocabulary (calibrated stacking; docs/METRICS.md, "Seen-class calibration"); 0 = the
    # paper's protocols
    cfg.MODEL.OV2VSS.SEEN_BIAS = 0.0

    # CLIP (open_clip)
    cfg.MODEL.CLIP = CN()
    # open_clip model name ("ViT-B-16") or a path to an open_clip model-config json
    cfg.MODEL.CLIP.ARCH = "ViT-B-16"
    # open_clip pretrained tag ("openai"), a local checkpoint file, or "" for random init
    cfg.MODEL.CLIP.PRETRAINED = "openai"
    # which CLIP weights train: "none" (frozen), "attention" (attention layers of both towers),
    # "image" (the whole image tower, text frozen) or "full"
    cfg.MODEL.CLIP.FINETUNE = "none"
    # prompt templates: "vild", "imagenet", "single", or an explicit list of "{}" strings
    cfg.MODEL.CLIP.PROMPT_TEMPLATES = "vild"
    # "mean" (one embedding per class) or "channels" (one cost-volume channel per template)
    cfg.MODEL.CLIP.TEMPLATE_MODE = "mean"
    cfg.MODEL.CLIP.INPUT_SIZE = 384  # short side fed to the CLIP image tower for dense features
    # last image block for dense F^V: "qk" (as in CLIP) or "vv" (official code: value path only)
    cfg.MODEL.CLIP.DENSE_MODE = "qk"
    # ViT backbone taken from the CLIP image tower (MODEL.BACKBONE.NAME = "build_clip_vit_backbone")
    cfg.MODEL.CLIP_VIT = CN()
    cfg.MODEL.CLIP_VIT.OUT_LAYERS = [3, 6, 9, 12]  # 1-based transformer blocks giving U^1..U^4
    cfg.MODEL.CLIP_VIT.OUT_STRIDES = [4, 8, 16, 32]  # strides the block outputs are resized to
    cfg.MODEL.CLIP_VIT.OUT_CHANNELS = 256  # channels of each resized map
    # SAM's image encoder, the paper's ViT-B (MODEL.BACKBONE.NAME = "build_sam_vit_backbone")
    cfg.MODEL.SAM_VIT = CN()
    cfg.MODEL.SAM_VIT.EMBED_DIM = 768  # token width (SAM ViT-B: 768)
    cfg.MODEL.SAM_VIT.DEPTH = 12  # transformer blocks
    cfg.MODEL.SAM_VIT.NUM_HEADS = 12  # attention heads per block
    cfg.MODEL.SAM_VIT.WINDOW_SIZE = 14  # window of the non-global (windowed attention) blocks
    cfg.MODEL.SAM_VIT.GLOBAL_BLOCKS = [2, 5, 8, 11]  # 0-based blocks with global attention
    cfg.MODEL.SAM_VIT.OUT_BLOCKS = [3, 6, 9, 12]  # 1-based blocks giving U^1..U^4 (strides 4..32)
    cfg.MODEL.SAM_VIT.OUT_CHANNELS = 256  # channels of each pyramid map
    # pre-training size: position grid PRETRAIN_IMG_SIZE/16 (SAM's file is resized to it)
    cfg.MODEL.SAM_VIT.PRETRAIN_IMG_SIZE = 1024
    cfg.MODEL.SAM_VIT.USE_ACT_CHECKPOINT = False  # recompute block activations in backward
    cfg.MODEL.SAM_VIT.DROP_PATH_RATE = 0.0  # stochastic depth (official code: none)

    # ---------------------------------------------------------------- solver
    cfg.SOLVER.OPTIMIZER = "ADAMW"  # "ADAMW" or "SGD"
    cfg.SOLVER.BACKBONE_MULTIPLIER = 1.0  # lr multiplier of the backbone
    cfg.SOLVER.CLIP_MULTIPLIER = 1.0  # lr multiplier of the (trainable part of) CLIP
    cfg.SOLVER.HEAD_MULTIPLIER = 10.0  # lr multiplier of the new modules (official code: x10)
    cfg.SOLVER.POLY_LR_POWER = 0.9  # poly decay after warm-up
    cfg.SOLVER.POLY_LR_CONSTANT_ENDING = 0.0
    # micro-batches of IMS_PER_BATCH per optimizer step; an iteration is one micro-batch
    # (docs/GETTING_STARTED.md, "Gradient accumulation"); official code: 4
    cfg.SOLVER.ACCUMULATE_STEPS = 1
    # biases and other 1-D parameters outside norm layers: None = WEIGHT_DECAY_NORM (default),
    # a number = their weight decay (official code: WEIGHT_DECAY)
    cfg.SOLVER.WEIGHT_DECAY_BIAS = None

    # ---------------------------------------------------------------- evaluation
    cfg.TEST.VC_WINDOWS = [8, 16]  # video-consistency windows (mVC8, mVC16)
    cfg.TEST.DUMP_PREDICTIONS = False  # per-frame JSON dump (huge on VSPW; off by default)
    # evaluate video by video, each frame encoded once (False: window by window, test loader)
    cfg.TEST.STREAMING = True


def get_ov2vss_cfg(config_file: Optional[str] = None, opts: Sequence[str] = ()) -> CN:
    """detectron2's default config + every OV2VSS key, merged with a yaml file and overrides
    (an unknown key is detectron2's error naming it). The result is not frozen."""
    cfg = get_cfg()
    add_ov2vss_config(cfg)
    if config_file:
        cfg.merge_from_file(config_file)
    if opts:
        cfg.merge_from_list(list(opts))
    return cfg
