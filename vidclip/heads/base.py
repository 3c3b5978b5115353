"""The head interface: every alignment head turns encoder outputs into cacheable features and scores them.

Data flow: ``VideoEncoderOutput`` / ``TextEncoderOutput`` (from the model's encoders) -> ``head.encode_video`` /
``head.encode_text`` -> ``Features`` (dicts of batch-first tensors, so any row slice is a valid chunk and the video
side can be saved to safetensors) -> ``head.similarity(text_feats, video_feats) -> (N_t, N_v)``.

Rules:
- Video features never depend on the text query (they are extracted once and cached).
- ``Features`` always hold ``"pooled"``: an L2-normalised ``(B, D)`` embedding used by the coarse FAISS index.
- ``similarity`` returns scores in cosine units (the model multiplies by ``exp(logit_scale)`` for the loss) and
  works on any chunk of texts x videos.
- Auxiliary losses are returned by ``aux_losses`` (named, already weighted), never mixed into the similarity.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ..features import (  # noqa: F401  (re-exported: heads import their types from here)
    Features,
    TextEncoderOutput,
    VideoEncoderOutput,
    l2_normalize,
    masked_mean,
    num_rows,
    slice_features,
)


def resolve_head_kwargs(head_cls: type, head_cfg: Any, facts: dict[str, Any] | None = None) -> dict[str, Any]:
    """Constructor kwargs of a head: ``PRESETS[model.head.preset]`` overlaid by ``model.head.kwargs``, plus the model
    facts (e.g. ``embed_dim``, ``max_words``) that the constructor accepts and the config does not set.

    This is the only place head kwargs are resolved and validated (config validation and model assembly call it).

    Raises:
        ConfigError: unknown preset, or a key the head's constructor does not accept.
    """
    import inspect

    from omegaconf import OmegaConf

    from ..errors import ConfigError

    name, preset = head_cfg.name, head_cfg.get("preset") if hasattr(head_cfg, "get") else head_cfg.preset
    presets = getattr(head_cls, "PRESETS", {})
    if preset is not None and preset not in presets:
        raise ConfigError(f"model.head.preset='{preset}' is not a preset of head '{name}'. Available: "
                          f"{', '.join(sorted(presets)) or 'none'} (or null for the constructor defaults)")
    given = head_cfg.kwargs
    given = OmegaConf.to_container(given, resolve=True) if OmegaConf.is_config(given) else dict(given or {})
    kwargs = {**(presets[preset] if preset is not None else {}), **given}
    params = inspect.signature(head_cls.__init__).parameters
    valid = [p for p in params if p not in ("self", "args", "kwargs")]
    unknown = sorted(str(key) for key in kwargs if key not in valid)
    if unknown:
        raise ConfigError(f"model.head.kwargs: unknown key(s) {unknown} for head '{name}'. "
                          f"Valid keys: {', '.join(valid)}")
    for key, value in (facts or {}).items():
        if key in valid and key not in kwargs:
            kwargs[key] = value
    return kwargs


def check_head_kwargs(head_cls: type, model_cfg: Any) -> None:
    """Raise ``ConfigError`` when ``model.head`` (preset + kwargs) does not fit the head's constructor."""
    resolve_head_kwargs(head_cls, model_cfg.head)


class Head(nn.Module):
    """Base class of alignment heads. Subclasses register with ``@HEADS.register("name")``."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}  # named kwargs sets; "reference" = the reference code
    needs_patch_tokens: ClassVar[bool] = False  # the encoder must output patch tokens
    video_feature_keys: ClassVar[tuple] = ("pooled",)  # keys cached by extraction (re-ranking needs them all)

    def encode_video(self, video: VideoEncoderOutput) -> Features:
        raise NotImplementedError

    def encode_text(self, text: TextEncoderOutput) -> Features:
        raise NotImplementedError

    def similarity(self, text_feats: Features, video_feats: Features) -> torch.Tensor:
        """``(N_t, N_v)`` scores in cosine units."""
        raise NotImplementedError

    def aux_losses(self, text_feats: Features, video_feats: Features) -> dict[str, torch.Tensor]:
        """Named auxiliary losses on aligned pairs (text row i <-> video row i); empty by default."""
        return {}

    @classmethod
    def check_config(cls, model_cfg: Any) -> None:
        """Raise ``ConfigError`` when the model config cannot feed this head (called before any work starts).

        Checks ``model.head`` (preset + kwargs) against the constructor; subclasses add checks after
        ``super().check_config(model_cfg)``.
        """
        from ..errors import ConfigError

        check_head_kwargs(cls, model_cfg)
        if cls.needs_patch_tokens and not model_cfg.patch_tokens:
            raise ConfigError(
                f"head '{model_cfg.head.name}' needs patch tokens but model.patch_tokens is false: "
                "set model.patch_tokens=true")
