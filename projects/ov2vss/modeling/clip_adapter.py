"""CLIP (open_clip) for OV2VSS: model loading, prompt-ensembled text embeddings, dense features.

The text side gives F^T (paper Eq. 11): ``MODEL.CLIP.TEMPLATE_MODE`` "mean" gives one embedding
per class name, averaged over the prompt templates as in ZegFormer/ViLD ([N, D]); "channels"
keeps one embedding per (class, template) ([N, T, D]), as the official code does after CAT-Seg
(mmseg/models/decode_heads/cat_zeroshot_classifier.py lines 215-216 and 275-296: the
[N, T, D] classifier), so the cost volume gets T channels per class. The image side gives the
dense features F^V used by the video text encoding (Eq. 11) and the cost volume (Eq. 12).

Dense features come from the last block of the image tower in one of two ways
(MODEL.CLIP.DENSE_MODE):

* "qk": the block as CLIP computes it (query-key self-attention, residual, FFN).
* "vv": the official OV2VSS code's dense path (``ResidualAttentionBlock.forward_dense`` in
  mmseg/models/decode_heads/third_party/model_vpt.py, inherited from CAT-Seg). The query-key
  attention of the last block is dropped: every token keeps only its own value,
  ``x + out_proj(v_proj(ln_1(x)))``, and the block's FFN residual follows unchanged,
  ``x + mlp(ln_2(x))``. This is MaskCLIP's value path (each token attends to itself only) with
  the block's residual and FFN kept; no value-value attention matrix is formed. Without the
  global q-k mixing of the last block, a frozen CLIP keeps the locality of its patch features.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

# ViLD's prompt set (Gu et al., "Open-vocabulary object detection via vision and language
# knowledge distillation"), the usual choice of open-vocabulary segmentation projects.
VILD_TEMPLATES: Tuple[str, ...] = (
    "a photo of a {}.",
    "This is a photo of a {}",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "a photo of a {} in the scene",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "There is a small {} in the scene.",
    "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
)


_TEXT_CHUNK = 256  # prompts per text-tower pass in encode_vocabulary

DENSE_MODES = ("qk", "vv")  # MODEL.CLIP.DENSE_MODE (module docstring)
TEMPLATE_MODES = ("mean", "channels")  # MODEL.CLIP.TEMPLATE_MODE (module docstring)

# CLIP's contrastive-loss scalars; OV2VSS scores with its own learnable temperatures
_UNUSED_CLIP_PARAMS = ("logit_scale", "logit_bias")


def get_prompt_templates(spec: Union[str, Sequence[str]]) -> List[str]:
    """Resolve MODEL.CLIP.PROMPT_TEMPLATES: "vild", "imagenet" (CLIP's 80), "single", or a list."""
    if isinstance(spec, str):
        key = spec.lower()
        if key == "vild":
            return list(VILD_TEMPLATES)
        if key == "imagenet":
            from open_clip import OPENAI_IMAGENET_TEMPLATES

            # open_clip stores them as callables; "{}" keeps our str.format convention
            return [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]
        if key == "single":
            return ["a photo of a {}."]
        raise ValueError(
            f"MODEL.CLIP.PROMPT_TEMPLATES={spec!r}: expected 'vild', 'imagenet', 'single' or a list"
        )
    templates = [str(t) for t in spec]
    if not templates or any("{}" not in t for t in templates):
        raise ValueError(f"prompt templates must be non-empty and contain '{{}}': {templates}")
    return templates


def _resolve_arch(arch: str) -> str:
    """An open_clip model name, a json model-config file, or a config shipped in clip_configs/.

    Json configs are registered with open_clip under their file stem (only when asked for,
    never at import).
    """
    import open_clip

    path = arch
    if not arch.endswith(".json"):
        if arch in open_clip.list_models():
            return arch
        path = os.path.join(os.path.dirname(__file__), "clip_configs", arch + ".json")
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


# open_clip logs through the root logger (``logging.warning``); a module logger in other versions
_OPEN_CLIP_LOGGERS = ("", "open_clip", "open_clip.factory")


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

    name = _resolve_arch(arch)
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


class CLIPAdapter(nn.Module):
    """Owns the open_clip model; encodes vocabularies (cached) and frames (dense features).

    Args:
        clip_model: an open_clip ``CLIP`` model.
        arch_name: its open_clip model name (selects the tokenizer).
        templates: prompt templates with one "{}" for the class text.
        finetune: "none" (frozen), "attention" (attention layers of both towers), "image"
            (whole image tower, text frozen) or "full".
        input_size: short side of the frames fed to the image tower for dense features.
        dense_mode: how the last image block gives the dense features: "qk" (as in CLIP) or
            "vv" (the official code's value path, see the module docstring).
        template_mode: "mean" (one text embedding per class) or "channels" (one per class and
            template; see the module docstring).
    """

    def __init__(
        self,
        clip_model: nn.Module,
        arch_name: str,
        templates: Sequence[str],
        finetune: str = "none",
        input_size: int = 384,
        dense_mode: str = "qk",
        template_mode: str = "mean",
    ):
        super().__init__()
        if dense_mode not in DENSE_MODES:
            raise ValueError(f"MODEL.CLIP.DENSE_MODE={dense_mode!r}: expected one of {DENSE_MODES}")
        if template_mode not in TEMPLATE_MODES:
            raise ValueError(
                f"MODEL.CLIP.TEMPLATE_MODE={template_mode!r}: expected one of {TEMPLATE_MODES}"
            )
        self.template_mode = template_mode
        if dense_mode == "vv":
            _check_value_path_block(clip_model.visual.transformer.resblocks[-1])
        self.dense_mode = dense_mode
        self.model = clip_model
        self.arch_name = arch_name
        self._tokenizer = None
        self.templates = list(templates)
        self.input_size = int(input_size)
        self.finetune = finetune
        self._set_trainable(finetune)
        visual = clip_model.visual
        mean = getattr(visual, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073)
        std = getattr(visual, "image_std", None) or (0.26862954, 0.26130258, 0.27577711)
        # CLIP normalisation of 0..255 RGB pixels (not saved: it comes with the arch)
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1) * 255.0, False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1) * 255.0, False)
        self._text_cache: Dict[Tuple[Tuple[str, ...], str, str], torch.Tensor] = {}

    # ------------------------------------------------------------------ parameters
    def _set_trainable(self, finetune: str) -> None:
        if finetune not in ("none", "attention", "image", "full"):
            raise ValueError(
                f"MODEL.CLIP.FINETUNE={finetune!r}: expected none|attention|image|full"
            )
        for name, p in self.model.named_parameters():
            if name in _UNUSED_CLIP_PARAMS:
                # never used by OV2VSS: a trainable one would get no gradient (DDP fails on it)
                p.requires_grad_(False)
            elif finetune == "full":
                p.requires_grad_(True)
            elif finetune == "image":
                p.requires_grad_(name.startswith("visual."))
            elif finetune == "attention":
                p.requires_grad_(".attn." in name)
            else:
                p.requires_grad_(False)

    @property
    def text_trainable(self) -> bool:
        return any(
            p.requires_grad for n, p in self.model.named_parameters() if not n.startswith("visual.")
        )

    @property
    def text_channels(self) -> int:
        """Cost-volume channels per class: the number of templates T ("channels"), else 1."""
        return len(self.templates) if self.template_mode == "channels" else 1

    @property
    def embed_dim(self) -> int:
        proj = self.model.text_projection
        return proj.shape[1] if isinstance(proj, torch.Tensor) else proj.out_features

    @property
    def patch_size(self) -> int:
        ps = self.model.visual.patch_size
        return ps[0] if isinstance(ps, (tuple, list)) else int(ps)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.text_trainable:
            self._text_cache.clear()  # a trainable text tower changes its embeddings
        return self

    # ------------------------------------------------------------------ text
    def encode_vocabulary(
        self, class_texts: Sequence[str], template_mode: Optional[str] = None
    ) -> torch.Tensor:
        """F^T: L2-normalised embeddings, [N, D] (mean over the prompt templates, "mean") or
        [N, T, D] (one per template, "channels").

        ``template_mode`` None follows ``MODEL.CLIP.TEMPLATE_MODE`` (:attr:`template_mode`).
        Computed lazily on the model's device and cached per vocabulary while the text tower
        is frozen (or in eval mode).
        """
        if len(class_texts) == 0:
            raise ValueError("the vocabulary is empty: give at least one class name")
        mode = self.template_mode if template_mode is None else template_mode
        if mode not in TEMPLATE_MODES:
            raise ValueError(f"template_mode={mode!r}: expected one of {TEMPLATE_MODES}")
        device = self.pixel_mean.device
        key = (tuple(class_texts), str(device), mode)
        use_cache = not (self.training and self.text_trainable)
        if use_cache and key in self._text_cache:
            return self._text_cache[key]
        if self._tokenizer is None:
            import open_clip

            self._tokenizer = open_clip.get_tokenizer(self.arch_name)
        prompts = [t.format(c) for c in class_texts for t in self.templates]
        tokens = self._tokenizer(prompts).to(device)
        with torch.set_grad_enabled(self.training and self.text_trainable):
            # in chunks: one pass over 124 names x 14 templates would hold ~1 GB of activations
            emb = torch.cat([encode_text(self.model, t) for t in tokens.split(_TEXT_CHUNK)])
        emb = F.normalize(emb.float(), dim=-1).view(len(class_texts), len(self.templates), -1)
        if mode == "mean":
            emb = template_mean(emb)
        if use_cache:
            self._text_cache[key] = emb.detach()
        return emb

    # ------------------------------------------------------------------ image
    def dense_features(self, images: torch.Tensor) -> torch.Tensor:
        """F^V: dense, projected CLIP image features [B, D, h, w] of 0..255 RGB images [B,3,H,W].

        The frames are resized so that the short side is ``input_size`` (multiple of the patch
        size), the position embedding is interpolated to the patch grid, the last block runs as
        ``dense_mode`` says, and every patch token goes through ln_post and the projection, as
        the class token does in CLIP.
        """
        ps = self.patch_size
        h, w = images.shape[-2:]
        scale = self.input_size / min(h, w)
        gh, gw = max(1, round(h * scale / ps)), max(1, round(w * scale / ps))
        x = F.interpolate(
            images.float(), size=(gh * ps, gw * ps), mode="bilinear", align_corners=False
        )
        x = (x - self.pixel_mean) / self.pixel_std
        visual = self.model.visual
        tokens = vit_patch_tokens(visual, x, last_block=self.dense_mode)[-1]  # [B, gh*gw, width]
        x = visual.ln_post(tokens)
        if visual.proj is not None:
            x = x @ visual.proj
        return x.transpose(1, 2).reshape(x.shape[0], -1, gh, gw)


def template_mean(text: torch.Tensor) -> torch.Tensor:
    """[..., T, D] per-template embeddings -> [..., D]: the L2-normalised mean over templates
    (what "mean" mode gives for L2-normalised template embeddings)."""
    return F.normalize(text.mean(dim=-2), dim=-1)


def vit_patch_tokens(
    visual: nn.Module,
    x: torch.Tensor,
    out_layers: Optional[Sequence[int]] = None,
    last_block: str = "qk",
) -> List[torch.Tensor]:
    """Run an open_clip VisionTransformer on normalised images of any size (multiple of the patch).

    The position embedding is interpolated to the patch grid. Returns the patch tokens
    (class token dropped) after each block in `out_layers` (1-based, in that order), or after
    the last block. ``last_block="vv"`` runs the tower's last block as the official code's
    value path (:func:`value_path_block`) instead of as CLIP does ("qk").
    """
    x = visual.conv1(x)  # [B, width, gh, gw]
    gh, gw = x.shape[-2:]
    x = x.flatten(2).transpose(1, 2)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + _interpolated_pos_embed(
        visual.positional_embedding, gh, gw
    ).to(x.dtype)
    x = visual.ln_pre(x)
    blocks = visual.transformer.resblocks
    layers = list(out_layers) if out_layers else [len(blocks)]
    last = max(layers)
    batch_first = getattr(visual.transformer, "batch_first", True)
    if not batch_first:
        x = x.transpose(0, 1)
    taken: Dict[int, torch.Tensor] = {}
    for i, block in enumerate(blocks, start=1):
        x = value_path_block(block, x) if last_block == "vv" and i == len(blocks) else block(x)
        if i in layers:
            taken[i] = (x if batch_first else x.transpose(0, 1))[:, 1:]
        if i == last:  # later blocks would be wasted compute
            break
    # in the order asked for (a layer may feed several outputs)
    return [taken[i] for i in layers]


def _interpolated_pos_embed(pos: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
    """CLIP's [1 + g*g, width] position embedding resized (bicubic) to a gh x gw grid."""
    cls_pos, grid_pos = pos[:1], pos[1:]
    g = int(round(grid_pos.shape[0] ** 0.5))
    if (gh, gw) != (g, g):
        grid_pos = grid_pos.reshape(1, g, g, -1).permute(0, 3, 1, 2)
        grid_pos = F.interpolate(grid_pos, size=(gh, gw), mode="bicubic", align_corners=False)
        grid_pos = grid_pos.permute(0, 2, 3, 1).reshape(gh * gw, -1)
    return torch.cat([cls_pos, grid_pos], dim=0).unsqueeze(0)


def _check_value_path_block(block: nn.Module) -> None:
    """The "vv" path needs open_clip's standard block (nn.MultiheadAttention, packed q/k/v)."""
    attn = getattr(block, "attn", None)
    ok = (
        isinstance(attn, nn.MultiheadAttention)
        and attn.in_proj_weight is not None
        and attn.bias_v is None
        and all(hasattr(block, n) for n in ("ln_1", "ln_2", "mlp"))
        and not hasattr(block, "ln_1_kv")
    )
    if not ok:
        raise ValueError(
            f"MODEL.CLIP.DENSE_MODE='vv' needs open_clip's ResidualAttentionBlock with "
            f"nn.MultiheadAttention in the image tower; the last block is {type(block).__name__}"
        )


def value_path_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """CLIP's last image block as the official OV2VSS code runs it for dense features.

    ``forward_dense`` of mmseg/models/decode_heads/third_party/model_vpt.py: q, k, v =
    in_proj(ln_1(x)); out_proj is applied to v alone (q, k are discarded: no attention is
    formed, each token keeps its own value), then the residual and the FFN as in the block:
    ``y = x + out_proj(v)``, ``y + mlp(ln_2(y))``. open_clip's LayerScale (``ls_1``/``ls_2``,
    identity for CLIP's own weights) is kept where the ordinary block has it. Token-wise, so
    [B, L, D] and [L, B, D] inputs both work.
    """
    attn = block.attn
    dim = x.shape[-1]
    bias = attn.in_proj_bias[2 * dim :] if attn.in_proj_bias is not None else None
    v = F.linear(block.ln_1(x), attn.in_proj_weight[2 * dim :], bias)
    x = x + _layer_scale(block, "ls_1", attn.out_proj(v))
    return x + _layer_scale(block, "ls_2", block.mlp(block.ln_2(x)))


def _layer_scale(block: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    scale = getattr(block, name, None)
    return x if scale is None else scale(x)


# ---------------------------------------------------------------------------- text towers
def encode_text(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text(tokens)``, run over the shortest context that gives the same result.

    CLIP's text transformer is causal and the pooled token (the EOT token, the largest id, or
    the tokenizer's EOS) sees only the tokens before it, so the context after the last pooled
    position of the batch can be dropped: the position embedding and the causal mask are
    sliced to that length (as open_clip's ``TextTransformer._embeds`` slices them). Towers
    where that is not exact (no causal mask, "first"/"last" pooling, a class token, Hugging
    Face towers, overridden forwards) run over the full context.
    """
    parts = _causal_text_tower(model)
    if parts is None:
        return model.encode_text(tokens)
    pool_type, eos_id = parts["pool_type"], parts["eos_id"]
    if pool_type == "argmax":
        pooled_at = tokens.argmax(dim=-1)
    else:  # "eos"; a row without EOS pools position 0, as text_global_pool does
        pooled_at = (tokens == eos_id).int().argmax(dim=-1)
    length = int(pooled_at.max()) + 1 if tokens.shape[0] else tokens.shape[1]
    if length >= tokens.shape[1]:
        return model.encode_text(tokens)
    from open_clip.transformer import text_global_pool

    tokens = tokens[:, :length]
    transformer = parts["transformer"]
    cast_dtype = transformer.get_cast_dtype()
    x = parts["token_embedding"](tokens).to(cast_dtype)
    x = x + parts["positional_embedding"][:length].to(cast_dtype)
    x = transformer(x, attn_mask=parts["attn_mask"][:length, :length])
    x = parts["ln_final"](x)
    x = text_global_pool(x, tokens, pool_type, eos_token_id=eos_id)
    proj = parts["text_projection"]
    if isinstance(proj, nn.Linear):
        x = proj(x)
    elif proj is not None:
        x = x @ proj
    return x


def _causal_text_tower(model: nn.Module) -> Optional[Dict[str, object]]:
    """The pieces of an open_clip ``CLIP`` / ``CustomTextCLIP`` text tower whose output can be
    computed over a truncated context, or None."""
    try:
        from open_clip.model import CLIP, CustomTextCLIP
        from open_clip.transformer import TextTransformer
    except ImportError:  # pragma: no cover - open_clip is a dependency
        return None
    if "encode_text" in vars(model):  # replaced on the instance (a wrapper): call it as it is
        return None
    if type(model).encode_text is CLIP.encode_text and isinstance(model, CLIP):
        tower, pool_type, eos_id = model, model.text_pool_type, getattr(model, "text_eos_id", None)
    elif (
        type(model).encode_text is CustomTextCLIP.encode_text
        and isinstance(model, CustomTextCLIP)
        and type(model.text) is TextTransformer
        and model.text.cls_emb is None
        and not model.text.use_pad_mask
        and not model.text.output_tokens
    ):
        tower, pool_type, eos_id = model.text, model.text.pool_type, model.text.eos_id
    else:
        return None
    mask = getattr(tower, "attn_mask", None)
    if pool_type not in ("argmax", "eos") or not _is_causal_mask(mask):
        return None
    return dict(
        token_embedding=tower.token_embedding,
        positional_embedding=tower.positional_embedding,
        transformer=tower.transformer,
        attn_mask=mask,
        ln_final=tower.ln_final,
        text_projection=tower.text_projection,
        pool_type=pool_type,
        eos_id=eos_id,
    )


def _is_causal_mask(mask: Optional[torch.Tensor]) -> bool:
    """An additive [n, n] mask: -inf strictly above the diagonal, 0 elsewhere."""
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2 or mask.shape[0] != mask.shape[1]:
        return False
    if not mask.is_floating_point():
        return False
    upper = torch.ones(mask.shape, dtype=torch.bool, device=mask.device).triu(1)
    return bool(torch.isneginf(mask[upper]).all() and (mask[~upper] == 0).all())


def build_clip_adapter(cfg) -> CLIPAdapter:
    """Build the CLIP adapter from MODEL.CLIP.* (weights loaded here, text encoded lazily)."""
    model = build_open_clip(cfg.MODEL.CLIP.ARCH, cfg.MODEL.CLIP.PRETRAINED)
    return CLIPAdapter(
        model,
        _resolve_arch(cfg.MODEL.CLIP.ARCH),
        get_prompt_templates(cfg.MODEL.CLIP.PROMPT_TEMPLATES),
        finetune=cfg.MODEL.CLIP.FINETUNE,
        input_size=cfg.MODEL.CLIP.INPUT_SIZE,
        dense_mode=cfg.MODEL.CLIP.DENSE_MODE,
        template_mode=cfg.MODEL.CLIP.TEMPLATE_MODE,
    )
