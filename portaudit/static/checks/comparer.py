"""Canonical forms of upstream/port definition pairs for one audit, with per-module scopes cached.

The runner asks :class:`BodyComparer` for the body findings of a copy entry (a class is its
class-level statements plus each shared method, reported as ``Class.method``) and, for the
``--bodies`` figure, for how close a translation's plain-Python definition is to the upstream's.
It also reads signatures for the signature rule (annotations as types, defaults as values).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Optional

from portaudit.static.body import Canonical, Scope, display_aliases, fingerprint, similarity
from portaudit.static.canonical_store import CanonicalStore
from portaudit.static.checks.body import check_body
from portaudit.static.checks.signature import Readers
from portaudit.static.checks.site import Site
from portaudit.static.findings import Finding
from portaudit.static.index.model import CLASS_KINDS, KERNEL, Definition, ModuleInfo, Resolved
from portaudit.static.index.tree import TreeIndex
from portaudit.static.signature_normal import canonical_annotation, canonical_default


# a Triton launch: name[grid](...)
_LAUNCH_RE = re.compile(r"[A-Za-z_][\w.]*\[[^\[\]\n]*\]\(")


@dataclass
class BodyFigure:
    """How far a port definition's body is from the upstream's (reported, never gated)."""
    similarity: float
    identical: bool
    plain_python: bool          # the upstream definition launches no kernel and is none
    upstream_fingerprint: str
    port_fingerprint: str

    def to_dict(self) -> dict:
        return {"similarity": round(self.similarity, 4), "identical": self.identical,
                "plain_python": self.plain_python, "upstream_fingerprint": self.upstream_fingerprint[:16],
                "port_fingerprint": self.port_fingerprint[:16]}


class BodyComparer:
    def __init__(self, upstream: TreeIndex, port: TreeIndex, cache_dir=None):
        self.up = upstream
        self.port = port
        self._scopes: dict[tuple[int, str], Scope] = {}
        self.store = CanonicalStore(cache_dir)
        self._annotations: dict[tuple[int, Optional[str]], Optional[str]] = {}

    def scope(self, index: TreeIndex, info: ModuleInfo) -> Scope:
        key = (id(index), info.module)
        if key not in self._scopes:
            self._scopes[key] = Scope.of(info, index)
        return self._scopes[key]

    # -- signatures --------------------------------------------------------------------------
    def annotation(self, scope: Scope, text: Optional[str]) -> Optional[str]:
        key = (id(scope), text)
        if key not in self._annotations:
            self._annotations[key] = canonical_annotation(text, scope.spelled)
        return self._annotations[key]

    def readers(self, up: Resolved, port: Resolved) -> Readers:
        us, ps = self.scope(self.up, up.module), self.scope(self.port, port.module)
        return Readers(
            up_annotation=lambda t: self.annotation(us, t),
            port_annotation=lambda t: self.annotation(ps, t),
            up_default=lambda t: canonical_default(t, self.up, up.module),
            port_default=lambda t: canonical_default(t, self.port, port.module))

    # -- bodies ------------------------------------------------------------------------------
    def pair(self, up_info: ModuleInfo, ud: Definition, port_info: ModuleInfo, pd: Definition,
             renames: Mapping[str, str]) -> tuple[Optional[Canonical], Optional[Canonical]]:
        return (self.store.canonical(up_info, ud, self.scope(self.up, up_info), renames),
                self.store.canonical(port_info, pd, self.scope(self.port, port_info)))

    def findings(self, site: Site, up: Resolved, port: Resolved, port_methods: dict[str, Definition],
                 renames: Mapping[str, str], upstream_label: str, up_ref_of, port_file: str) -> tuple[list[Finding], set]:
        """Body findings of a copy entry and the rename keys its comparison used."""
        out: list[Finding] = []
        used: set = set()
        ud, pd = up.definition, port.definition
        pairs = [("", ud, pd)]
        if ud.kind in CLASS_KINDS and pd.kind in CLASS_KINDS:
            for m in ud.methods:
                um = up.module.definitions.get(f"{ud.name}.{m}")
                pm = port_methods.get(m)
                if um is not None and pm is not None:
                    pairs.append((f".{m}", um, pm))
        for suffix, u, p in pairs:
            # inherited methods come from same-module bases (Auditor.port_methods): one scope
            a, b = self.pair(up.module, u, port.module, p, renames)
            if a is not None:
                used |= a.used_renames
            msite = site if not suffix else Site(f"{site.symbol}{suffix}", site.file, p)
            out += check_body(msite, a, b, f"{upstream_label} {up_ref_of(u)} (normalised)",
                              f"{port_file}:{p.start} (normalised)", up_ref_of(u),
                              aliases=display_aliases(self.scope(self.up, up.module)))
        return out, used

    def figure(self, up: Resolved, port: Resolved, port_methods: dict[str, Definition],
               renames: Mapping[str, str], plain_python: bool) -> Optional[BodyFigure]:
        """Similarity of the whole definition (a class with its shared methods)."""
        ud, pd = up.definition, port.definition
        ups, pts = [], []
        pairs = [(ud, pd)]
        if ud.kind in CLASS_KINDS and pd.kind in CLASS_KINDS:
            pairs += [(up.module.definitions[f"{ud.name}.{m}"], port_methods[m]) for m in ud.methods
                      if f"{ud.name}.{m}" in up.module.definitions and m in port_methods]
        for u, p in pairs:
            a, b = self.pair(up.module, u, port.module, p, renames)
            if a is None or b is None:
                return None
            ups.append(a.text)
            pts.append(b.text)
        a = Canonical("\n".join(ups), fingerprint("\n".join(ups)))
        b = Canonical("\n".join(pts), fingerprint("\n".join(pts)))
        return BodyFigure(similarity(a, b), a.fingerprint == b.fingerprint, plain_python,
                          a.fingerprint, b.fingerprint)

    def plain_python(self, up: Resolved) -> bool:
        """True when the upstream definition is no kernel and launches none (``kernel[grid](...)``,
        Triton's launch syntax, in its body or its methods'); read from the text, no module loaded."""
        d = up.definition
        if d.kind == KERNEL:
            return False
        texts = [d.body_src or ""] + [up.module.definitions[f"{d.name}.{m}"].body_src or ""
                                     for m in d.methods if f"{d.name}.{m}" in up.module.definitions]
        return not any(_LAUNCH_RE.search(t) for t in texts)
