"""Files shipped inside the package: the demo config and its recipes, and the reference facts of prepare-data.

``configs/demo.yaml``, ``configs/synthetic_tiny_*.yaml``, ``configs/data/synthetic.yaml`` and
``data_lists/expected.json`` at the top of a checkout are symlinks to the files here, the single source, so a
non-editable install (``pip install .``) finds them without the checkout.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..errors import ConfigError


def packaged_path(*parts: str) -> Path:
    """Where a packaged file lives (it may be absent in a broken install: see :func:`resource_path`)."""
    node = resources.files(__name__)
    for part in parts:
        node = node.joinpath(part)
    return Path(str(node))


def resource_path(*parts: str) -> Path:
    """Filesystem path of a packaged file, e.g. ``resource_path("configs", "demo.yaml")``.

    Raises:
        ConfigError: no such packaged file (the message lists what ``configs/`` holds).
    """
    path = packaged_path(*parts)
    if not path.exists():
        shipped = sorted(p.name for p in config_dir().glob("*.yaml"))
        raise ConfigError(f"no packaged resource {'/'.join(parts)} in {Path(__file__).parent}; "
                          f"packaged configs: {', '.join(shipped)}. Reinstall vidclip if files are missing")
    return path


def config_dir() -> Path:
    """Folder of the packaged configs (demo.yaml and the synthetic_tiny_*.yaml recipes)."""
    return packaged_path("configs")
