"""Models: CLIP towers for frames and text, temporal modules, and the assembled ``VideoTextModel``.

Names are imported lazily so that importing one module (e.g. ``vidclip.models.temporal``) does not build the rest.
"""
from importlib import import_module
from typing import Any

_EXPORTS = {
    "create_model": "factory", "list_models": "factory", "build_clip": "factory",
    "VideoTextModel": "video_text_model", "TextEncoder": "text_encoder", "build_temporal": "temporal",
    "SequenceTransformer": "temporal", "FrameEncoder": "frame_encoder", "build_frame_encoder": "frame_encoder",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
