"""One generic registry (datasets, models, methods): a decorator to add, a lookup that suggests."""
from __future__ import annotations

import difflib
import importlib
from typing import Callable, Generic, TypeVar

from .errors import HarnessError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, *aliases: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            for key in (name, *aliases):
                key = normalize(key)
                if key in self._items and self._items[key] is not obj:
                    raise ValueError(f"{self.kind} {key!r} is registered twice")
                self._items[key] = obj
            return obj

        return deco

    def replace(self, name: str, obj: T) -> T:
        """Register or redefine `name`: for entries a suite defines (its own datasets), which a later load of
        the suite (another profile, other overrides) may define differently."""
        self._items[normalize(name)] = obj
        return obj

    def get(self, name: str) -> T:
        key = normalize(name)
        if key not in self._items:
            raise HarnessError(unknown(self.kind, name, self.names()))
        return self._items[key]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return normalize(name) in self._items

    def items(self):
        return sorted(self._items.items())


def lazy(path: str) -> Callable:
    """A builder that imports "module:function" on its first call: for registered parts whose imports are slow."""
    module, attr = path.split(":")

    def build(*args, **kwargs):
        return getattr(importlib.import_module(module), attr)(*args, **kwargs)

    build.__name__ = build.__qualname__ = attr
    build.__doc__ = f"{attr} from {module} (imported when first built)"
    return build


def normalize(name: str) -> str:
    return str(name).strip().lower().replace("-", "_")


def unknown(kind: str, name: str, choices: list[str]) -> str:
    choices = [str(c) for c in choices]  # names read from YAML can be numbers (a profile `0:`)
    close = difflib.get_close_matches(normalize(name), choices, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else f"; choose from {', '.join(choices)}"
    return f"unknown {kind} {name!r}{hint}"


DATASETS: Registry = Registry("dataset")
MODELS: Registry = Registry("model")
METHODS: Registry = Registry("method")
