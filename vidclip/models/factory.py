"""``create_model`` / ``list_models``: architecture files + weights, kept separate as in open_clip.

``pretrained`` is an open_clip tag such as ``"openai"`` (downloaded where the network allows), a local open_clip
weight file (``.pt`` / ``.bin`` / ``.safetensors``, OpenAI JIT archives included), or a vidclip checkpoint (a run
directory, a ``checkpoints/step_<N>`` directory, or a ``model.safetensors`` written by vidclip).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, List, Optional, Union

from omegaconf import DictConfig, OmegaConf

from ..config import MODEL_CONFIG_DIR, ModelCfg, model_config_from_arch
from ..errors import CheckpointError
from .video_text_model import VideoTextModel

_logger = logging.getLogger(__name__)


def list_models() -> List[str]:
    """Names of the built-in architecture files (``vidclip/models/model_configs``)."""
    return sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.yaml"))


def _model_cfg(name_or_config: Union[str, DictConfig, ModelCfg], overrides: dict) -> DictConfig:
    if isinstance(name_or_config, str):
        return model_config_from_arch(name_or_config, **overrides)
    cfg = name_or_config
    if isinstance(cfg, DictConfig) and "model" in cfg and "data" in cfg:
        cfg = cfg.model
    merged = OmegaConf.merge(OmegaConf.structured(ModelCfg), cfg)
    return OmegaConf.merge(merged, overrides) if overrides else merged


def _is_vidclip_checkpoint(path: Path) -> bool:
    from ..engine.checkpoint import read_weights_metadata, resolve_model_weights

    if path.is_dir():
        return True
    if path.suffix != ".safetensors":
        return False
    try:
        return read_weights_metadata(resolve_model_weights(path)).get("format") == "vidclip"
    except Exception:  # unreadable safetensors: let the open_clip loader report it
        return False


def _build_clip(clip_cfg, pretrained: Optional[str]):
    import open_clip

    if clip_cfg.vision_cfg is not None or clip_cfg.text_cfg is not None:
        if pretrained:
            raise CheckpointError(f"pretrained={pretrained!r} cannot be loaded into an inline (custom) architecture; "
                                  "use a vidclip checkpoint of the same architecture instead")
        return open_clip.CLIP(embed_dim=int(clip_cfg.embed_dim),
                              vision_cfg=OmegaConf.to_container(clip_cfg.vision_cfg),
                              text_cfg=OmegaConf.to_container(clip_cfg.text_cfg), quick_gelu=clip_cfg.quick_gelu)
    try:
        return open_clip.create_model(clip_cfg.model_name, pretrained=pretrained,
                                      force_quick_gelu=clip_cfg.quick_gelu)
    except Exception as exc:
        if pretrained and not Path(pretrained).exists():
            raise CheckpointError(
                f"could not load pretrained weights '{pretrained}' for {clip_cfg.model_name}: {exc}. Offline? On a "
                f"machine with internet run: python -c \"import open_clip; open_clip.create_model('"
                f"{clip_cfg.model_name}', pretrained='{pretrained}')\" and copy the downloaded file (Hugging Face "
                "cache, ~/.cache/huggingface) here, or pass its local path as pretrained=/path/to/weights.pt") from exc
        if pretrained:
            raise CheckpointError(f"{pretrained}: not loadable as open_clip weights for {clip_cfg.model_name}: {exc}. "
                                  "Check the file and the architecture (model.clip.model_name)") from exc
        raise


def create_model(name_or_config: Union[str, DictConfig, ModelCfg], pretrained: Optional[str] = None,
                 **overrides: Any) -> VideoTextModel:
    """Build a ``VideoTextModel``.

    Args:
        name_or_config: an architecture name from :func:`list_models` (or a YAML path), a ``ModelCfg``, or a full
            run config (its ``model`` block is used).
        pretrained: None (random init), an open_clip tag (``"openai"``), a local open_clip weight file, or a vidclip
            checkpoint (run dir, step dir, or ``model.safetensors``). Defaults to nothing even if the config names one:
            callers pass ``cfg.model.pretrained`` explicitly.
        overrides: ModelCfg fields to override (e.g. ``context_length=64``).

    Example:
        >>> model = create_model("tiny-vifi")
        >>> feats = model.encode_text(["a red circle moves left"])
    """
    cfg = _model_cfg(name_or_config, overrides)
    pretrained = str(pretrained) if pretrained else None
    vidclip_ckpt = pretrained is not None and Path(pretrained).exists() and _is_vidclip_checkpoint(Path(pretrained))
    if pretrained and not vidclip_ckpt and Path(pretrained).suffix and not Path(pretrained).exists():
        raise CheckpointError(f"pretrained weights not found: {pretrained}. Pass an existing file, a vidclip run "
                              "directory, or an open_clip tag such as 'openai'")
    clip = _build_clip(cfg.clip, None if vidclip_ckpt else pretrained)
    model = VideoTextModel(clip, cfg, pretrained=pretrained)
    if vidclip_ckpt:
        from ..engine.checkpoint import load_model_weights

        meta = load_model_weights(model, pretrained)
        _logger.info("loaded vidclip weights from %s (step %s)", pretrained, meta.get("step"))
    return model
