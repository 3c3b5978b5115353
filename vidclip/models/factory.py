"""``create_model`` / ``list_models``: architecture files + weights, kept separate as in open_clip.

``pretrained`` is one of

* an open_clip tag such as ``"openai"`` or ``"laion2b_s34b_b79k"``: open_clip downloads the weights (or finds them in
  the Hugging Face cache) and they are loaded into the CLIP backbone;
* a local open_clip weight file (``.pt`` / ``.pth`` / ``.bin`` state dicts, ``.safetensors``, OpenAI JIT archives
  such as ``ViT-B-32.pt``), loaded into the CLIP backbone;
* a vidclip checkpoint: a ``model.safetensors`` written by vidclip (metadata ``{"format": "vidclip", "arch": ...}``),
  a ``checkpoints/step_<N>`` directory or a run directory; it holds the whole ``VideoTextModel``.

Backbone weights are loaded *before* the video-text model is assembled, so the sequence transformer copies the
pretrained text blocks and ``logit_scale`` starts at the pretrained CLIP value.

The activation of both towers (QuickGELU or GELU) follows open_clip's convention unless ``model.clip.quick_gelu`` is
set (:func:`resolve_activation`); the model's ``cfg.clip.quick_gelu`` holds the one used, the run log says why, and
``model_info()["activation"]`` (hence ``model.json`` of an extraction) records it.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Union

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ..config import MODEL_CONFIG_DIR, ModelCfg, model_config_from_arch
from ..errors import CheckpointError, ConfigError
from .video_text_model import VideoTextModel
from .weights import (
    is_torchscript_archive,
    load_open_clip_weights,
    load_vidclip_weights,
    read_weights_metadata,
    vidclip_weights_file,
)

_logger = logging.getLogger(__name__)

_PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def list_models() -> list[str]:
    """Names of the built-in architecture files (``vidclip/models/model_configs``)."""
    return sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.yaml"))


def _model_cfg(name_or_config: Union[str, Path, DictConfig, ModelCfg], overrides: dict[str, Any]) -> DictConfig:
    """A structured ``ModelCfg`` from an architecture name / file, a ``ModelCfg`` or a full run config."""
    if isinstance(name_or_config, (str, Path)):
        return model_config_from_arch(str(name_or_config), **overrides)
    cfg = name_or_config
    if isinstance(cfg, DictConfig) and "model" in cfg and "data" in cfg:
        cfg = cfg.model
    if isinstance(cfg, DictConfig):  # resolve interpolations against the run config (${data.num_frames})
        cfg = OmegaConf.to_container(cfg, resolve=True)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(ModelCfg), cfg)
        return OmegaConf.merge(merged, overrides) if overrides else merged
    except Exception as exc:  # omegaconf validation errors
        raise ConfigError(f"invalid model config: {exc}") from exc


# ---------------------------------------------------------------------------------------------------- activation
def _architecture_quick_gelu(model_name: str) -> bool:
    import open_clip

    return bool((open_clip.get_model_config(model_name) or {}).get("quick_gelu", False))


def _is_inline(clip_cfg) -> bool:
    return clip_cfg.vision_cfg is not None or clip_cfg.text_cfg is not None


def resolve_activation(clip_cfg, tag: str | None = None, weights: Union[str, Path, None] = None,
                       checkpoint_config: dict[str, Any] | None = None) -> tuple[bool, str]:
    """Whether the CLIP towers use QuickGELU (True) or GELU (False), and why, following open_clip's convention.

    In order: ``model.clip.quick_gelu`` when set (explicit override); for a vidclip checkpoint, the activation its
    recorded ``model_config`` says (or, when it recorded none, this rule applied to the ``pretrained`` it was built
    from); an OpenAI JIT archive: QuickGELU (open_clip rebuilds those with QuickGELU); an open_clip pretrained tag:
    the tag's own ``quick_gelu`` flag in open_clip's pretrained registry (``openai``, ``laion400m_*``,
    ``metaclip_*``: QuickGELU; ``laion2b_*``, ``datacomp_*``, ``commonpool_*``: GELU) or a ``-quickgelu`` name;
    otherwise the open_clip architecture config of ``model.clip.model_name`` (``ViT-B-32``: GELU,
    ``ViT-B-32-quickgelu``: QuickGELU); an inline architecture without the key: GELU (``open_clip.CLIP``'s default).

    Args:
        clip_cfg: the ``model.clip`` block.
        tag: open_clip pretrained tag the weights come from, if any.
        weights: local open_clip weight file, if any.
        checkpoint_config: the ``model_config`` recorded in a vidclip checkpoint being loaded, if any.
    """
    import open_clip

    if clip_cfg.quick_gelu is not None:
        return bool(clip_cfg.quick_gelu), "model.clip.quick_gelu"
    if checkpoint_config is not None:
        return _checkpoint_activation(clip_cfg, checkpoint_config)
    if weights is not None and Path(weights).is_file() and is_torchscript_archive(Path(weights)):
        return True, f"OpenAI JIT archive {weights}"
    if _is_inline(clip_cfg):
        return False, "inline architecture (open_clip.CLIP default)"
    name = clip_cfg.model_name
    if tag is not None:
        flag = bool(open_clip.get_pretrained_cfg(name, tag).get("quick_gelu", False))
        return flag or _architecture_quick_gelu(name), f"open_clip pretrained tag '{tag}' of {name}"
    return _architecture_quick_gelu(name), f"open_clip architecture {name}"


def _checkpoint_activation(clip_cfg, recorded: dict[str, Any]) -> tuple[bool, str]:
    """The activation a vidclip checkpoint was built with, from its recorded ``model_config``."""
    flag = (recorded.get("clip") or {}).get("quick_gelu")
    if flag is not None:
        return bool(flag), "vidclip checkpoint (recorded model.clip.quick_gelu)"
    source = recorded.get("pretrained")
    path = Path(str(source)).expanduser() if source else None
    if path is not None and path.is_file():
        quick, why = resolve_activation(clip_cfg, weights=path)
    elif source and not (path.suffix or "/" in str(source) or "\\" in str(source)):
        quick, why = resolve_activation(clip_cfg, tag=str(source))
    else:
        quick, why = resolve_activation(clip_cfg)
    return quick, f"vidclip checkpoint built from {source!r}: {why}"


def _checkpoint_model_config(file: Path) -> dict[str, Any]:
    import json

    try:
        return json.loads(read_weights_metadata(file).get("model_config") or "{}")
    except ValueError:
        return {}


# ------------------------------------------------------------------------------------------------- CLIP backbone
def build_clip(clip_cfg) -> nn.Module:
    """A randomly initialised open_clip ``CLIP``: a named architecture or an inline (tiny) one.

    ``clip_cfg.quick_gelu`` None follows the architecture (:func:`resolve_activation` without weights).
    """
    import open_clip

    quick_gelu = resolve_activation(clip_cfg)[0]
    if clip_cfg.vision_cfg is not None or clip_cfg.text_cfg is not None:
        if clip_cfg.vision_cfg is None or clip_cfg.text_cfg is None or clip_cfg.embed_dim is None:
            raise ConfigError("an inline CLIP architecture needs model.clip.embed_dim, vision_cfg and text_cfg")
        clip = open_clip.CLIP(embed_dim=int(clip_cfg.embed_dim),
                              vision_cfg=OmegaConf.to_container(clip_cfg.vision_cfg, resolve=True),
                              text_cfg=OmegaConf.to_container(clip_cfg.text_cfg, resolve=True),
                              quick_gelu=quick_gelu)
    elif clip_cfg.model_name not in open_clip.list_models():
        raise ConfigError(f"unknown open_clip architecture '{clip_cfg.model_name}' (key model.clip.model_name). "
                          "See open_clip.list_models()")
    else:
        clip = open_clip.create_model(clip_cfg.model_name, pretrained=None, quick_gelu=quick_gelu)
    init_scale = getattr(clip_cfg, "init_logit_scale", None)
    if init_scale is not None:
        if init_scale <= 0:
            raise ConfigError(f"model.clip.init_logit_scale={init_scale}: give exp(logit_scale), a positive number "
                              "(open_clip's default is 1/0.07 = 14.3)")
        with torch.no_grad():
            clip.logit_scale.fill_(math.log(init_scale))
    return clip


def _download_instructions(model_name: str, tag: str) -> str:
    return (f"To get the weights: on a machine with internet run  python -c \"import open_clip; "
            f"open_clip.create_model('{model_name}', pretrained='{tag}')\"  and copy its Hugging Face cache "
            f"(~/.cache/huggingface/hub) to this machine (or set HF_HOME to a copy), or download the weight file "
            f"(e.g. OpenAI's {model_name}.pt or open_clip_pytorch_model.bin) and pass its local path as pretrained.")


def download_open_clip_weights(clip_cfg, tag: str) -> Path:
    """Local file of open_clip weights for ``tag`` (downloaded, or found in the Hugging Face cache).

    Raises:
        CheckpointError: unknown tag, inline architecture, or the download failed (offline), with instructions.
    """
    import open_clip

    if clip_cfg.vision_cfg is not None or clip_cfg.text_cfg is not None:
        raise CheckpointError(f"pretrained='{tag}' is neither a local file nor loadable into an inline (custom) CLIP "
                              "architecture: pass an existing weight file or vidclip checkpoint of this architecture")
    name = clip_cfg.model_name
    tags = open_clip.list_pretrained_tags_by_model(name)
    if tag not in tags:
        raise CheckpointError(f"pretrained='{tag}': no such file, and not an open_clip tag of {name}. "
                              f"Known tags: {', '.join(tags) or 'none'}. Pass an existing path or one of those tags")
    pretrained_cfg = open_clip.get_pretrained_cfg(name, tag)
    try:
        path = open_clip.download_pretrained(pretrained_cfg)
    except Exception as exc:  # network errors, HF offline mode, missing cache
        raise CheckpointError(f"could not get the '{tag}' weights of {name} ({exc}). Offline? "
                              + _download_instructions(name, tag)) from exc
    if not path or not Path(path).is_file():
        raise CheckpointError(f"open_clip returned no weight file for {name} '{tag}'. " +
                              _download_instructions(name, tag))
    return Path(path)


# ------------------------------------------------------------------------------------------------------ factory
def _apply_precision(model: VideoTextModel, precision: str) -> VideoTextModel:
    if precision not in _PRECISIONS:
        raise ConfigError(f"invalid model.precision '{precision}'. Valid choices: {', '.join(_PRECISIONS)}")
    if precision != "fp32":
        _logger.info("casting every weight to %s (model.precision)", precision)
        model.to(_PRECISIONS[precision])
    return model


def create_model(name_or_config: Union[str, Path, DictConfig, ModelCfg], pretrained: Union[str, Path] | None = None,
                 **overrides: Any) -> VideoTextModel:
    """Build a ``VideoTextModel``.

    Args:
        name_or_config: an architecture name from :func:`list_models` (or a YAML path), a ``ModelCfg``, or a full
            run config (its ``model`` block is used).
        pretrained: None (random init), an open_clip tag (``"openai"``), a local open_clip weight file, or a vidclip
            checkpoint (run dir, step dir, or ``model.safetensors``). The config's ``pretrained`` field is not read
            here: callers pass ``cfg.model.pretrained`` explicitly.
        overrides: ModelCfg fields to override (e.g. ``context_length=64``).

    Raises:
        CheckpointError: missing file, unknown tag, failed download (with instructions) or weights that do not fit.
        ConfigError: invalid architecture.

    Example:
        >>> model = create_model("tiny-vifi")
        >>> feats = model.encode_text(["a red circle moves left"])
    """
    cfg = _model_cfg(name_or_config, overrides)
    source = str(pretrained) if pretrained else None
    path = Path(source).expanduser() if source else None
    vidclip_file = vidclip_weights_file(path) if path is not None and path.exists() else None
    weights = tag = None
    if source and vidclip_file is None:
        if path.exists():
            weights = path
        elif path.suffix or "/" in source or "\\" in source:
            raise CheckpointError(f"pretrained weights not found: {source}. Pass an existing file, a vidclip run or "
                                  "checkpoint directory, or an open_clip tag such as 'openai'")
        else:
            tag, weights = source, download_open_clip_weights(cfg.clip, source)
    recorded = None  # a vidclip checkpoint's model config; older files without one: the config's own source
    if vidclip_file is not None:
        recorded = _checkpoint_model_config(vidclip_file) or {"pretrained": cfg.pretrained}
    quick_gelu, why = resolve_activation(cfg.clip, tag=tag, weights=weights, checkpoint_config=recorded)
    cfg.clip.quick_gelu = quick_gelu  # the activation used, recorded with the model (model_info, checkpoints)
    _logger.info("CLIP activation: %s (%s)", "QuickGELU" if quick_gelu else "GELU", why)
    clip = build_clip(cfg.clip)
    if weights is not None:
        load_open_clip_weights(clip, weights)
        _logger.info("loaded open_clip weights %s into %s", weights, cfg.clip.model_name)
    model = VideoTextModel(clip, cfg, pretrained=source)
    if vidclip_file is not None:
        meta = load_vidclip_weights(model, vidclip_file)
        _logger.info("loaded vidclip weights from %s (arch %s, step %s)", vidclip_file, meta.get("arch"),
                     meta.get("step"))
    return _apply_precision(model, cfg.precision)
