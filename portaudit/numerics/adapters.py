"""Declarative argument adapters: call a port's callable the way the upstream's API is called.

A check calls ``chunk_gated_delta_rule(q=..., k=..., cu_seqlens=None, ...)``; a port may spell it
``torch_chunk_gated_delta_rule(query, key, ...)`` with another layout. An adapter binds the call
to the upstream's signature (read from the upstream source, :func:`.upstream_code.upstream_signature`)
and applies per-argument rules, each plain data from an implementation file (:mod:`.impl_spec`):

- ``to``: the port's name for the argument (a rename; passing by keyword makes any reorder moot);
- ``permute``: the port's axis order for a tensor argument (``[0, 2, 1]``: ``[B, T, D] -> [B, D, T]``);
- ``repeat``: ``{dim, like}`` repeats a tensor's heads to match another argument (GVA -> no GVA);
- ``absent``: the port has no such parameter. The argument is dropped while it has the upstream
  default, or, when ``accepts`` lists the values the port's fixed behaviour equals, while it has
  one of those (then an upstream default outside the list is not applicable either); any other
  value raises :class:`~.impl.NotApplicable` (the check is ``n/a``, not failed);
- ``required``: the port cannot do without it: ``None`` raises :class:`~.impl.NotApplicable`;

plus ``extra`` (fixed keyword arguments for the port) and ``returns`` (which port output is each
upstream output, with its axis order, or ``absent``). Nothing here evaluates text: values are YAML
scalars and the callables are imported by dotted name. Every upstream parameter must be accounted
for when the adapter is built (:meth:`CallAdapter.validate`): a parameter that would silently
vanish into the port's ``**kwargs`` is a usage error, not a wrong number.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from portaudit.errors import UsageError
from portaudit.numerics.impl import NotApplicable
from portaudit.numerics.upstream_code import SourceDefault

P = inspect.Parameter
_NAMED = (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY)


@dataclass
class ArgRule:
    """How one upstream parameter reaches the port (see the module docstring)."""
    name: str
    to: Optional[str] = None
    permute: Optional[Tuple[int, ...]] = None
    repeat: Optional[Tuple[int, str]] = None          # (dim, the upstream argument to match)
    absent: Optional[str] = None                      # reason the port has no such parameter
    accepts: Tuple[Any, ...] = ()                     # values the port's fixed behaviour equals
    required: Optional[str] = None                    # reason the port cannot take None
    where: str = ""                                   # file:line:col of the rule, for errors

    @property
    def target(self) -> str:
        return self.to or self.name


@dataclass
class OutputRule:
    """Upstream output ``i`` is port output ``source`` (axes permuted), or absent (None)."""
    source: Optional[int] = None
    permute: Optional[Tuple[int, ...]] = None
    absent: Optional[str] = None


@dataclass
class AdapterSpec:
    arguments: Dict[str, ArgRule] = field(default_factory=dict)
    extra: Dict[str, Any] = field(default_factory=dict)
    returns: Optional[Union[OutputRule, List[OutputRule]]] = None
    where: str = ""


def _same(value: Any, expected: Any) -> bool:
    """Scalar equality as the upstream's default compares (no tensors, bool is not int)."""
    if isinstance(expected, SourceDefault) or expected is P.empty or isinstance(value, torch.Tensor):
        return False
    if value is None or expected is None:
        return value is None and expected is None
    if isinstance(value, bool) != isinstance(expected, bool):
        return False
    try:
        return bool(value == expected)
    except Exception:
        return False


def _brief(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return repr(value)


def _permute(value: Any, axes: Tuple[int, ...], what: str) -> Any:
    if not isinstance(value, torch.Tensor):
        return value
    if value.dim() != len(axes):
        raise ValueError(f"{what}: permute {list(axes)} needs a {len(axes)}-d tensor, got shape {tuple(value.shape)}")
    return value.permute(*axes)


class CallAdapter:
    """Turns a call made with the upstream's signature into the port's call, and its result back."""

    def __init__(self, label: str, impl_name: str, upstream: inspect.Signature, port: Optional[inspect.Signature],
                 spec: AdapterSpec, backward_gap: Optional[str] = None):
        self.label = label                    # "fla.X.f -> port.g" (errors and n/a messages)
        self.impl_name = impl_name
        self.upstream = upstream
        self.port = port
        self.spec = spec
        self.backward_gap = backward_gap
        self.rules = {name: spec.arguments.get(name, ArgRule(name)) for name, p in upstream.parameters.items()
                      if p.kind in _NAMED}
        self.validate()

    @property
    def op(self) -> str:
        return self.label.split(" ", 1)[0].rsplit(".", 1)[-1]

    def _fail(self, where: str, message: str) -> None:
        raise UsageError(f"{where or self.spec.where}: {self.label}: {message}")

    def validate(self) -> None:
        """Every upstream parameter reaches a named port parameter or is declared absent; every
        port parameter without a default gets a value; ``extra`` names port parameters."""
        ups = self.upstream.parameters
        if any(p.kind == P.VAR_POSITIONAL for p in ups.values()):
            self._fail("", "upstream signatures with *args cannot be adapted")
        for name, rule in self.spec.arguments.items():
            if name not in ups or ups[name].kind not in _NAMED:
                self._fail(rule.where, f"'{name}' is not a parameter of the upstream signature {self.upstream}")
            if rule.repeat and rule.repeat[1] not in ups:
                self._fail(rule.where, f"repeat.like '{rule.repeat[1]}' is not an upstream parameter")
            if rule.accepts and not rule.absent:
                self._fail(rule.where, "'accepts' only goes with 'absent' (the values the port behaves as)")
        if self.port is None:       # not introspectable: nothing more to check statically
            return
        named = {n: p for n, p in self.port.parameters.items() if p.kind in _NAMED}
        has_var_kw = any(p.kind == P.VAR_KEYWORD for p in self.port.parameters.values())
        targets: Dict[str, str] = {}
        for name, rule in self.rules.items():
            if rule.absent:
                continue
            if rule.target not in named:
                swallow = (" (its **kwargs would swallow it silently)" if has_var_kw else "")
                self._fail(rule.where, f"upstream parameter '{name}' has no port parameter '{rule.target}' in "
                                       f"{self.port}{swallow}; map it (`{name}: PORT_NAME`) or declare it "
                                       f"absent (`{name}: {{absent: REASON}}`)")
            if rule.target in targets:
                self._fail(rule.where, f"'{name}' and '{targets[rule.target]}' both map to port parameter "
                                       f"'{rule.target}'")
            targets[rule.target] = name
            if named[rule.target].default is P.empty and not rule.required:
                default = self.upstream.parameters[name].default
                if isinstance(default, SourceDefault):
                    self._fail(rule.where, f"port parameter '{rule.target}' has no default and the upstream "
                                           f"default of '{name}' ({default}) is not a literal; pass it with extra")
        for key in self.spec.extra:
            if key not in named:
                self._fail(self.spec.where, f"extra '{key}' is not a named parameter of the port {self.port}")
            if key in targets:
                self._fail(self.spec.where, f"extra '{key}' is also mapped from upstream '{targets[key]}'")
        for pname, p in named.items():
            if p.default is P.empty and pname not in targets and pname not in self.spec.extra:
                self._fail("", f"port parameter '{pname}' has no default and nothing maps to it; map an upstream "
                               f"parameter to it or give it under extra")

    # -- the call ----------------------------------------------------------------------------
    def _na(self, message: str) -> NotApplicable:
        return NotApplicable(f"{self.impl_name}'s {self.op} has no {message}")

    def to_port(self, args: Sequence[Any], kwargs: Dict[str, Any]) -> Tuple[List[Any], Dict[str, Any]]:
        bound = self.upstream.bind(*args, **kwargs)
        given = {n: v for n, v in bound.arguments.items() if n in self.rules}   # upstream **kwargs: dropped
        if self.backward_gap and torch.is_grad_enabled() and any(
                isinstance(v, torch.Tensor) and v.requires_grad for v in given.values()):
            raise NotApplicable(f"{self.impl_name} has no backward for {self.op}: {self.backward_gap}")
        out: Dict[str, Any] = {}
        for name, rule in self.rules.items():
            default = self.upstream.parameters[name].default
            if name not in given:
                if rule.absent and rule.accepts and not any(_same(default, a) for a in rule.accepts):
                    raise self._na(f"`{name}` ({rule.absent}); this case leaves {name} at the upstream "
                                   f"default {default!r}")
                if rule.required and not rule.absent:
                    if default is None:
                        raise NotApplicable(f"{self.impl_name}'s {self.op} needs `{name}` ({rule.required}); "
                                            f"this case leaves it at None")
                if not rule.absent and self.port is not None:
                    target = self.port.parameters.get(rule.target)
                    if target is not None and target.default is P.empty and default is not P.empty:
                        out[rule.target] = default       # the port insists; the upstream default is what was meant
                continue
            value = given[name]
            if rule.absent:
                if any(_same(value, a) for a in rule.accepts) if rule.accepts else _same(value, default):
                    continue
                raise self._na(f"`{name}` ({rule.absent}); this case sets {name} to {_brief(value)}")
            if value is None and rule.required:
                raise NotApplicable(f"{self.impl_name}'s {self.op} needs `{name}` ({rule.required}); "
                                    f"this case passes None")
            if rule.repeat and isinstance(value, torch.Tensor):
                dim, like = rule.repeat
                other = given.get(like)
                if isinstance(other, torch.Tensor) and other.shape[dim] != value.shape[dim]:
                    if other.shape[dim] % value.shape[dim]:
                        raise ValueError(f"{self.label}: cannot repeat {name} ({value.shape[dim]} heads) to "
                                         f"{like}'s {other.shape[dim]}")
                    value = value.repeat_interleave(other.shape[dim] // value.shape[dim], dim=dim)
            if rule.permute:
                value = _permute(value, rule.permute, f"{self.label}: argument {name}")
            out[rule.target] = value
        out.update(self.spec.extra)
        positional: List[Any] = []
        if self.port is not None:
            for pname, p in self.port.parameters.items():
                if p.kind == P.POSITIONAL_ONLY and pname in out:
                    positional.append(out.pop(pname))
        return positional, out

    def from_port(self, result: Any) -> Any:
        spec = self.spec.returns
        if spec is None:
            return result
        outs = tuple(result) if isinstance(result, (tuple, list)) else (result,)

        def one(rule: OutputRule, i: int) -> Any:
            if rule.absent:
                return None
            if rule.source is None or rule.source >= len(outs):
                raise ValueError(f"{self.label}: returns[{i}] reads port output {rule.source}, but the port "
                                 f"returned {len(outs)}")
            value = outs[rule.source]
            return _permute(value, rule.permute, f"{self.label}: output {i}") if rule.permute else value
        if isinstance(spec, list):
            return tuple(one(r, i) for i, r in enumerate(spec))
        return one(spec, 0)


def adapt_function(fn: Callable[..., Any], adapter: CallAdapter) -> Callable[..., Any]:
    """``fn`` called through ``adapter`` (no functools.wraps: the wrapper has the upstream's API)."""
    def adapted(*args, **kwargs):
        a, kw = adapter.to_port(args, kwargs)
        return adapter.from_port(fn(*a, **kw))
    adapted.__name__ = getattr(fn, "__name__", "adapted")
    adapted.__qualname__ = getattr(fn, "__qualname__", adapted.__name__)
    adapted.__module__ = getattr(fn, "__module__", __name__)
    adapted.__doc__ = f"{adapter.label} (argument adapter)"
    return adapted


def adapt_class(cls: type, init: CallAdapter, forward: CallAdapter) -> type:
    """A subclass of the port's class whose constructor and ``forward`` take the upstream's
    arguments; parameters, buffers and ``state_dict`` stay the port's own."""
    def __init__(self, *args, **kwargs):
        a, kw = init.to_port(args, kwargs)
        cls.__init__(self, *a, **kw)

    def forward_(self, *args, **kwargs):
        a, kw = forward.to_port(args, kwargs)
        return forward.from_port(cls.forward(self, *a, **kw))
    return type(cls.__name__, (cls,), {"__init__": __init__, "forward": forward_, "__module__": cls.__module__,
                                       "__qualname__": cls.__qualname__,
                                       "__doc__": f"{forward.label} (argument adapter)"})
