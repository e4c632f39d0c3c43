"""The OV2VSS meta-architecture (paper Fig. 3): a clip of frames + a vocabulary -> per-pixel scores.

Per frame a backbone gives multi-scale features U^1..U^L; STCF fuses the clip t-k_1..t into
O_t (III-A), RFE enhances it with the distant frame (III-B), video text encoding refines the
CLIP text embeddings with the clip's dense CLIP features and builds the cost volume (III-C),
and a class-count-agnostic head scores every (class, pixel) pair. Loss: Eq. 15,
L = alpha * CE(main) + beta * CE(aux).
"""
from __future__ import annotations

import contextlib
import logging
from typing import Dict, Iterator, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList
from torch import nn

from .modeling.clip_adapter import CLIPAdapter, build_clip_adapter
from .modeling.head import OpenVocabularyHead, TextAlignedAuxHead
from .modeling.p2t_pooling import P2TPooling
from .modeling.rfe import RandomFrameEnhancement
from .modeling.stcf import SpatialTemporalContextFusion
from .modeling.video_text_encoding import VideoTextEncoder, cosine_cost_volume

logger = logging.getLogger(__name__)


def dataset_vocabulary(dataset_name: str) -> List[str]:
    """The class texts (prompt names) of a registered dataset, in label-id order."""
    meta = MetadataCatalog.get(dataset_name)
    texts = meta.get("class_texts", None) or meta.get("stuff_classes", None)
    if not texts:
        raise ValueError(f"dataset {dataset_name!r} has no class_texts/stuff_classes metadata")
    return list(texts)


@META_ARCH_REGISTRY.register()
class OV2VSS(nn.Module):
    """Open-vocabulary video semantic segmentation.

    Input: a list of mapper dicts with "frames" [T,3,H,W] (t-k_1, ..., t), "random_frame"
    [3,H,W] and, in training, "sem_seg" [H,W]. Output (inference): [{"sem_seg": [N,h,w]}]
    class probabilities at the original size, N = the active vocabulary.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        clip: CLIPAdapter,
        in_features: Sequence[str],
        hidden_dim: int,
        pool_sizes: Sequence[int],
        num_heads: int,
        stcf_enabled: bool,
        fusion: str,
        rfe_enabled: bool,
        num_regions: int,
        vte_enabled: bool,
        vte_ffn: bool,
        vte_all_frames: bool,
        head_cost_dim: int,
        head_pos_dim: int,
        head_decoder_dim: int,
        head_temperature: float,
        decoder_stride: int,
        main_loss_weight: float,
        aux_loss_weight: float,
        ignore_value: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        size_divisibility: int,
        input_format: str,
        train_class_texts: Sequence[str],
        test_class_texts: Sequence[str],
    ):
        super().__init__()
        self.backbone = backbone
        self.clip = clip
        self.in_features = list(in_features)
        shapes = backbone.output_shape()
        missing = [f for f in self.in_features if f not in shapes]
        if missing:
            raise ValueError(f"MODEL.OV2VSS.IN_FEATURES {missing} not produced by the backbone ({sorted(shapes)})")
        self.lateral = nn.ModuleList(nn.Conv2d(shapes[f].channels, hidden_dim, 1) for f in self.in_features)
        self.pools = nn.ModuleList(P2TPooling(hidden_dim, pool_sizes) for _ in self.in_features)
        self.stcf = SpatialTemporalContextFusion(hidden_dim, self.pools, fusion) if stcf_enabled else None
        self.rfe = (
            RandomFrameEnhancement(hidden_dim, len(self.in_features), num_regions, num_heads) if rfe_enabled else None
        )
        self.vte = VideoTextEncoder(clip.embed_dim, num_heads, vte_ffn) if vte_enabled else None
        self.vte_all_frames = vte_all_frames
        self.head = OpenVocabularyHead(
            shapes[self.in_features[0]].channels,
            hidden_dim,
            head_cost_dim,
            head_pos_dim,
            head_decoder_dim,
            head_temperature,
        )
        self.aux_head = TextAlignedAuxHead(hidden_dim, clip.embed_dim, head_temperature) if aux_loss_weight > 0 else None
        self.decoder_stride = decoder_stride
        self.main_loss_weight = main_loss_weight
        self.aux_loss_weight = aux_loss_weight
        self.ignore_value = ignore_value
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.size_divisibility = max(size_divisibility, backbone.size_divisibility, decoder_stride)
        self.input_format = input_format
        self.train_class_texts = list(train_class_texts)
        self.test_class_texts = list(test_class_texts)

    @classmethod
    def from_config(cls, cfg) -> Dict:
        m = cfg.MODEL.OV2VSS
        train_texts = dataset_vocabulary(cfg.DATASETS.TRAIN[0]) if cfg.DATASETS.TRAIN else []
        if m.TEST_VOCABULARY:
            test_texts = list(m.TEST_VOCABULARY)
        elif cfg.DATASETS.TEST:
            test_texts = dataset_vocabulary(cfg.DATASETS.TEST[0])
        else:
            test_texts = train_texts
        return {
            "backbone": build_backbone(cfg),
            "clip": build_clip_adapter(cfg),
            "in_features": m.IN_FEATURES,
            "hidden_dim": m.HIDDEN_DIM,
            "pool_sizes": m.POOL_SIZES,
            "num_heads": m.NUM_HEADS,
            "stcf_enabled": m.STCF.ENABLED,
            "fusion": m.STCF.FUSION,
            "rfe_enabled": m.RFE.ENABLED,
            "num_regions": m.RFE.NUM_REGIONS,
            "vte_enabled": m.VTE.ENABLED,
            "vte_ffn": m.VTE.USE_FFN,
            "vte_all_frames": m.VTE.CLIP_FRAMES == "all",
            "head_cost_dim": m.HEAD.COST_DIM,
            "head_pos_dim": m.HEAD.POS_DIM,
            "head_decoder_dim": m.HEAD.DECODER_DIM,
            "head_temperature": m.HEAD.TEMPERATURE_INIT,
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
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ------------------------------------------------------------------ vocabulary
    def set_test_vocabulary(self, class_texts: Sequence[str]) -> None:
        """Vocabulary used at inference (any size; no retraining needed)."""
        texts = [str(t).strip() for t in class_texts]
        if not texts or any(not t for t in texts):
            raise ValueError(f"the vocabulary must be a non-empty list of non-empty names, got {list(class_texts)}")
        dupes = sorted({t for t in texts if texts.count(t) > 1})
        if dupes:
            raise ValueError(f"duplicate class names in the vocabulary: {dupes}")
        self.test_class_texts = texts

    @contextlib.contextmanager
    def vocabulary(self, class_texts: Sequence[str]) -> Iterator[None]:
        """Temporarily evaluate with another vocabulary (e.g. one per test dataset)."""
        old = self.test_class_texts
        self.set_test_vocabulary(class_texts)
        try:
            yield
        finally:
            self.test_class_texts = old

    @property
    def active_class_texts(self) -> List[str]:
        texts = self.train_class_texts if self.training else self.test_class_texts
        if not texts:
            raise ValueError(
                "no vocabulary: set DATASETS.TRAIN/TEST, MODEL.OV2VSS.TEST_VOCABULARY, "
                "or call model.set_test_vocabulary([...])"
            )
        return texts

    # ------------------------------------------------------------------ features
    def _clip_pixels(self, normalized: torch.Tensor) -> torch.Tensor:
        """Back to 0..255 RGB for CLIP (padding becomes the mean pixel, a neutral grey)."""
        x = normalized * self.pixel_std + self.pixel_mean
        return x.flip(1) if self.input_format == "BGR" else x

    def frame_features(self, images: torch.Tensor) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """Backbone features of normalised frames [F,3,H,W]: U^l projected to C (list over
        scales) and the raw finest map U^1 (position features of Eq. 13)."""
        feats = self.backbone(images)
        return [lat(feats[f]) for lat, f in zip(self.lateral, self.in_features)], feats[self.in_features[0]]

    def forward(self, batched_inputs: List[Dict]) -> List[Dict] | Dict[str, torch.Tensor]:
        class_texts = self.active_class_texts
        bsz = len(batched_inputs)
        num_frames = batched_inputs[0]["frames"].shape[0]
        clips = []
        for x in batched_inputs:
            if x["frames"].shape[0] != num_frames:
                raise ValueError("all clips of a batch must have the same number of frames")
            parts = [x["frames"]] + ([x["random_frame"].unsqueeze(0)] if self.rfe is not None else [])
            clips.append(torch.cat(parts).to(self.device))
        clips = [(c.float() - self.pixel_mean) / self.pixel_std for c in clips]
        images = ImageList.from_tensors(clips, self.size_divisibility)
        x = images.tensor  # [B, F, 3, Hp, Wp], F = T (+1 random)
        padded_size = x.shape[-2:]

        # which frames need the backbone: the clip (STCF on) or just the target, and the random one
        clip_ids = list(range(num_frames)) if self.stcf is not None else [num_frames - 1]
        frame_ids = clip_ids + ([num_frames] if self.rfe is not None else [])
        flat = x[:, frame_ids].flatten(0, 1)
        feats, finest = self.frame_features(flat)
        feats = [f.view(bsz, len(frame_ids), *f.shape[1:]) for f in feats]
        finest = finest.view(bsz, len(frame_ids), *finest.shape[1:])
        target_pos = len(clip_ids) - 1

        # III-A: STCF
        if self.stcf is not None:
            per_frame = [[f[:, i] for f in feats] for i in range(len(clip_ids))]
            first_pooled = [pool(f[:, 0]) for pool, f in zip(self.pools, feats)]
            o_t = self.stcf(per_frame, first_pooled)
        else:
            o_t = feats[0][:, target_pos]

        text = self.clip.encode_vocabulary(class_texts)  # F^T [N, D]
        aux_logits = self.aux_head(o_t, text) if (self.training and self.aux_head is not None) else None

        # III-B: RFE with the distant frame
        if self.rfe is not None:
            rand = len(frame_ids) - 1
            regions = self.rfe.regions([pool(f[:, rand]) for pool, f in zip(self.pools, feats)])
            o_hat = self.rfe(o_t, regions)
        else:
            o_hat = o_t

        # III-C: video text encoding on the clip's dense CLIP features, cost volume (Eqs. 11-12)
        vte_ids = list(range(num_frames)) if (self.vte is not None and self.vte_all_frames) else [num_frames - 1]
        dense = self.clip.dense_features(self._clip_pixels(x[:, vte_ids].flatten(0, 1)))
        dense = dense.view(bsz, len(vte_ids), *dense.shape[1:])  # [B, T', D, h, w]
        target_dense = dense[:, -1]
        if self.vte is not None:
            tokens = dense.permute(0, 1, 3, 4, 2).reshape(bsz, -1, dense.shape[2])
            text = self.vte(text, tokens)
        cost = cosine_cost_volume(text, target_dense)

        # Eqs. 13-15: class-agnostic head at the decoder stride, logits upsampled
        dec_size = (padded_size[0] // self.decoder_stride, padded_size[1] // self.decoder_stride)
        logits = self.head(cost, finest[:, target_pos], o_hat, dec_size)
        logits = F.interpolate(logits, size=padded_size, mode="bilinear", align_corners=False)

        if self.training:
            targets = [x["sem_seg"].to(self.device) for x in batched_inputs]
            targets = ImageList.from_tensors(targets, self.size_divisibility, pad_value=self.ignore_value).tensor
            losses = {"loss_main": self.main_loss_weight * self._ce(logits, targets)}
            if aux_logits is not None:
                aux = F.interpolate(aux_logits, size=padded_size, mode="bilinear", align_corners=False)
                losses["loss_aux"] = self.aux_loss_weight * self._ce(aux, targets)
            return losses

        results = []
        probs = logits.softmax(dim=1)
        for i, inp in enumerate(batched_inputs):
            h = inp.get("height", images.image_sizes[i][0])
            w = inp.get("width", images.image_sizes[i][1])
            results.append({"sem_seg": sem_seg_postprocess(probs[i], images.image_sizes[i], h, w)})
        return results

    def _ce(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        num_classes = logits.shape[1]
        valid = targets != self.ignore_value
        if valid.any() and int(targets[valid].max()) >= num_classes:
            raise ValueError(
                f"label {int(targets[valid].max())} outside the training vocabulary of {num_classes} classes"
            )
        if not valid.any():  # keep the graph (DDP) while contributing nothing
            return logits.sum() * 0.0
        return F.cross_entropy(logits, targets, ignore_index=self.ignore_value)
