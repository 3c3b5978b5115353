"""Alignment heads. Importing this package imports every module in it, and each registers its head in
``vidclip.registry.HEADS``: a new head is one new file here with ``@HEADS.register("name")`` (no list to edit)."""
import pkgutil
from importlib import import_module

from ..registry import HEADS
from .base import Features, Head, TextEncoderOutput, VideoEncoderOutput

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        import_module(f"{__name__}.{_module.name}")


def create_head(name: str, **kwargs) -> Head:
    """Build a registered head; unknown names raise ``ConfigError`` listing the available heads."""
    return HEADS.create(name, **kwargs)


def list_heads():
    return HEADS.names()


__all__ = ["Features", "Head", "TextEncoderOutput", "VideoEncoderOutput", "create_head", "list_heads", "HEADS"]
