"""Config keys of OV2VSS, added to a detectron2 config by :func:`add_ov2vss_config`."""
from detectron2.config import CfgNode as CN


def add_ov2vss_config(cfg: CN) -> None:
    """Declare every key the project uses (each with a one-line comment)."""
    # ---------------------------------------------------------------- input
    cfg.INPUT.DATASET_MAPPER_NAME = "video_sem_seg"  # which mapper train_net builds
    cfg.INPUT.CLIP = CN()
    # temporal distances k_1 > ... > k_n of the reference frames t-k (paper IV-B: 9, 6, 3)
    cfg.INPUT.CLIP.REFERENCE_OFFSETS = [9, 6, 3]
    cfg.INPUT.CLIP.RANDOM_FRAME = True  # also load the distant "random" frame (RFE input)
    # paper IV-C: hide pixels of classes outside the training vocabulary in the input frames
    cfg.INPUT.MASK_UNSEEN_PIXELS = False
    cfg.INPUT.COLOR_AUG_SSD = False  # photometric augmentation (one draw per clip)
    cfg.INPUT.SIZE_DIVISIBILITY = 32  # pad clips so H, W divide this (ResNet needs /32)
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
    cfg.MODEL.OV2VSS.NUM_HEADS = 8  # attention heads in RFE and video text encoding
    cfg.MODEL.OV2VSS.MAIN_LOSS_WEIGHT = 1.0  # alpha in Eq. 15
    cfg.MODEL.OV2VSS.AUX_LOSS_WEIGHT = 1.0  # beta in Eq. 15
    cfg.MODEL.OV2VSS.IGNORE_VALUE = 255  # label ignored by the losses
    # STCF: spatial-temporal context fusion (paper III-A)
    cfg.MODEL.OV2VSS.STCF = CN()
    cfg.MODEL.OV2VSS.STCF.ENABLED = True  # off: the target frame's own features are used
    cfg.MODEL.OV2VSS.STCF.FUSION = "concat"  # how O_t joins U_t: "concat" or "add" (Table III)
    # RFE: random frame enhancement (paper III-B)
    cfg.MODEL.OV2VSS.RFE = CN()
    cfg.MODEL.OV2VSS.RFE.ENABLED = True
    cfg.MODEL.OV2VSS.RFE.NUM_REGIONS = 16  # soft regions in L_d = Conv(D_random) (Eq. 9)
    # VTE: video text encoding (paper III-C)
    cfg.MODEL.OV2VSS.VTE = CN()
    cfg.MODEL.OV2VSS.VTE.ENABLED = True  # off: plain CLIP text embeddings
    cfg.MODEL.OV2VSS.VTE.USE_FFN = True  # MHSA + FFN (on) or MHSA only (Table III)
    cfg.MODEL.OV2VSS.VTE.CLIP_FRAMES = "all"  # dense CLIP features of "all" clip frames or "target"
    # class-agnostic prediction head (SPEC section 3)
    cfg.MODEL.OV2VSS.HEAD = CN()
    cfg.MODEL.OV2VSS.HEAD.COST_DIM = 32  # C': per-class channels after Eq. 13's Linear
    cfg.MODEL.OV2VSS.HEAD.POS_DIM = 32  # channels of U^1 projected for Eq. 13
    cfg.MODEL.OV2VSS.HEAD.DECODER_DIM = 64  # width of the per-(class, pixel) decoder
    cfg.MODEL.OV2VSS.HEAD.TEMPERATURE_INIT = 0.07  # initial temperature of the cosine cost volume
    cfg.MODEL.OV2VSS.HEAD.DECODER_STRIDE = 8  # per-class decoding stride; logits are upsampled
    # vocabulary used at inference when no dataset metadata supplies one (demo / API)
    cfg.MODEL.OV2VSS.TEST_VOCABULARY = []

    # CLIP (open_clip)
    cfg.MODEL.CLIP = CN()
    # open_clip model name ("ViT-B-16") or a path to an open_clip model-config json
    cfg.MODEL.CLIP.ARCH = "ViT-B-16"
    # open_clip pretrained tag ("openai"), a local checkpoint file, or "" for random init
    cfg.MODEL.CLIP.PRETRAINED = "openai"
    # which CLIP weights train: "none" (frozen), "attention" (attn/proj layers), "full"
    cfg.MODEL.CLIP.FINETUNE = "none"
    # prompt templates: "vild", "imagenet", "single", or an explicit list of "{}" strings
    cfg.MODEL.CLIP.PROMPT_TEMPLATES = "vild"
    cfg.MODEL.CLIP.INPUT_SIZE = 384  # short side fed to the CLIP image tower for dense features
    # ViT backbone taken from the CLIP visual tower (MODEL.BACKBONE.NAME = "CLIPViTBackbone")
    cfg.MODEL.CLIP_VIT = CN()
    cfg.MODEL.CLIP_VIT.OUT_LAYERS = [3, 6, 9, 12]  # 1-based transformer blocks giving U^1..U^4
    cfg.MODEL.CLIP_VIT.OUT_STRIDES = [4, 8, 16, 32]  # strides the block outputs are resized to
    cfg.MODEL.CLIP_VIT.OUT_CHANNELS = 256  # channels of each resized map

    # ---------------------------------------------------------------- solver
    cfg.SOLVER.OPTIMIZER = "ADAMW"  # "ADAMW" or "SGD"
    cfg.SOLVER.BACKBONE_MULTIPLIER = 1.0  # lr multiplier of the backbone
    cfg.SOLVER.CLIP_MULTIPLIER = 1.0  # lr multiplier of the (trainable part of) CLIP
    cfg.SOLVER.HEAD_MULTIPLIER = 10.0  # lr multiplier of the new modules (official code: x10)
    cfg.SOLVER.POLY_LR_POWER = 0.9  # poly decay after warm-up
    cfg.SOLVER.POLY_LR_CONSTANT_ENDING = 0.0

    # ---------------------------------------------------------------- evaluation
    cfg.TEST.VC_WINDOWS = [8, 16]  # video-consistency windows (mVC8, mVC16)
    cfg.TEST.DUMP_PREDICTIONS = False  # per-frame JSON dump (huge on VSPW; off by default)
