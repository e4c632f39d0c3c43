"""The OV2VSS meta-architecture (paper Fig. 3): frames + a vocabulary -> per-pixel class scores.

Per frame a backbone gives multi-scale features U^1..U^L; STCF fuses the window t-k_1..t into
O_t (III-A), RFE enhances it with the distant frame (III-B), video text encoding refines the
CLIP text embeddings with the window's dense CLIP features and builds the cost volume (III-C),
and a class-count-agnostic head scores every (class, pixel) pair. Loss: Eq. 15,
L = alpha * CE(main) + beta * CE(aux). The parts are built from the config in modeling/build.py;
logits become class probabilities (and are calibrated) in modeling/postprocess.py.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone
from detectron2.structures import ImageList
from torch import nn

from .modeling.build import build_components
from .modeling.clip import CLIPAdapter, template_mean
from .modeling.head import OpenVocabularyHead, TextAlignedAuxHead
from .modeling.postprocess import (
    check_seen_bias,
    class_probabilities,
    seen_class_mask,
    upsample,
)
from .modeling.rfe import RandomFrameEnhancement
from .modeling.stcf import SpatialTemporalContextFusion
from .modeling.video_text_encoding import VideoTextEncoder, cosine_cost_volume
from .vocabulary import validate_vocabulary

logger = logging.getLogger(__name__)


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
        lateral: nn.ModuleList,
        pools: nn.ModuleList,
        stcf: Optional[SpatialTemporalContextFusion],
        rfe: Optional[RandomFrameEnhancement],
        vte: Optional[VideoTextEncoder],
        head: OpenVocabularyHead,
        aux_head: Optional[TextAlignedAuxHead],
        class_chunk: int,
        vte_all_frames: bool,
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
        seen_bias: float = 0.0,
    ):
        """
        Args:
            backbone: per-frame multi-scale features U^1..U^L (``in_features``).
            clip: the CLIP model (text embeddings F^T, dense image features F^V).
            lateral: one 1x1 conv per scale, U^l -> the temporal branch's width C.
            pools: P2T pooling per scale (Eq. 2); empty when neither STCF nor RFE is on.
            stcf, rfe, vte: the paper's modules (III-A, III-B, III-C); None switches one off.
            head: the class-count-agnostic head (Eqs. 13-15).
            aux_head: phi_aux of Eq. 7 (None: no auxiliary loss).
            class_chunk: classes upsampled / normalised at once at inference (memory bound).
            vte_all_frames: dense CLIP features of every window frame (else the target only).
            decoder_stride: stride of per-class decoding; logits are upsampled.
            main_loss_weight, aux_loss_weight: alpha and beta of Eq. 15.
            train_class_texts / test_class_texts: vocabularies of training and inference.
            seen_bias: gamma of calibrated stacking (MODEL.OV2VSS.SEEN_BIAS; :meth:`postprocess`).
        """
        super().__init__()
        # registration order = creation order in build_components (keeps seeded initialisation)
        self.backbone = backbone
        self.clip = clip
        self.in_features = list(in_features)
        self.lateral = lateral
        self.pools = pools
        self.stcf = stcf
        self.rfe = rfe
        self.vte = vte
        self.vte_all_frames = vte_all_frames
        self.head = head
        self.aux_head = aux_head
        self.class_chunk = class_chunk
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
        self.set_seen_bias(seen_bias)

    @classmethod
    def from_config(cls, cfg) -> Dict:
        return build_components(cfg)  # modeling/build.py

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ------------------------------------------------------------------ vocabulary
    def set_test_vocabulary(self, class_texts: Sequence[str]) -> None:
        """Vocabulary used at inference (any size; no retraining needed)."""
        self.test_class_texts = validate_vocabulary(class_texts)

    # ------------------------------------------------------------------ calibration
    # calibrated stacking of the seen classes (modeling/postprocess.py, docs/METRICS.md)
    def set_seen_bias(self, gamma: float) -> None:
        """Set gamma of calibrated stacking (MODEL.OV2VSS.SEEN_BIAS): a finite number >= 0,
        0 = no calibration (the paper's protocols)."""
        self.seen_bias = check_seen_bias(gamma)

    def seen_class_mask(self, class_texts: Sequence[str]) -> List[bool]:
        """Which classes of ``class_texts`` are in the training vocabulary: the classes
        calibration biases (and the evaluator's seen-bias sweep, told by ``Trainer.test``)."""
        return seen_class_mask(class_texts, self.train_class_texts)

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

    # ------------------------------------------------------------------ stages
    # forward() = preprocess_windows -> per-frame encoding (frame_features, pooled_features,
    # clip_features) -> temporal_context / random_regions -> decode -> postprocess. The
    # streaming VideoPredictor (predictor.py) calls the same stages on one frame at a time and
    # caches the per-frame results, so both paths compute the same numbers.
    def backbone_positions(self, num_frames: int) -> List[int]:
        """Window positions (target last) whose backbone features are used: all of them with
        STCF, else only the target."""
        return list(range(num_frames)) if self.stcf is not None else [num_frames - 1]

    def dense_positions(self, num_frames: int) -> List[int]:
        """Window positions whose dense CLIP features are used: the whole window for video text
        encoding over "all" frames, else only the target."""
        return (
            list(range(num_frames))
            if (self.vte is not None and self.vte_all_frames)
            else [num_frames - 1]
        )

    def normalize(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8/float frames [..., 3, H, W] in INPUT.FORMAT -> normalised float on the model's
        device."""
        return (frames.to(self.device).float() - self.pixel_mean) / self.pixel_std

    def preprocess_windows(
        self, batched_inputs: List[Dict]
    ) -> Tuple[torch.Tensor, List[Tuple[int, int]]]:
        """Normalise and pad the windows of a batch: [B, F, 3, Hp, Wp] with F = T (+1 random frame
        when RFE is on, last), and each window's unpadded size."""
        num_frames = batched_inputs[0]["frames"].shape[0]
        windows = []
        for x in batched_inputs:
            if x["frames"].shape[0] != num_frames:
                raise ValueError("all windows of a batch must have the same number of frames")
            parts = [x["frames"]] + (
                [x["random_frame"].unsqueeze(0)] if self.rfe is not None else []
            )
            windows.append(self.normalize(torch.cat(parts)))
        images = ImageList.from_tensors(windows, self.size_divisibility)
        return images.tensor, list(images.image_sizes)

    def pad_frame(self, frame: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """One frame [3, H, W] -> normalised, padded [1, 3, Hp, Wp] (as preprocess_windows pads)."""
        images = ImageList.from_tensors([self.normalize(frame)], self.size_divisibility)
        return images.tensor, images.image_sizes[0]

    def frame_features(self, images: torch.Tensor) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """Backbone features of normalised frames [F,3,H,W]: U^l projected to C (list over
        scales) and the raw finest map U^1 (position features of Eq. 13)."""
        feats = self.backbone(images)
        return [lat(feats[f]) for lat, f in zip(self.lateral, self.in_features)], feats[
            self.in_features[0]
        ]

    def pooled_features(self, scales: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """P2T tokens f(U^l) [F, P, C] of every projected scale (Eq. 2)."""
        return [pool(f) for pool, f in zip(self.pools, scales)]

    def clip_features(self, images: torch.Tensor) -> torch.Tensor:
        """Dense CLIP features F^V [F, D, h, w] of normalised, padded frames [F, 3, H, W]."""
        return self.clip.dense_features(self._clip_pixels(images))

    def temporal_context(
        self, window_scales: Sequence[Sequence[torch.Tensor]], first_pooled: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """O_t [B, C, H_1, W_1] (III-A). window_scales[i][l]: projected scale l of the window's
        frame at backbone position i (target last); first_pooled: f(U^l) of the first position."""
        if self.stcf is None:
            # no temporal context: the target's own scales summed at U^1's size, so every
            # backbone stage and lateral conv still contributes (and trains)
            target = window_scales[-1]
            size = target[0].shape[-2:]
            return sum(
                F.interpolate(s, size=size, mode="bilinear", align_corners=False) for s in target
            )
        return self.stcf([list(s) for s in window_scales], list(first_pooled))

    def random_regions(self, random_pooled: Sequence[torch.Tensor]) -> torch.Tensor:
        """Region features L_r [B, K, C] of the random frame (III-B, Eqs. 8-9)."""
        return self.rfe.regions(list(random_pooled))

    def decode(
        self,
        o_t: torch.Tensor,
        regions: torch.Tensor | None,
        dense: torch.Tensor,
        finest: torch.Tensor,
        text: torch.Tensor,
        padded_size: Tuple[int, int],
    ) -> torch.Tensor:
        """RFE, video text encoding, cost volume and head -> logits [B, N, h, w] at the decoder
        stride (``padded_size // decoder_stride``; see :meth:`postprocess`).

        o_t: STCF output; regions: L_r of the random frame (None without RFE); dense: CLIP
        features of the dense positions [B, T', D, h, w] (target last); finest: the target's
        raw U^1; text: F^T [N, D] (or [N, T, D], MODEL.CLIP.TEMPLATE_MODE "channels").
        """
        o_hat = self.rfe(o_t, regions) if self.rfe is not None else o_t  # III-B, Eq. 10
        # III-C: video text encoding on the window's dense CLIP features, cost volume (Eqs. 11-12)
        if self.vte is not None:
            bsz, _, dim = dense.shape[:3]
            tokens = dense.permute(0, 1, 3, 4, 2).reshape(bsz, -1, dim)
            text = self.vte(text, tokens)
        elif text.dim() == 3:  # [N, T, D] templates as channels, no VTE: one copy per window
            text = text.unsqueeze(0).expand(dense.shape[0], -1, -1, -1)
        cost = cosine_cost_volume(text, dense[:, -1])  # [B, N, h, w] or [B, N, T, h, w]
        # Eqs. 13-15: class-agnostic head at the decoder stride, logits upsampled
        dec_size = (padded_size[0] // self.decoder_stride, padded_size[1] // self.decoder_stride)
        return self.head(cost, finest, o_hat, dec_size)

    def postprocess(
        self,
        logits: torch.Tensor,
        padded_size: Tuple[int, int],
        image_sizes: Sequence[Tuple[int, int]],
        output_sizes: Sequence[Tuple[int, int]],
    ) -> List[Dict[str, torch.Tensor]]:
        """Decoder logits -> ``[{"sem_seg": [N, H, W]}]`` class probabilities at each output
        size; with MODEL.OV2VSS.SEEN_BIAS > 0 the seen classes' logits are calibrated at the
        output size, before the softmax
        (:func:`~ov2vss.modeling.postprocess.class_probabilities`)."""
        seen = self.seen_class_mask(self.active_class_texts) if self.seen_bias else None
        return class_probabilities(
            logits, padded_size, image_sizes, output_sizes, self.class_chunk, seen, self.seen_bias
        )

    def forward(self, batched_inputs: List[Dict]) -> List[Dict] | Dict[str, torch.Tensor]:
        class_texts = self.active_class_texts
        x, image_sizes = self.preprocess_windows(batched_inputs)  # [B, F, 3, Hp, Wp]
        bsz, num_frames = x.shape[0], batched_inputs[0]["frames"].shape[0]
        padded_size = tuple(x.shape[-2:])

        # frames for the backbone: the window (STCF on) or just the target, plus the random one
        window_ids = self.backbone_positions(num_frames)
        frame_ids = window_ids + ([num_frames] if self.rfe is not None else [])
        scales, finest = self.frame_features(x[:, frame_ids].flatten(0, 1))
        scales = [f.view(bsz, len(frame_ids), *f.shape[1:]) for f in scales]
        finest = finest.view(bsz, len(frame_ids), *finest.shape[1:])

        # III-A: STCF
        per_frame = [[f[:, i] for f in scales] for i in range(len(window_ids))]
        first_pooled = (
            self.pooled_features([f[:, 0] for f in scales]) if self.stcf is not None else []
        )
        o_t = self.temporal_context(per_frame, first_pooled)

        text = self.clip.encode_vocabulary(class_texts)  # F^T [N, D] (or [N, T, D])
        aux_logits = None
        if self.training and self.aux_head is not None:
            # templates as channels: the aux head scores against their mean (one per class)
            aux_logits = self.aux_head(o_t, template_mean(text) if text.dim() == 3 else text)

        # III-B: the distant frame's regions
        regions = None
        if self.rfe is not None:
            regions = self.random_regions(
                self.pooled_features([f[:, len(frame_ids) - 1] for f in scales])
            )

        vte_ids = self.dense_positions(num_frames)
        dense = self.clip_features(x[:, vte_ids].flatten(0, 1))
        dense = dense.view(bsz, len(vte_ids), *dense.shape[1:])  # [B, T', D, h, w]
        logits = self.decode(o_t, regions, dense, finest[:, len(window_ids) - 1], text, padded_size)

        if self.training:
            logits = upsample(logits, padded_size)
            targets = [x["sem_seg"].to(self.device) for x in batched_inputs]
            targets = ImageList.from_tensors(
                targets, self.size_divisibility, pad_value=self.ignore_value
            ).tensor
            losses = {"loss_main": self.main_loss_weight * self._ce(logits, targets)}
            if aux_logits is not None:
                aux = upsample(aux_logits, padded_size)
                losses["loss_aux"] = self.aux_loss_weight * self._ce(aux, targets)
            return losses

        output_sizes = [
            (inp.get("height", size[0]), inp.get("width", size[1]))
            for inp, size in zip(batched_inputs, image_sizes)
        ]
        return self.postprocess(logits, padded_size, image_sizes, output_sizes)

    def _ce(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        num_classes = logits.shape[1]
        valid = targets != self.ignore_value
        if valid.any() and int(targets[valid].max()) >= num_classes:
            raise ValueError(
                f"label {int(targets[valid].max())} outside the training vocabulary of "
                f"{num_classes} classes"
            )
        if not valid.any():  # keep the graph (DDP) while contributing nothing
            return logits.sum() * 0.0
        return F.cross_entropy(logits, targets, ignore_index=self.ignore_value)
