"""Three-way drift: what an upstream change (old -> new release) means for the port as it is now.

For every manifest symbol the upstream side is already known (:mod:`.engine`: unchanged, body
changed, moved, renamed, removed, signature changes). This module reads the port's definition of
the symbol (where the manifest places it: ``port.modules``, entry ``port:``) and says which of
the three versions it is:

* **copies** (``fidelity: copy``) compare bodies in canonical form (:mod:`portaudit.static.body`:
  comments, formatting and import spelling ignored, the manifest's renames applied to the upstream
  side). Port == new: *already has it*; port == old: *to do* (or *unchanged* when upstream did not
  change); neither: a line-level three-way look at the canonical texts decides between *already
  has it* (every upstream hunk is in the port; the rest is the port's own), *to do* (no upstream
  hunk is in the port and the port's own edits touch other lines, so the change merges cleanly)
  and *conflict*; when upstream did not change, a difference is a *local change*;
* **translations** compare what a translation keeps: the signature (parameters after renames)
  and the citation (which release the port says it follows). A signature change upstream is
  *already* there when the port's parameters are the new ones; a body-only change is *already*
  there when the port cites the new release;
* an upstream **removal** is *already* done when the port no longer defines the symbol, else *to
  do*; definitions of the old closure that the manifest does not list (helpers the port never
  copied or already dropped) are reported the same way.

Nothing is imported or run; the port is read through its index (only the modules the manifest
places symbols in, and what they import from the port package).
"""

from __future__ import annotations

import difflib
from collections import Counter
from typing import Optional

from portaudit.drift.matching import Matcher
from portaudit.drift.model import (NOT_IN_FROM, PORT_ALREADY, PORT_CONFLICT, PORT_LOCAL, PORT_MISSING, PORT_SAME,
                                   PORT_TODO, REMOVED, UNCHANGED, ManifestDrift, PortState, SymbolDrift)
from portaudit.static.body import Canonical, Scope, joined, similarity
from portaudit.static.canonical_store import CanonicalStore
from portaudit.static.checks.presence import kernel_accounted, manifest_port_citations
from portaudit.static.fidelity import COPY
from portaudit.static.index.model import CLASS_KINDS, KERNEL, Resolved
from portaudit.static.index.tree import TreeIndex
from portaudit.static.manifest import Entry, Manifest

ALREADY, TODO, CONFLICT, LOCAL, SAME = PORT_ALREADY, PORT_TODO, PORT_CONFLICT, PORT_LOCAL, PORT_SAME


class ThreeWay:
    """Classifies manifest symbols against one port index (forms cached per tree and module)."""

    def __init__(self, matcher: Matcher, port: TreeIndex, to_version: Optional[str] = None, cache_dir=None):
        self.m = matcher
        self.port = port
        self._citations: dict = {}
        self.to_version = to_version      # the release a translation's citation names once updated
        self.store = CanonicalStore(cache_dir)
        self._scopes: dict[tuple[int, str], Scope] = {}

    # -- forms -----------------------------------------------------------------------------
    def scope(self, index: TreeIndex, r: Resolved) -> Scope:
        key = (id(index), r.module.module)
        if key not in self._scopes:
            self._scopes[key] = Scope.of(r.module, index)
        return self._scopes[key]

    def form(self, index: TreeIndex, r: Resolved, renames: Optional[dict] = None) -> Optional[Canonical]:
        """A definition's canonical form; a class is its class-level form and its methods'."""
        d = r.definition
        scope = self.scope(index, r)
        parts = [self.store.canonical(r.module, d, scope, renames)]
        if d.kind in CLASS_KINDS:
            for name in d.methods:
                md = r.module.definitions.get(f"{d.name}.{name}")
                if md is not None:
                    parts.append(self.store.canonical(r.module, md, scope, renames))
        if any(p is None for p in parts):
            return None
        return joined(parts)

    def port_citations(self, manifest: Manifest) -> list:
        """The citations of the port modules the manifest maps, read once per manifest."""
        key = id(manifest)
        if key not in self._citations:
            self._citations[key] = manifest_port_citations(manifest, manifest.entries, self.port)
        return self._citations[key]

    # -- one symbol ------------------------------------------------------------------------
    def classify(self, manifest: Manifest, entry: Entry, sd: SymbolDrift) -> PortState:
        psym = manifest.port_symbol(entry)
        pres = self.port.resolve(psym)
        copy = manifest.fidelity_of(entry) == COPY
        ps = PortState(state=SAME, port_symbol=psym, compared="body" if copy else "signature")
        if pres is not None:
            ps.port_ref = f"{self.port.relpath(pres.module.path)}:{pres.definition.start}"
            ps.port_module = pres.module.module
        else:
            mod, _ = self.port.split_symbol(psym)
            ps.port_module = mod or psym.rsplit(".", 1)[0]
        old = self.m.resolve_old(sd.symbol) if sd.status != NOT_IN_FROM else None
        new = self.m.new.resolve(sd.new_symbol) if sd.new_symbol else None
        if sd.status == NOT_IN_FROM:
            new = self.m.new.resolve(sd.symbol)
        if sd.status == REMOVED:
            ps.state = TODO if pres is not None else ALREADY
            ps.note = (f"still defined in the port: remove it from {ps.port_ref or ps.port_module}"
                       if pres is not None else "the port no longer defines it either")
            return ps
        if pres is None and not copy and old is not None and old.definition.kind == KERNEL:
            # A translation re-expresses a kernel inside the torch function that cites it: accounted
            # for exactly as `check` accounts for it (PA105), it follows the upstream change.
            how = kernel_accounted(self.m.old.relpath(old.module.path), old.definition,
                                   self.port_citations(manifest), None)
            if how is not None:
                ps.compared = "citation"
                ps.state = TODO if sd.changed else SAME
                ps.note = f"a kernel the port re-expresses ({how}): " + \
                    ("update it to the new release's kernel" if sd.changed else "unchanged upstream")
                return ps
        if pres is None:
            ps.state = PORT_MISSING
            ps.note = f"{psym} is not defined in the port"
            return ps
        if old is None and new is None:
            ps.state = LOCAL
            ps.note = "defined in neither release: the port's own"
            return ps
        renames = manifest.renames_for(entry)
        if copy:
            return self._by_body(ps, sd, old, new, pres, renames)
        return self._by_signature(ps, sd, old, new, pres, renames, manifest)

    def _by_body(self, ps: PortState, sd: SymbolDrift, old: Optional[Resolved], new: Optional[Resolved],
                 pres: Resolved, renames: dict) -> PortState:
        o = self.form(self.m.old, old, renames) if old is not None else None
        n = self.form(self.m.new, new, renames) if new is not None else None
        p = self.form(self.port, pres)
        if p is None or (old is not None and o is None) or (new is not None and n is None):
            ps.state = CONFLICT if sd.changed else LOCAL
            ps.compared = "signature"
            ps.note = "a body could not be normalised (source this Python cannot parse); not compared"
            return ps
        if o is not None:
            ps.similarity_old = round(similarity(o, p), 3)
        if n is not None:
            ps.similarity_new = round(similarity(n, p), 3)
        if o is None:                                  # added upstream after the from-release
            ps.state = ALREADY if n.fingerprint == p.fingerprint else CONFLICT
            ps.note = "added upstream after the old release; " + \
                ("the port has the new release's" if ps.state == ALREADY else "the port's differs from the new release's")
            return ps
        upstream_changed = n is None or o.fingerprint != n.fingerprint
        sd.body_changed = sd.body_changed and upstream_changed   # canonical forms ignore import moves
        if not upstream_changed:
            ps.state = SAME if p.fingerprint == o.fingerprint else LOCAL
            if ps.state == LOCAL:
                ps.note = f"the port's body differs from both releases' (similarity {ps.similarity_old:.2f})"
            elif sd.status != UNCHANGED:
                ps.note = f"upstream only {sd.status} it (the manifest is re-pointed, the port keeps its place)"
            return ps
        if p.fingerprint == n.fingerprint:
            ps.state = ALREADY
            return ps
        if p.fingerprint == o.fingerprint:
            ps.state = TODO
            return ps
        applied, total, overlap = merge_view(o.lines, n.lines, p.lines)
        ps.hunks = f"{applied}/{total}"
        if applied == total:
            ps.state = ALREADY
            ps.note = f"all {total} upstream hunk(s) are in the port; the rest is the port's own change"
        elif applied == 0 and not overlap:
            ps.state = TODO
            ps.note = "the port has local changes elsewhere in the body; the upstream change merges cleanly"
        else:
            ps.state = CONFLICT
            ps.note = (f"{applied} of {total} upstream hunk(s) in the port" +
                       ("; upstream and port edited the same lines" if overlap else ""))
        return ps

    def _by_signature(self, ps: PortState, sd: SymbolDrift, old: Optional[Resolved], new: Optional[Resolved],
                      pres: Resolved, renames: dict, manifest: Manifest) -> PortState:
        cites = {c.version for c in pres.definition.citations if c.label == manifest.citation_label}
        to_version = self.to_version

        def params(r: Optional[Resolved], rn: Optional[dict]) -> Optional[list]:
            if r is None or r.definition.params is None:
                return None
            return [(rn or {}).get(p.name, p.name) + ":" + p.kind + ("=" if p.default is not None else "")
                    for p in r.definition.params]
        po, pn, pp = params(old, renames), params(new, renames), params(pres, None)
        sig_changed = bool(sd.signature)
        if sig_changed and pp is not None and pn is not None and pp == pn:
            ps.state = ALREADY
            ps.note = "the port's parameters are the new release's"
        elif sig_changed and pp is not None and po is not None and pp == po:
            ps.state = TODO
            ps.note = "the port's parameters are still the old release's"
        elif sig_changed:
            ps.state = CONFLICT
            ps.note = "the port's parameters are neither release's"
        elif sd.body_changed:
            ps.compared = "citation"
            if to_version and to_version in cites:
                ps.state = ALREADY
                ps.note = f"the port cites {to_version}"
            else:
                ps.state = TODO
                ps.note = (f"the port cites {', '.join(sorted(v for v in cites if v))}" if cites
                           else "the port cites no release") + "; re-read the upstream change"
        else:
            ps.state = SAME if pp is None or po is None or pp == po else LOCAL
            if ps.state == LOCAL:
                ps.note = "the port's parameters differ from the upstream's (unchanged upstream)"
        return ps


def merge_view(old: list[str], new: list[str], port: list[str]) -> tuple[int, int, bool]:
    """(upstream hunks found in the port, upstream hunks, whether an upstream hunk and a port edit
    touch the same old lines). A hunk is in the port when the port has every line it adds and none
    of the lines it removes; hunks are difflib's opcodes over canonical lines."""
    up = [op for op in difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes() if op[0] != "equal"]
    mine = [op for op in difflib.SequenceMatcher(None, old, port, autojunk=False).get_opcodes() if op[0] != "equal"]
    have = Counter(port)
    old_set, new_set = Counter(old), Counter(new)
    applied = 0
    for _, i1, i2, j1, j2 in up:
        added = [ln for ln in new[j1:j2] if old_set[ln] < new_set[ln]]
        removed = [ln for ln in old[i1:i2] if new_set[ln] < old_set[ln]]
        if all(have[ln] for ln in added) and not any(have[ln] >= old_set[ln] for ln in removed):
            applied += 1
    overlap = any(max(a1, b1) < min(a2, b2) or (a1 == a2 == b1 == b2)
                  for _, a1, a2, _, _ in up for _, b1, b2, _, _ in mine)
    return applied, len(up), overlap


def classify_manifest(md: ManifestDrift, manifest: Manifest, tw: ThreeWay) -> None:
    """Fill ``port`` of every symbol of ``md`` and the old-closure removals the manifest does not list."""
    by_symbol = {s.symbol: s for s in md.symbols}
    for e in manifest.entries:
        sd = by_symbol.get(e.symbol)
        if sd is not None and sd.port is None:
            sd.port = tw.classify(manifest, e, sd)
    listed = {s.symbol for s in md.symbols}
    for sym, kind in md.closure_removed.items():
        if sym in listed:
            continue
        psym = manifest.port_name_for(sym)
        pres = tw.port.resolve(psym)
        mod, _ = tw.port.split_symbol(psym)
        ps = PortState(state=TODO if pres is not None else ALREADY, port_symbol=psym,
                       port_module=(pres.module.module if pres else mod or psym.rsplit(".", 1)[0]),
                       compared="presence")
        if pres is not None:
            ps.port_ref = f"{tw.port.relpath(pres.module.path)}:{pres.definition.start}"
            ps.note = f"still defined in the port: remove it from {ps.port_ref}"
        else:
            ps.note = "not listed in the manifest; the port does not define it"
        md.removed_helpers.append(SymbolDrift(sym, "", kind, REMOVED, port=ps,
                                              note="in the old closure of the entry points, not in the manifest"))

