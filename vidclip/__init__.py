"""vidclip: text-video retrieval on CLIP.

Public API: ``create_model``, ``list_models``, ``load_config``, ``open_video``, ``retrieval_metrics``.
"""
import logging

from .config import load_config, save_config
from .errors import CheckpointError, ConfigError, DataListError, NonFiniteError, VideoDecodeError, VidclipError

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())


def create_model(*args, **kwargs):
    """See :func:`vidclip.models.factory.create_model`."""
    from .models.factory import create_model as _create_model

    return _create_model(*args, **kwargs)


def list_models():
    """See :func:`vidclip.models.factory.list_models`."""
    from .models.factory import list_models as _list_models

    return _list_models()


__all__ = [
    "create_model", "list_models", "load_config", "save_config", "VidclipError", "ConfigError", "VideoDecodeError",
    "DataListError", "CheckpointError", "NonFiniteError", "__version__",
]
