"""Implementations of an upstream API: resolve ``fla.X.Y.name`` to an object of some package.

``ModuleImplementation('myfla', {'fla': 'myfla'})`` maps ``fla.ops.kda.chunk.chunk_kda`` to
``myfla.ops.kda.chunk.chunk_kda`` (the port mirrors the upstream module tree); with an identity
mapping it resolves the real upstream. ``MappingImplementation`` serves a fixed table of
callables (the CPU reference, planted-error variants in tests). An implementation described by
a YAML file (renamed callables, argument adapters) is built by :mod:`.impl_spec`; :mod:`.registry`
picks one by name or file.

Besides resolving names, an implementation states what it cannot do, so that a check needing it
is reported ``n/a`` instead of failing: ``float64_gap(api)`` (it does not compute in float64),
and the :class:`NotApplicable` its adapters raise for an argument value it has no counterpart for.
``precision`` names the tolerance profile its fp32 arithmetic needs (``fp32``, or ``tf32`` for
GPU kernels whose dots round to TF32).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, Iterable, Mapping, Optional


class MissingSymbol(LookupError):
    """The implementation has no object for an upstream API path."""


class NotApplicable(Exception):
    """A check asked for a capability the implementation declares it does not have (no varlen, no
    float64, no backward...). Reported as status ``n/a`` with this message, never as a failure."""


class Implementation:
    """Base: ``resolve(api_path)`` returns the object or raises :class:`MissingSymbol`."""

    name = "impl"
    precision = "fp32"
    # False: the implementation provides only the API paths it declares (a third-party library
    # seen through fla's API); checks of other paths are left out and listed, not failed.
    mirrors_upstream = True

    def float64_gap(self, api_path: str) -> Optional[str]:
        """Why ``api_path`` does not compute in float64, or None when it does."""
        return None

    def provides(self, api_path: str) -> bool:
        """Whether the implementation claims ``api_path`` at all (see ``mirrors_upstream``)."""
        return True

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

    def __init__(self, name: str, prefix_map: Optional[Mapping[str, str]] = None, precision: str = "fp32",
                 no_float64: Optional[str] = None, float64_paths: Iterable[str] = ()):
        self.name = name
        self.prefix_map = dict(prefix_map or {})
        self.precision = precision
        self._no_float64 = no_float64            # reason, when the implementation takes no float64
        self._float64_paths = set(float64_paths)  # ...except these paths (implemented in torch)
        self._cache: Dict[str, Any] = {}

    def float64_gap(self, api_path: str) -> Optional[str]:
        if self._no_float64 and api_path not in self._float64_paths:
            return self._no_float64
        return None

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
