"""Tiny name -> factory registries for the parts that come in variants (heads, temporal modules, samplers...)."""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List

from .errors import ConfigError

_logger = logging.getLogger(__name__)


class Registry:
    """A named collection of factories: ``@REG.register("name")`` then ``REG.create("name", **kwargs)``."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: Dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def decorator(obj: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._items and self._items[name] is not obj:
                _logger.warning("%s '%s' registered twice; the later definition wins", self.kind, name)
            self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._items:
            raise ConfigError(f"unknown {self.kind} '{name}'. Available: {', '.join(self.names())}")
        return self._items[name]

    def create(self, name: str, **kwargs: Any) -> Any:
        return self.get(name)(**kwargs)

    def names(self) -> List[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items


HEADS = Registry("head")
TEMPORAL = Registry("temporal module")
SAMPLERS = Registry("frame sampler")
POSTPROCESSORS = Registry("post-processor")
