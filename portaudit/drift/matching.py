"""Where an old definition lives in the new tree.

In order: the same dotted name resolved in the new tree (through its re-exports and relative
imports; a different defining module means *moved*); a search of the new package's definitions
by name (for modules that became packages or aliases); a best-effort rename guess by body
similarity among definitions of the same kind that are new in the release; otherwise *removed*.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Optional

from portaudit.drift.fingerprint import SourceCache, bag_ratio, fingerprint, similarity, tokens
from portaudit.drift.signature import kind_group
from portaudit.errors import UsageError
from portaudit.static.index.model import Definition, Resolved
from portaudit.static.index.tree import TreeIndex
from portaudit.static.source import read_source

_DEF_RE = re.compile(r"^[ \t]*(?:async[ \t]+)?(?:def|class)[ \t]+(\w+)|^[ \t]*(\w+)[ \t]*(?::[^=\n]*)?=[^=]", re.M)


@dataclass
class Located:
    """The old definition and, when found, the new one."""
    old: Resolved
    new: Optional[Resolved] = None
    how: str = ""                       # "same", "moved", "renamed", "removed"
    score: Optional[float] = None
    body_changed: bool = False
    weak: bool = False                  # found by name outside the new closure only


def _ref(index: TreeIndex, r: Resolved, d: Optional[Definition] = None) -> str:
    d = d or r.definition
    return f"{index.relpath(r.module.path)}:L{d.start}-L{d.end}"


class Matcher:
    def __init__(self, old: TreeIndex, new: TreeIndex, package: str, rename_threshold: float = 0.65):
        self.old = old
        self.new = new
        self.package = package
        self.rename_threshold = rename_threshold
        self.src = SourceCache()
        self._names: Optional[dict[str, list[str]]] = None
        self._fp: dict[tuple[str, str], str] = {}
        self._tok: dict[tuple[str, str], list[str]] = {}
        self._bag: dict[tuple[str, str], Counter] = {}
        self._sim: dict[tuple, float] = {}
        # modules of the new closure: a same-name definition found there is trusted
        self.preferred: set[str] = set()

    # -- helpers ---------------------------------------------------------------------------
    def ref(self, index: TreeIndex, r: Resolved) -> str:
        return _ref(index, r)

    def fp(self, r: Resolved) -> str:
        key = (r.module.path, r.definition.name)
        if key not in self._fp:
            self._fp[key] = fingerprint(self.src, r.module.path, r.definition)
        return self._fp[key]

    def tok(self, r: Resolved) -> list[str]:
        key = (r.module.path, r.definition.name)
        if key not in self._tok:
            self._tok[key] = tokens(self.src, r.module.path, r.definition)
        return self._tok[key]

    def bag(self, r: Resolved) -> Counter:
        key = (r.module.path, r.definition.name)
        if key not in self._bag:
            self._bag[key] = Counter(self.tok(r))
        return self._bag[key]

    def score(self, a: Resolved, b: Resolved, floor: float = 0.0) -> float:
        """Body similarity of two definitions; 0 when the token counts alone rule out ``floor``."""
        ta, tb = self.tok(a), self.tok(b)
        if bag_ratio(self.bag(a), len(ta), self.bag(b), len(tb)) < floor:
            return 0.0
        return self.body_similarity(a, b)

    def body_similarity(self, a: Resolved, b: Resolved) -> float:
        key = (a.module.path, a.definition.name, b.module.path, b.definition.name)
        if key not in self._sim:
            self._sim[key] = similarity(self.tok(a), self.tok(b))
        return self._sim[key]

    def name_map(self) -> dict[str, list[str]]:
        """Top-level-looking definition names -> new modules defining them (one regex pass)."""
        if self._names is None:
            self._names = {}
            base = self.new.root / self.package
            for path in sorted(base.rglob("*.py")):
                rel = path.relative_to(self.new.root).with_suffix("")
                parts = list(rel.parts)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                if not all(p.isidentifier() for p in parts):
                    continue
                module = ".".join(parts)
                try:
                    text = read_source(path).text
                except UsageError:   # not a readable regular source file: the index reports it if used
                    continue
                for m in _DEF_RE.finditer(text):
                    name = m.group(1) or m.group(2)
                    mods = self._names.setdefault(name, [])
                    if not mods or mods[-1] != module:
                        mods.append(module)
        return self._names

    def defined_in(self, module: str, qual: str) -> Optional[Resolved]:
        info = self.new.module(module)
        if info is not None and qual in info.definitions:
            return Resolved(info, info.definitions[qual])
        return None

    # -- locating ----------------------------------------------------------------------------
    def resolve_old(self, symbol: str) -> Optional[Resolved]:
        r = self.old.resolve(symbol)
        if r is None:
            return None
        top = r.definition.name
        return r if top in r.module.definitions else None

    def locate(self, symbol: str) -> Optional[Located]:
        """Find ``symbol`` (dotted, as in the old tree) by name in the new tree; None if not in old."""
        old = self.resolve_old(symbol)
        if old is None:
            return None
        return self.locate_resolved(old, symbol)

    def locate_resolved(self, old: Resolved, symbol: Optional[str] = None) -> Located:
        symbol = symbol or old.symbol
        new = self.new.resolve(symbol)
        if new is None and symbol != old.symbol:
            new = self.new.resolve(old.symbol)
        if new is not None and new.definition.short != old.definition.short:
            # the old name is only an import alias of a differently named definition now
            return Located(old, new, "renamed", score=round(self.score(old, new), 3),
                           body_changed=self.tok(old) != self.tok(new))
        weak = False
        if new is None:
            new = self.search_by_name(old)
            weak = new is not None and new.module.module not in self.preferred
        if new is None:
            return Located(old, None, "removed")
        how = "same" if new.module.module == old.module.module else "moved"
        return Located(old, new, how, body_changed=self.fp(old) != self.fp(new), weak=weak)

    def search_by_name(self, old: Resolved) -> Optional[Resolved]:
        """A same-named definition elsewhere in the new package. Trusted in a module of the new
        closure; elsewhere only when its body is identical or very close (>= 0.8), and never for a
        constant (common names such as ``BK_LIST`` recur in unrelated modules)."""
        qual = old.definition.name
        head = qual.split(".")[0]
        cands: list[Resolved] = []
        for mod in self.name_map().get(head, []):
            r = self.defined_in(mod, qual)
            if r is not None:
                cands.append(r)
        group = kind_group(old.definition.kind)
        cands = [c for c in cands if kind_group(c.definition.kind) == group] or cands
        if not cands:
            return None
        old_fp = self.fp(old)
        preferred = [c for c in cands if c.module.module in self.preferred]
        if preferred:
            exact = [c for c in preferred if self.fp(c) == old_fp]
            if len(exact) == 1 or len(preferred) == 1:
                return (exact or preferred)[0]
            old_mod = old.module.module

            def rank(c: Resolved) -> tuple:   # identical first, then the closest module name
                near = difflib.SequenceMatcher(None, old_mod, c.module.module).ratio()
                return (c in exact, round(near, 3), self.score(old, c))
            return max(exact or preferred, key=rank)
        if group == "constant" or old.definition.kind == "constant":
            return None
        exact = [c for c in cands if self.fp(c) == old_fp]
        if exact:
            return exact[0]
        scored = [(self.score(old, c, 0.8), c) for c in cands]
        best = max(scored, key=lambda t: t[0])
        return best[1] if best[0] >= 0.8 else None

    # -- renames -----------------------------------------------------------------------------
    def rename_pool(self, modules: Iterable[str], taken: set[str]) -> list[Resolved]:
        """Top-level definitions of ``modules`` in the new tree that the old tree does not have."""
        pool = []
        for mod in dict.fromkeys(modules):
            info = self.new.module(mod)
            if info is None:
                continue
            old_info = self.old.module(mod)
            for name, d in info.definitions.items():
                if "." in name or f"{mod}.{name}" in taken:
                    continue
                if old_info is not None and name in old_info.definitions:
                    continue
                if self.old.resolve(f"{mod}.{name}") is not None:
                    continue
                pool.append(Resolved(info, d))
        return pool

    def guess_rename(self, old: Resolved, pool: list[Resolved]) -> Optional[tuple[Resolved, float]]:
        """The best candidate of the same kind in ``pool`` by ``0.7 * body similarity + 0.3 * name
        similarity``, when that reaches the threshold (at least 0.9 for constants, whose short
        bodies look alike; short definitions also need a name similarity of 0.5)."""
        group = kind_group(old.definition.kind)
        floor = max(self.rename_threshold, 0.9) if group == "constant" else self.rename_threshold
        ot, ob = self.tok(old), self.bag(old)
        name = old.definition.short
        bounds = []
        for c in pool:
            if kind_group(c.definition.kind) != group:
                continue
            near = difflib.SequenceMatcher(None, name, c.definition.short).ratio()
            ub = 0.7 * bag_ratio(ob, len(ot), self.bag(c), len(self.tok(c))) + 0.3 * near
            if ub >= floor:
                bounds.append((ub, near, c))
        bounds.sort(key=lambda t: -t[0])
        best: Optional[tuple[Resolved, float]] = None
        for ub, near, c in bounds[:4]:
            if best is not None and ub <= best[1]:
                break      # the bound of the rest cannot beat the best
            if min(len(ot), len(self.tok(c))) < 30 and near < 0.5:
                continue   # short bodies look alike: a rename of one needs a similar name too
            s = 0.7 * self.body_similarity(old, c) + 0.3 * near
            if best is None or s > best[1]:
                best = (c, s)
        if best is not None and best[1] >= floor:
            return best
        return None
