"""Implementations of an upstream API: resolve ``fla.X.Y.name`` to an object of some package.

``ModuleImplementation('myfla', {'fla': 'myfla'})`` maps ``fla.ops.kda.chunk.chunk_kda`` to
``myfla.ops.kda.chunk.chunk_kda`` (the port mirrors the upstream module tree); with an identity
mapping it resolves the real upstream. ``MappingImplementation`` serves a fixed table of
callables (the CPU reference, planted-error variants in tests). :mod:`.registry` picks one by name.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, Mapping, Optional


class MissingSymbol(LookupError):
    """The implementation has no object for an upstream API path."""


class Implementation:
    """Base: ``resolve(api_path)`` returns the object or raises :class:`MissingSymbol`."""

    name = "impl"

    def resolve(self, api_path: str) -> Any:  # pragma: no cover - interface
        raise MissingSymbol(api_path)

    def has(self, api_path: str) -> bool:
        try:
            self.resolve(api_path)
        except MissingSymbol:
            return False
        return True

    def describe(self) -> str:
        return self.name


class ModuleImplementation(Implementation):
    """Resolve API paths by importing a package whose module tree mirrors the upstream's."""

    def __init__(self, name: str, prefix_map: Optional[Mapping[str, str]] = None):
        self.name = name
        self.prefix_map = dict(prefix_map or {})
        self._cache: Dict[str, Any] = {}

    def translate(self, api_path: str) -> str:
        head, _, rest = api_path.partition(".")
        target = self.prefix_map.get(head, head)
        return f"{target}.{rest}" if rest else target

    def resolve(self, api_path: str) -> Any:
        if api_path in self._cache:
            return self._cache[api_path]
        path = self.translate(api_path)
        parts = path.split(".")
        errors = []
        # Try the longest importable module prefix, then walk attributes (the defining module
        # first, so ``a.b.c.fn`` works whether or not ``a.b`` re-exports ``fn``).
        for cut in range(len(parts) - 1, 0, -1):
            mod_name = ".".join(parts[:cut])
            try:
                obj: Any = importlib.import_module(mod_name)
            except ModuleNotFoundError as exc:
                errors.append(f"{mod_name}: {exc}")
                continue
            except Exception as exc:  # an import that breaks is reported, not swallowed silently
                raise MissingSymbol(f"{path}: importing {mod_name} failed: {type(exc).__name__}: {exc}") from exc
            try:
                for attr in parts[cut:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                errors.append(f"{mod_name} has no attribute path {'.'.join(parts[cut:])}")
                continue
            self._cache[api_path] = obj
            return obj
        raise MissingSymbol(f"{path} not found ({'; '.join(errors[:2])})")

    def describe(self) -> str:
        maps = ", ".join(f"{k}->{v}" for k, v in self.prefix_map.items())
        return f"{self.name} ({maps})" if maps else self.name


class MappingImplementation(Implementation):
    """A fixed table ``api_path -> object`` (or a zero-argument factory, built on first use)."""

    def __init__(self, name: str, table: Mapping[str, Any], lazy: bool = False):
        self.name = name
        self._table = dict(table)
        self._lazy = lazy
        self._built: Dict[str, Any] = {}

    def resolve(self, api_path: str) -> Any:
        if api_path in self._built:
            return self._built[api_path]
        if api_path not in self._table:
            raise MissingSymbol(f"{self.name} has no {api_path}")
        obj = self._table[api_path]
        if self._lazy and callable(obj) and getattr(obj, "_portaudit_factory", False):
            obj = obj()
        self._built[api_path] = obj
        return obj

    def with_overrides(self, name: str, overrides: Mapping[str, Any]) -> "MappingImplementation":
        """A copy whose entries in ``overrides`` replace the originals (planted errors, fixes)."""
        table = {k: self.resolve(k) for k in self._table}
        table.update(overrides)
        return MappingImplementation(name, table)

    def paths(self):
        return sorted(self._table)


def factory(fn: Callable[[], Any]) -> Callable[[], Any]:
    """Mark a zero-argument function as a lazy factory for :class:`MappingImplementation`."""
    fn._portaudit_factory = True  # type: ignore[attr-defined]
    return fn
