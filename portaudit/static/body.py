"""Body comparison: a definition in canonical form, its fingerprint, and the diff of two of them.

The public API (used by ``check``'s body rule, ``provenance``, the port-side ``scaffold``, and
meant for ``drift``)::

    scope = Scope.of(module_info, tree_index)              # how this module spells names
    a = canonical(up_def, up_scope)                        # upstream side, renames applied
    b = canonical(port_def, port_scope)
    a.fingerprint == b.fingerprint                         # same body after normalisation
    body_diff(a, b, "upstream ...", "port ...")            # unified diff of the canonical text
    similarity(a, b)                                       # 0..1, matching canonical lines

The input is the definition's normalised source (:mod:`portaudit.static.index.body_source`:
docstrings, comments and formatting already gone). Canonicalisation then makes import spelling
irrelevant and applies declared renames:

* a name imported from outside the tree is written as its full dotted origin
  (``import triton.language as tl`` + ``tl.exp`` -> ``triton.language.exp``; ``F.relu`` ->
  ``torch.nn.functional.relu``), so an alias never matters but a different origin does;
* a name imported from inside the tree (the package itself: ``from .op import exp``,
  ``from fla.ops.utils.op import exp``) is written as the imported name (``exp``), so where a copy
  keeps its helpers does not matter, only which helper it calls; a tree module that merely
  re-exports an outside name (vLLM's ``vllm.triton_utils`` re-exporting ``triton.language as tl``)
  is looked through when a tree index is given;
* ``renames`` (upstream name -> port name: identifiers, parameters, attributes, and the names of
  renamed definitions) are applied to the upstream side before comparing, the way transformers'
  ``# Copied from ... with A->B`` works.

Drift (issue 11) should call :func:`canonical` on both releases with ``Scope.of(info, index)`` and
no renames, compare ``fingerprint`` for "body changed", and use :func:`body_diff` for the report.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import re
from dataclasses import dataclass, field
from typing import Mapping, Optional

from portaudit.static.index.model import Definition, ImportRef, ModuleInfo
from portaudit.static.unparse import unparse

_MAX_SHIM_HOPS = 5


@dataclass(frozen=True)
class Canonical:
    """One definition in canonical form."""
    text: str
    fingerprint: str          # sha256 of ``text``
    used_renames: frozenset = frozenset()   # the rename keys that changed something

    @property
    def lines(self) -> list[str]:
        return self.text.splitlines()


@dataclass
class Scope:
    """How names are written in one module: its imports, its own definitions, which imports are
    inside the tree, and (optionally) the tree to look through re-export shims."""
    module: str
    imports: Mapping[str, ImportRef]
    local_names: frozenset
    internal_tops: frozenset                 # top-level packages that belong to the tree
    index: object = None                     # a TreeIndex, for shim look-through (optional)
    _shims: dict = field(default_factory=dict)
    looked: set = field(default_factory=set)   # aliases whose spelling needed other tree modules

    @classmethod
    def of(cls, info: ModuleInfo, index=None, internal_tops: Optional[set] = None) -> "Scope":
        tops = set(internal_tops or ())
        tops.add(info.module.split(".")[0])
        if index is not None:
            for ref in info.imports.values():
                top = ref.module.split(".")[0]
                if top and index.has_module(top):
                    tops.add(top)
        return cls(info.module, dict(info.imports), frozenset(n for n in info.definitions if "." not in n),
                   frozenset(tops), index)

    @property
    def imports_key(self) -> tuple:
        """What the canonical spelling depends on (for caches): the imports and the tree's tops."""
        return (tuple(sorted((k, v.module, v.name) for k, v in self.imports.items())),
                tuple(sorted(self.internal_tops)))

    def is_internal(self, module: str) -> bool:
        return module.split(".")[0] in self.internal_tops

    def spelled(self, name: str) -> Optional[str]:
        """The canonical spelling of a module-level name, or None when the name is not global."""
        ref = self.imports.get(name)
        if ref is None:
            return name if name in self.local_names else None
        if not self.is_internal(ref.module):
            return ref.module if ref.name is None else f"{ref.module}.{ref.name}"
        if ref.name is None:                       # `import pkg.mod as m`: the module's own name
            return ref.module.rsplit(".", 1)[-1]
        if self.index is not None:
            self.looked.add(name)
        outside = self._look_through(ref.module, ref.name)
        return outside or ref.name

    def _look_through(self, module: str, name: str) -> Optional[str]:
        """The outside origin of a tree module's re-export of ``name``, if that is what it is."""
        if self.index is None:
            return None
        key = (module, name)
        if key in self._shims:
            return self._shims[key]
        found = None
        for _ in range(_MAX_SHIM_HOPS):
            info = self.index.module(module)
            if info is None:
                break
            ref = info.imports.get(name)
            if ref is None:
                break
            if not self.is_internal(ref.module):
                found = ref.module if ref.name is None else f"{ref.module}.{ref.name}"
                break
            if ref.name is None:
                break
            module, name = ref.module, ref.name
        self._shims[key] = found
        return found


_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def canonical_text(body_src: str, scope: Scope, params: tuple = (),
                   renames: Optional[Mapping[str, str]] = None) -> tuple[str, frozenset]:
    """(canonical text, the rename keys used) of a normalised body; ``params`` are local names.

    One walk collects what the body binds locally (assignments, loop and with targets, nested defs,
    imports, except names) and renames identifiers, parameters and attributes; then every name it
    reads but does not bind gets its canonical spelling (:meth:`Scope.spelled`) and the renames."""
    tree = ast.parse(body_src)
    renames = renames or {}
    used: set[str] = set()
    bound: set[str] = set(params)
    loads: list[ast.Name] = []

    def rename(name: str) -> str:
        new = renames.get(name)
        if new is None:
            return name
        used.add(name)
        return new

    for node in ast.walk(tree):
        kind = type(node)
        if kind is ast.Name:
            if type(node.ctx) is ast.Load:
                loads.append(node)
            else:
                bound.add(node.id)
                node.id = rename(node.id)
        elif kind is ast.Attribute:
            node.attr = rename(node.attr)
        elif kind is ast.arg:
            bound.add(node.arg)
            node.arg = rename(node.arg)
        elif kind is ast.keyword:
            if node.arg is not None:
                node.arg = rename(node.arg)
        elif kind in _DEFS:
            bound.add(node.name)
            node.name = rename(node.name)
        elif kind is ast.alias:
            bound.add((node.asname or node.name).split(".")[0])
        elif kind is ast.ExceptHandler and node.name:
            bound.add(node.name)
    for node in loads:
        if node.id not in bound:
            spelled = scope.spelled(node.id)
            if spelled is not None:
                node.id = spelled
        node.id = rename(node.id)
    return unparse(tree), frozenset(used)


def canonical(d: Definition, scope: Scope, renames: Optional[Mapping[str, str]] = None) -> Optional[Canonical]:
    """The canonical form of an indexed definition (None when its source could not be normalised)."""
    if d.body_src is None:
        return None
    return canonical_source(d.body_src, tuple(p.name for p in d.params or ()), scope, renames)


def canonical_source(body_src: str, params: tuple, scope: Scope,
                     renames: Optional[Mapping[str, str]] = None) -> Optional[Canonical]:
    """The canonical form of a normalised body (:mod:`~portaudit.static.index.body_source`), for
    callers without an index (``provenance`` reads many upstream versions that way)."""
    try:
        text, used = canonical_text(body_src, scope, params, renames)
    except (SyntaxError, ValueError, RecursionError):
        return None
    return Canonical(text, fingerprint(text), used)


def joined(parts: list[Canonical]) -> Canonical:
    """One canonical form for several (a class and its methods)."""
    text = "\n".join(p.text for p in parts)
    return Canonical(text, fingerprint(text), frozenset().union(*[p.used_renames for p in parts]))


def fingerprint(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def pair_fingerprint(upstream: Canonical, port: Canonical) -> str:
    """A short identity of one particular difference (for baseline keys): both sides' hashes."""
    return hashlib.sha256(f"{upstream.fingerprint}:{port.fingerprint}".encode()).hexdigest()[:12]


def display_aliases(scope: Scope) -> dict[str, str]:
    """Outside origins and the local names the module gives them (``triton.language`` -> ``tl``), to
    print canonical text the way the upstream spells it."""
    out = {}
    for local, ref in scope.imports.items():
        if scope.is_internal(ref.module):
            continue
        origin = ref.module if ref.name is None else f"{ref.module}.{ref.name}"
        if origin != local:
            out[origin] = local
    return out


def _shorten(lines: list[str], aliases: Mapping[str, str]) -> list[str]:
    if not aliases:
        return lines
    pattern = re.compile(r"(?<![\w.])(" + "|".join(re.escape(o) for o in sorted(aliases, key=len, reverse=True))
                         + r")(?!\w)")
    return [pattern.sub(lambda m: aliases[m.group(1)], ln) for ln in lines]


def body_diff(upstream: Canonical, port: Canonical, from_label: str, to_label: str, context: int = 2,
              aliases: Optional[Mapping[str, str]] = None) -> str:
    """Unified diff of the canonical texts (upstream -> port); empty when they are equal.
    ``aliases`` (:func:`display_aliases`) only change how outside names are printed."""
    lines = difflib.unified_diff(_shorten(upstream.lines, aliases or {}), _shorten(port.lines, aliases or {}),
                                 fromfile=from_label, tofile=to_label, n=context, lineterm="")
    return "\n".join(lines)


def similarity(a: Canonical, b: Canonical) -> float:
    """Share of matching canonical lines, 0..1 (1.0 for identical bodies)."""
    if a.fingerprint == b.fingerprint:
        return 1.0
    return difflib.SequenceMatcher(None, a.lines, b.lines, autojunk=False).ratio()


def changed_lines(upstream: Canonical, port: Canonical) -> int:
    """Lines removed plus lines added between the two canonical texts."""
    n = 0
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, upstream.lines, port.lines,
                                                       autojunk=False).get_opcodes():
        if tag != "equal":
            n += (i2 - i1) + (j2 - j1)
    return n
