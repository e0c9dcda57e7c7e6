"""The kind of a class, resolved through its base classes wherever they are defined in the tree.

The indexer decides ``nn.Module`` / ``autograd.Function`` from a base's spelling and from bases in
the same module. A port often derives from a base defined elsewhere (vLLM's ``CustomOp``, itself
an ``nn.Module``; transformers' ``GradientCheckpointingLayer``): :func:`effective_kind` follows
each base through the module's imports (re-exports included) to its definition anywhere in the
same tree, recursively. A base that leaves the tree (an installed package the tree does not hold)
cannot be checked statically: it is reported as unresolved (PA106), never as a wrong kind.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from portaudit.static.index.model import AUTOGRAD, CLASS, CLASS_KINDS, NN_MODULE, Definition, ModuleInfo

_KNOWN_OUTSIDE = {
    "torch.nn.Module": NN_MODULE, "torch.nn.modules.module.Module": NN_MODULE,
    "torch.autograd.Function": AUTOGRAD, "torch.autograd.function.Function": AUTOGRAD,
}
# outside bases that settle nothing either way (plain Python)
_NEUTRAL_OUTSIDE = ("object", "abc.ABC", "typing.Generic", "typing.NamedTuple", "enum.Enum",
                    "typing.Protocol", "dict", "list", "tuple", "Exception")
_MAX_DEPTH = 8


@dataclass
class KindResolution:
    kind: str
    unresolved: list[str] = field(default_factory=list)   # bases that lead outside the tree


def _outside_name(info: ModuleInfo, base: str) -> str:
    """A base's dotted origin outside the module, as far as the module's imports tell."""
    head, _, rest = base.partition(".")
    ref = info.imports.get(head)
    if ref is None:
        return base
    origin = ref.module if ref.name is None else f"{ref.module}.{ref.name}"
    return f"{origin}.{rest}" if rest else origin


def effective_kind(index, info: ModuleInfo, d: Definition, depth: int = 0) -> KindResolution:
    """``d``'s kind with its bases followed through ``index`` (a TreeIndex)."""
    if d.kind != CLASS or depth > _MAX_DEPTH:
        return KindResolution(d.kind)
    unresolved: list[str] = []
    for base in d.bases:
        local = info.definitions.get(base) if "." not in base else None
        if local is not None and local.kind in CLASS_KINDS:
            sub = effective_kind(index, info, local, depth + 1)
        else:   # an import, or a module-level alias that is (also) imported
            origin = _outside_name(info, base)
            if origin in _KNOWN_OUTSIDE:
                return KindResolution(_KNOWN_OUTSIDE[origin])
            if origin in _NEUTRAL_OUTSIDE or base in _NEUTRAL_OUTSIDE:
                continue
            found = index.resolve(origin) if index is not None and "." in origin else None
            if found is None:
                unresolved.append(base if base == origin else f"{base} ({origin})")
                continue
            sub = effective_kind(index, found.module, found.definition, depth + 1)
        if sub.kind in (NN_MODULE, AUTOGRAD):
            return KindResolution(sub.kind)
        unresolved.extend(sub.unresolved)
    return KindResolution(CLASS, unresolved)
