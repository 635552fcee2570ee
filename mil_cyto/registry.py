"""A tiny name -> factory registry, the pattern of timm's ``register_model``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from mil_cyto.errors import MilCytoError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories; ``create(name, **kwargs)`` builds one."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._factories[name] = factory
            return factory

        return decorator

    def names(self) -> list[str]:
        return sorted(self._factories)

    def __contains__(self, name: str) -> bool:
        return name in self._factories

    def create(self, name: str, **kwargs: object) -> T:
        if name not in self._factories:
            raise MilCytoError(
                f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}"
            )
        return self._factories[name](**kwargs)
