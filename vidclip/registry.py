"""Name -> factory registries: the ONLY place the name of a variant (head, sampler, reader...) lives.

One registry per kind. ``@REG.register("name", **info)`` records a factory (class or function) and optional facts
callers need (e.g. ``deterministic=False`` for a random frame sampler, ``needs_query_bank=True`` for a
post-processor); ``REG.info("name")`` returns them, ``REG.names(**where)`` filters on them. A fact not given at
registration falls back to the attribute of the same name on the factory, so a class may declare it instead.

A registry may name the modules holding its built-in entries (``builtins``): they are imported on the first lookup,
so that ``vidclip.config`` can list valid names without importing heads, data or models itself. A user module that
registers its own entry (``@SAMPLERS.register("mine")``) makes the name selectable in YAML with no edit to vidclip.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from importlib import import_module
from typing import Any, Union

from .errors import ConfigError

_logger = logging.getLogger(__name__)


class Registry:
    """A named collection of factories: ``@REG.register("name")`` then ``REG.create("name", **kwargs)``.

    Args:
        kind: what the entries are, for error messages ("frame sampler").
        builtins: module(s) that register the built-in entries, imported lazily on the first lookup.
    """

    def __init__(self, kind: str, builtins: Union[str, Sequence[str]] = ()):
        self.kind = kind
        self._builtins = (builtins,) if isinstance(builtins, str) else tuple(builtins)
        self._loaded = not self._builtins
        self._items: dict[str, Callable[..., Any]] = {}
        self._info: dict[str, dict[str, Any]] = {}

    def register(self, name: str, **info: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator recording ``obj`` under ``name`` with the facts ``info``; a second registration wins."""

        def decorator(obj: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._items and self._items[name] is not obj:
                _logger.warning("%s '%s' registered twice; the later definition wins", self.kind, name)
            self._items[name] = obj
            self._info[name] = dict(info)
            return obj

        return decorator

    def unregister(self, name: str) -> None:
        """Forget ``name`` (a test or a plug-in removing its own entry); unknown names are ignored."""
        self._items.pop(name, None)
        self._info.pop(name, None)

    def _load_builtins(self) -> None:
        if self._loaded:
            return
        self._loaded = True  # set first: the imported modules register into this registry
        for module in self._builtins:
            import_module(module)

    def get(self, name: str) -> Callable[..., Any]:
        """The factory registered as ``name``; an unknown name raises ``ConfigError`` listing the valid ones."""
        self._load_builtins()
        if name not in self._items:
            raise ConfigError(f"unknown {self.kind} '{name}'. Available: {', '.join(self.names())}")
        return self._items[name]

    def create(self, name: str, **kwargs: Any) -> Any:
        return self.get(name)(**kwargs)

    def info(self, name: str, key: str, default: Any = None) -> Any:
        """Fact ``key`` of entry ``name``: given at registration, else the factory's attribute, else ``default``."""
        obj = self.get(name)
        return self._info[name].get(key, getattr(obj, key, default))

    def names(self, **where: Any) -> list[str]:
        """Sorted names, only those whose facts equal every ``where`` item (e.g. ``deterministic=True``)."""
        self._load_builtins()
        return sorted(n for n in self._items if all(self.info(n, k, None) == v for k, v in where.items()))

    def __contains__(self, name: str) -> bool:
        self._load_builtins()
        return name in self._items

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._items)} entries)"


HEADS = Registry("head", builtins="vidclip.heads")
TEMPORAL = Registry("temporal module", builtins="vidclip.models.temporal")
SAMPLERS = Registry("frame sampler", builtins="vidclip.data.samplers")
READERS = Registry("video backend", builtins="vidclip.data.readers")
POSTPROCESSORS = Registry("post-processor", builtins="vidclip.postprocess")
DATASETS = Registry("dataset converter", builtins="vidclip.data.prepare")
