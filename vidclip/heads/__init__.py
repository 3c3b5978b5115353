"""Alignment heads. Importing this package registers every head in ``vidclip.registry.HEADS``."""
from importlib import import_module

from ..registry import HEADS
from .base import Features, Head, TextEncoderOutput, VideoEncoderOutput

for _name in ("vifi", "glscl", "ucofia", "norton"):
    try:
        import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as _exc:  # a head module not written yet must not break the others
        if _exc.name != f"{__name__}.{_name}":
            raise


def create_head(name: str, **kwargs) -> Head:
    """Build a registered head; unknown names raise ``ConfigError`` listing the available heads."""
    return HEADS.create(name, **kwargs)


def list_heads():
    return HEADS.names()


__all__ = ["Features", "Head", "TextEncoderOutput", "VideoEncoderOutput", "create_head", "list_heads", "HEADS"]
