"""Per-frame encoding on open_clip's ``VisionTransformer``, with optional patch shift and prompt cube.

The tower's own submodules and weights are reused (``_embeds``, each block's ln_1 / attn / ls_1 / ln_2 / mlp / ls_2,
``ln_post``, ``proj``); nothing in open_clip is patched. Without extensions every frame's output equals open_clip's
``encode_image``. Extensions act on the normalised attention input of a block only (the residual stream is never
shifted or switched):

- patch shift (TS2-Net, as used by UCoFiA, methods.md §4.1.1) in ``patch_shift_blocks``;
- the Prompt Switch cube (:mod:`vidclip.models.prompt_cube`) in every block.

Padded frames (``mask`` False), ``padded_frames`` (``model.padded_frames``):

- ``"zero_features"`` (default): when frames are encoded independently (no patch shift, no prompt cube) they are not
  run through the tower at all and their output rows are **zeros**. With patch shift or the prompt cube frames
  interact, so every frame is encoded (padded frames take part, as in the reference code) and rows are whatever the
  tower gives for the pixels in the padded slots.
- ``"encode_zero_image"`` (GLSCL's reference): a padded slot is the zero image in the model's input units (zero
  *after* CLIP normalisation, as the CLIP4Clip-family dataloaders' ``np.zeros`` video) and its row is CLIP's output
  for it. With independent frames the zero image is encoded once and its output copied to every padded row (equal
  values and gradients); otherwise padded slots are zeroed before the whole clip is encoded.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .prompt_cube import PromptCube, check_attention_supported, check_chunking

_logger = logging.getLogger(__name__)

PADDED_FRAMES = ("zero_features", "encode_zero_image")  # model.padded_frames choices (see the module doc)


@dataclass
class FrameEncoderOutput:
    frames: torch.Tensor  # (B, T, E) per-frame CLS after ln_post @ proj, not normalised
    patches: torch.Tensor | None = None  # (B, T, N, E) patch tokens after ln_post @ proj


def patch_shift_indices(num_tokens: int, n_div: int) -> tuple:
    """Token indices shifted from frame t-1 and from frame t+1 (TS2-Net / UCoFiA ``PatchShiftModule``).

    ``fold = num_tokens // n_div``; backward-shifted tokens are ``1, 1+fold, 1+2*fold, ...`` and forward-shifted
    ``4, 4+fold, ...`` (below ``num_tokens``), as the reference code (``arange(start, L, step=fold)``). For ViT-B/32
    (50 tokens, n_div 7) that is 1, 8, ..., 43 and 4, 11, ..., 46: seven of each.
    """
    fold = num_tokens // n_div
    if fold < 1:
        raise ValueError(f"patch shift: {num_tokens} tokens per frame is fewer than model.patch_shift_div={n_div}; "
                         "lower model.patch_shift_div")
    return torch.arange(1, num_tokens, fold), torch.arange(4, num_tokens, fold)


def patch_shift(h: torch.Tensor, num_frames: int, n_div: int) -> torch.Tensor:
    """Shift tokens across time on ``h`` (B*T, L, D): see :func:`patch_shift_indices`; first/last frames keep their own.

    Assignments happen in the reference's order (backward, then forward), which decides the rare overlapping index.
    """
    length, width = h.shape[1], h.shape[2]
    prev_idx, next_idx = (i.to(h.device) for i in patch_shift_indices(length, n_div))
    x = h.reshape(-1, num_frames, length, width)  # (B, T, L, D)
    out = x.clone()
    out[:, 1:, prev_idx] = x[:, :-1, prev_idx]  # frame t takes frame t-1's tokens
    out[:, :-1, next_idx] = x[:, 1:, next_idx]  # frame t takes frame t+1's tokens
    return out.reshape(h.shape)  # (B*T, L, D)


class FrameEncoder(nn.Module):
    """open_clip visual tower applied frame by frame: ``(B, T, 3, H, W) -> (B, T, E)`` (+ patches ``(B, T, N, E)``)."""

    def __init__(self, visual: nn.Module, patch_tokens: bool = False, patch_shift_blocks: Sequence[int] = (),
                 patch_shift_div: int = 7, prompt_cube: PromptCube | None = None,
                 padded_frames: str = "zero_features"):
        super().__init__()
        _check_visual(visual, patch_shift_blocks)
        if padded_frames not in PADDED_FRAMES:
            raise ValueError(f"model.padded_frames={padded_frames!r}: choose one of {', '.join(PADDED_FRAMES)}")
        self.padded_frames = padded_frames
        self.visual = visual
        self.patch_tokens = bool(patch_tokens)
        self.patch_shift_blocks = frozenset(int(b) for b in patch_shift_blocks)
        self.patch_shift_div = int(patch_shift_div)
        self.prompt_cube = prompt_cube
        self.grad_checkpointing = False
        self.batch_first = getattr(visual.transformer, "batch_first", True)

    @property
    def frames_independent(self) -> bool:
        """True when no extension mixes information across frames (padded frames can then be skipped)."""
        return self.prompt_cube is None and not self.patch_shift_blocks

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute every block in the backward pass (``torch.utils.checkpoint``, non-reentrant)."""
        self.grad_checkpointing = bool(enable)

    def _attend(self, attn: nn.Module, h: torch.Tensor) -> torch.Tensor:
        if not self.batch_first:
            h = h.transpose(0, 1)  # (L, N, D)
            return attn(h, h, h, need_weights=False)[0].transpose(0, 1)
        return attn(h, h, h, need_weights=False)[0]

    def _block(self, index: int, block: nn.Module, x: torch.Tensor, num_frames: int, num_tokens: int) -> torch.Tensor:
        h = block.ln_1(x)  # (B*T, L(+P), D)
        if index in self.patch_shift_blocks:
            shifted = patch_shift(h[:, :num_tokens], num_frames, self.patch_shift_div)  # (B*T, L, D)
            h = torch.cat([shifted, h[:, num_tokens:]], dim=1) if self.prompt_cube is not None else shifted
        if self.prompt_cube is None:
            x = x + block.ls_1(self._attend(block.attn, h))
        else:
            x = x + block.ls_1(self.prompt_cube.attention(index, block.attn, h))
        return x + block.ls_2(block.mlp(block.ln_2(x)))

    def _tokens(self, images: torch.Tensor, num_frames: int) -> tuple:
        """Residual stream after the last block, (B*T, L(+P), D), and L (CLS + patches)."""
        x = self.visual._embeds(images)  # (B*T, L, D)
        num_tokens = x.shape[1]
        if self.prompt_cube is not None:
            x = self.prompt_cube.append(x)  # (B*T, L+P, D)
        use_checkpoint = self.grad_checkpointing and torch.is_grad_enabled()
        for index, block in enumerate(self.visual.transformer.resblocks):
            if use_checkpoint:
                x = checkpoint(self._block, index, block, x, num_frames, num_tokens, use_reentrant=False)
            else:
                x = self._block(index, block, x, num_frames, num_tokens)
        return x, num_tokens

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        x = self.visual.ln_post(x)
        return x @ self.visual.proj if self.visual.proj is not None else x

    def _encode(self, images: torch.Tensor, num_frames: int) -> tuple:
        """(B*T, 3, H, W) -> frame embeddings (B*T, E) and patch embeddings (B*T, N, E) or None."""
        x, num_tokens = self._tokens(images, num_frames)
        cls = x[:, 0]  # (B*T, D)
        if self.prompt_cube is not None:
            cls = self.prompt_cube.aggregate(cls, x[:, num_tokens:])  # (B*T, D)
        patches = self._project(x[:, 1:num_tokens]) if self.patch_tokens else None  # (B*T, N, E)
        return self._project(cls), patches

    def forward(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> FrameEncoderOutput:
        """Encode ``frames`` (B, T, 3, H, W), preprocessed; ``mask`` (B, T) bool, True = real frame.

        Returns per-frame CLS embeddings (B, T, E) after ``ln_post @ proj`` (not normalised) and, when configured,
        patch embeddings (B, T, N, E). See the module doc for padded frames.
        """
        batch, num_frames = frames.shape[:2]
        if self.prompt_cube is not None:
            check_chunking(num_frames, self.prompt_cube.num_prompts, self.prompt_cube.aggregation_frames)
        images = frames.flatten(0, 1)  # (B*T, 3, H, W)
        keep = None if mask is None else mask.to(device=frames.device, dtype=torch.bool).flatten()  # (B*T,)
        keep = None if keep is None or bool(keep.all()) else keep
        if keep is not None and not self.frames_independent and self.padded_frames == "encode_zero_image":
            images = images.masked_fill(~keep[:, None, None, None], 0)  # padded slots: the zero image
        if keep is None or not self.frames_independent:
            embeds, patches = self._encode(images, num_frames)
        else:
            embeds, patches = self._encode_real(images, keep)
        embeds = embeds.reshape(batch, num_frames, -1)  # (B, T, E)
        if patches is not None:
            patches = patches.reshape(batch, num_frames, patches.shape[1], -1)  # (B, T, N, E)
        return FrameEncoderOutput(embeds, patches)

    def _encode_real(self, images: torch.Tensor, keep: torch.Tensor) -> tuple:
        """Encode only the rows where ``keep`` is True; the other rows are zeros or the zero image's output."""
        rows = keep.nonzero().squeeze(1)  # (R,)
        if self.padded_frames == "encode_zero_image":
            zero = images.new_zeros((1,) + tuple(images.shape[1:]))  # (1, 3, H, W)
            outputs = self._encode(torch.cat([images[rows], zero]), 1)  # (R+1, E), (R+1, N, E) or None
            return tuple(None if v is None else _fill_rows(v[:-1], v[-1], rows, images.shape[0]) for v in outputs)
        any_real = rows.numel() > 0
        if not any_real:
            rows = rows.new_zeros(1)  # encode one row for shape and dtype, then drop it
        embeds, patches = self._encode(images[rows], 1)
        total = images.shape[0]
        out = [_scatter_rows(embeds, rows, total, any_real)]
        out.append(None if patches is None else _scatter_rows(patches, rows, total, any_real))
        return tuple(out)


def _fill_rows(values: torch.Tensor, fill: torch.Tensor, rows: torch.Tensor, total: int) -> torch.Tensor:
    """``total`` rows equal to ``fill`` except ``rows``, which take ``values`` (gradients reach both)."""
    out = fill.unsqueeze(0).expand((total,) + tuple(fill.shape)).contiguous()  # (B*T, ...)
    return out.index_copy(0, rows, values)


def _scatter_rows(values: torch.Tensor, rows: torch.Tensor, total: int, keep_values: bool) -> torch.Tensor:
    out = values.new_zeros((total,) + tuple(values.shape[1:]))  # (B*T, ...)
    return out.index_copy(0, rows, values) if keep_values else out


def _check_visual(visual: nn.Module, patch_shift_blocks: Sequence[int]) -> None:
    """Refuse open_clip towers whose pooling or blocks this encoder does not reproduce."""
    if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok":
        raise ValueError("FrameEncoder supports CLS-token pooling only (open_clip pool_type='tok', no attentional "
                         f"pooler); got pool_type={getattr(visual, 'pool_type', None)!r}. Use a CLIP ViT architecture")
    blocks = visual.transformer.resblocks
    for index, block in enumerate(blocks):
        missing = [n for n in ("ln_1", "attn", "ls_1", "ln_2", "mlp", "ls_2") if not hasattr(block, n)]
        if missing or hasattr(block, "ln_1_kv") or hasattr(block, "ln_attn"):
            raise ValueError(f"visual block {index} ({type(block).__name__}) is not open_clip's standard "
                             "ResidualAttentionBlock; FrameEncoder cannot run it. Use a CLIP ViT architecture")
        check_attention_supported(block.attn, f"visual block {index}")
    bad = [b for b in patch_shift_blocks if not 0 <= int(b) < len(blocks)]
    if bad:
        raise ValueError(f"model.patch_shift_blocks={list(patch_shift_blocks)}: blocks {bad} do not exist; the visual "
                         f"tower has blocks 0..{len(blocks) - 1} (UCoFiA on B/32: [10, 11])")


def build_frame_encoder(visual: nn.Module, model_cfg) -> FrameEncoder:
    """A :class:`FrameEncoder` over open_clip's ``visual`` tower configured by a ``ModelCfg``.

    Uses ``patch_tokens``, ``prompt`` (``PromptCubeCfg``), ``patch_shift_blocks``, ``patch_shift_div``,
    ``padded_frames`` and ``grad_checkpointing``.
    """
    cube = None
    if model_cfg.prompt.enabled:
        blocks = visual.transformer.resblocks
        span = model_cfg.prompt.aggregation_frames if model_cfg.prompt.aggregation == "model_frames" else None
        if model_cfg.prompt.aggregation == "model_frames" and span is None:
            raise ValueError("model.prompt.aggregation=model_frames needs model.prompt.aggregation_frames (the "
                             "reference: the training data.num_frames)")
        cube = PromptCube(width=visual.transformer.width, heads=blocks[0].attn.num_heads,
                          num_prompts=int(model_cfg.prompt.num_prompts), num_layers=len(blocks),
                          init_std=model_cfg.prompt.init_std, gated=bool(model_cfg.prompt.gated),
                          aggregation_frames=None if span is None else int(span))
    encoder = FrameEncoder(visual, model_cfg.patch_tokens, list(model_cfg.patch_shift_blocks),
                           model_cfg.patch_shift_div, cube, padded_frames=str(model_cfg.padded_frames))
    encoder.set_grad_checkpointing(bool(model_cfg.grad_checkpointing))
    return encoder
