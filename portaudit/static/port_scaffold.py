"""Scaffold from the port: match a copy's definitions to the upstream's and write the manifest.

``portaudit scaffold --port-path DIR --port-package vllm.model_executor.layers.fla.ops`` reads the
port as well as the upstream:

1. the port's closure: everything the port's entry points reach inside the port package (entry
   points: ``--port-entry``, else the package's ``__all__``, else all its public definitions);
2. each reached port definition is matched to an upstream definition: by name first (several
   candidates: the one the caller's counterpart calls, else the most similar body, then the
   closest module name); then a renamed helper by its call site (an unmatched definition a
   matched port definition reaches, directly or through other unmatched ones, paired with an
   unmatched callee of its upstream counterpart: the most similar body of at least
   ``ANCHORED_MATCH``); then by body alone (``BODY_MATCH``). A match under another name becomes
   an entry-level ``port:``, which renames references in body comparison;
3. ``port.modules`` is proposed per upstream module from where its matches live; definitions
   placed elsewhere get an entry-level ``port:``; parameters renamed at the same position are
   proposed as entry ``renames``;
4. the upstream closure of the matched definitions is computed; upstream definitions the port's
   own code never reaches (the backward pass of a forward-only copy) are left out, each with
   that reason, and port definitions that match nothing are listed as unplaced.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Optional

from portaudit.static.body import Canonical, Scope, canonical, joined, similarity
from portaudit.static.index.model import CLASS_KINDS, CONSTANT, KERNEL, Definition, Resolved
from portaudit.static.index.tree import TreeIndex
from portaudit.static.scaffold import closure, resolve_use

BODY_MATCH = 0.75     # least similarity for a match by body alone (a renamed definition)
ANCHORED_MATCH = 0.3  # least similarity for a renamed callee of two matched definitions


@dataclass
class Match:
    upstream: str                 # upstream symbol
    port: str                     # port symbol
    kind: str
    how: str                      # "name" or "body 0.93"
    similarity: float
    renames: dict = field(default_factory=dict)    # parameter renames at the same position


@dataclass
class PortScaffold:
    matches: list[Match]
    modules: dict[str, str]                         # upstream module -> port module
    left_out: list[tuple[str, str]]                 # (upstream symbol, reason)
    unplaced: list[tuple[str, str]]                 # (port symbol, reason)
    port_entries: list[str]

    def entry_port(self, m: Match) -> Optional[str]:
        """The entry-level ``port:`` a match needs (None when port.modules places it)."""
        up_mod, name = m.upstream.rsplit(".", 1)
        mapped = self.modules.get(up_mod)
        return None if mapped is not None and f"{mapped}.{name}" == m.port else m.port


def _modules_under(index: TreeIndex, package: str) -> list[str]:
    base = index.root.joinpath(*package.split("."))
    out = []
    for p in sorted(base.rglob("*.py")):
        parts = list(p.relative_to(index.root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out.append(".".join(parts))
    return out


def _compatible(up: str, port: str) -> bool:
    if up in CLASS_KINDS or port in CLASS_KINDS:
        return up in CLASS_KINDS and port in CLASS_KINDS
    if KERNEL in (up, port):
        return up == port
    return (up == CONSTANT) == (port == CONSTANT)


class _Canon:
    def __init__(self, index: TreeIndex):
        self.index = index
        self._scopes: dict[str, Scope] = {}
        self._forms: dict[str, Optional[Canonical]] = {}

    def of(self, res: Resolved) -> Optional[Canonical]:
        key = f"{res.module.module}.{res.definition.name}"
        if key not in self._forms:
            info = res.module
            if info.module not in self._scopes:
                self._scopes[info.module] = Scope.of(info, self.index)
            scope = self._scopes[info.module]
            d = res.definition
            parts = [canonical(d, scope)]
            if d.kind in CLASS_KINDS:
                parts += [canonical(info.definitions[f"{d.name}.{m}"], scope) for m in d.methods
                          if f"{d.name}.{m}" in info.definitions]
            self._forms[key] = joined(parts) if all(p is not None for p in parts) else None
        return self._forms[key]


def _callees(index: TreeIndex, res: Resolved, package: str) -> list[Resolved]:
    """Top-level definitions of ``package`` that ``res`` names (its body, decorators, defaults)."""
    d = res.module.definitions.get(res.definition.name.split(".")[0], res.definition)
    out, seen = [], set()
    for name in d.uses:
        found = resolve_use(index, res.module, name)
        if found is None:
            continue
        top = found.module.definitions.get(found.definition.name.split(".")[0], found.definition)
        r = Resolved(found.module, top)
        mod = found.module.module
        if (mod == package or mod.startswith(package + ".")) and r.symbol not in seen:
            seen.add(r.symbol)
            out.append(r)
    return out


def _alike(a: str, b: str) -> bool:
    """A short name and its spelled-out form (q/query, k/key): proposed as a rename. Anything else
    in the same position (output_final_state/inplace_final_state) is a replaced parameter, which
    a rename would hide: left to the signature rules."""
    a, b = a.lower(), b.lower()
    return a.startswith(b) or b.startswith(a)


def _param_renames(up: Definition, port: Definition) -> dict:
    """Parameters renamed in place: same position, and neither name occurs on the other side
    (a reordering is not a rename)."""
    if not up.params or not port.params or len(up.params) != len(port.params):
        return {}
    up_names = {u.name for u in up.params}
    port_names = {p.name for p in port.params}
    pairs = [(u.name, p.name) for u, p in zip(up.params, port.params)
             if u.name != p.name and u.name not in port_names and p.name not in up_names
             and _alike(u.name, p.name)]
    if not pairs or len(pairs) > len(up.params) // 2 + 1:
        return {}       # most names differ: a different signature, not a rename
    return dict(pairs)


def scaffold_from_port(upstream: TreeIndex, up_package: str, port: TreeIndex, port_package: str,
                       port_entries: Optional[list[str]] = None) -> PortScaffold:
    port_mods = _modules_under(port, port_package)
    if not port_mods:
        from portaudit.errors import UsageError

        raise UsageError(f"no Python files under the port package {port_package} in {port.root}")
    entries = list(port_entries or [])
    if not entries:
        init = port.module(port_package)
        if init is not None and init.dunder_all:
            entries = [f"{port_package}.{n}" for n in init.dunder_all]
        else:
            for mod in port_mods:
                info = port.module(mod)
                if info is not None:
                    entries += [f"{mod}.{n}" for n, d in info.definitions.items()
                                if "." not in n and not n.startswith("_")]
    reached = closure(port, entries, port_package)
    entries = [r.symbol for r in (port.resolve(e) for e in entries) if r is not None]

    # every upstream top-level definition by its name
    by_name: dict[str, list[Resolved]] = {}
    everything: list[Resolved] = []
    for mod in _modules_under(upstream, up_package):
        info = upstream.module(mod)
        if info is None:
            continue
        for n, d in info.definitions.items():
            if "." in n:
                continue
            r = Resolved(info, d)
            by_name.setdefault(n, []).append(r)
            everything.append(r)
    up_canon, port_canon = _Canon(upstream), _Canon(port)

    matches: list[Match] = []
    matched_up: dict[str, Resolved] = {}        # port symbol -> its upstream match
    taken: set[str] = set()                     # upstream symbols already matched
    pending: list = []                          # reached port items not matched yet

    def record(item_symbol: str, pres: Resolved, r: Resolved, how: str, sim: float) -> None:
        matched_up[item_symbol] = r
        taken.add(f"{r.module.module}.{r.definition.name}")
        matches.append(Match(f"{r.module.module}.{r.definition.name}", item_symbol, r.definition.kind, how,
                             sim, _param_renames(r.definition, pres.definition)))

    # 1. by name (the caller's counterpart decides between same-named candidates)
    for item in reached:
        pres = port.resolve(item.symbol)
        if pres is None:
            continue
        pd = pres.definition
        pc = port_canon.of(pres)
        cands = [r for r in by_name.get(pd.name, []) if _compatible(r.definition.kind, pd.kind)]
        parent = matched_up.get(item.reached_from or "")
        if parent is not None and len(cands) > 1:
            used = resolve_use(upstream, parent.module, pd.name)
            if used is not None and _compatible(used.definition.kind, pd.kind):
                cands = [used]
        best: Optional[tuple[float, float, Resolved]] = None
        for r in cands:
            uc = up_canon.of(r)
            sim = similarity(uc, pc) if uc is not None and pc is not None else 0.0
            mod_sim = difflib.SequenceMatcher(None, r.module.module.rsplit(".", 1)[-1],
                                              pres.module.module.rsplit(".", 1)[-1]).ratio()
            if best is None or (sim, mod_sim) > best[:2]:
                best = (sim, mod_sim, r)
        if best is None:
            pending.append((item, pres, pc))
        else:
            record(item.symbol, pres, best[2], "name", best[0])

    # 2. a renamed helper: the unmatched callees of a matched pair, paired by body (anchored)
    changed = True
    while changed and pending:
        changed = False
        for p_sym, u_res in list(matched_up.items()):
            p_res = port.resolve(p_sym)
            if p_res is None:
                continue
            # the port may have split a helper in two: look through unmatched port callees
            pending_syms = {x[0].symbol for x in pending}
            port_callees: set[str] = set()
            frontier = [p_res]
            for _ in range(3):
                nxt = []
                for f in frontier:
                    for c in _callees(port, f, port_package):
                        if c.symbol not in port_callees:
                            port_callees.add(c.symbol)
                            if c.symbol in pending_syms:
                                nxt.append(c)
                frontier = nxt
            mine = [x for x in pending if x[0].symbol in port_callees]
            theirs = [r for r in _callees(upstream, u_res, up_package) if r.symbol not in taken]
            pairs = []
            for x in mine:
                for r in theirs:
                    uc = up_canon.of(r)
                    if x[2] is None or uc is None or not _compatible(r.definition.kind, x[1].definition.kind):
                        continue
                    sim = similarity(uc, x[2])
                    if sim >= ANCHORED_MATCH:
                        pairs.append((sim, x, r))
            for sim, x, r in sorted(pairs, key=lambda t: -t[0]):      # the most similar pairs first
                if x in pending and r.symbol not in taken:
                    record(x[0].symbol, x[1], r, f"call site and body {sim:.2f}", sim)
                    pending.remove(x)
                    changed = True

    # 3. by body alone, over every upstream definition
    unplaced: list[tuple[str, str]] = []
    for item, pres, pc in pending:
        pd = pres.definition
        best = None
        if pc is not None and pd.kind != CONSTANT:
            n = len(pc.lines)
            for r in everything:
                if r.symbol in taken or not _compatible(r.definition.kind, pd.kind):
                    continue
                uc = up_canon.of(r)
                if uc is None or not (0.5 * n <= len(uc.lines) <= 2 * n + 2):
                    continue
                sim = similarity(uc, pc)
                if sim >= BODY_MATCH and (best is None or sim > best[0]):
                    best = (sim, r)
        if best is None:
            unplaced.append((item.symbol, "no upstream definition of this name, none its callers' "
                                          f"counterparts call, nor one with a body at least {BODY_MATCH:.0%} similar"))
            continue
        record(item.symbol, pres, best[1], f"body {best[0]:.2f}", best[0])

    # port.modules: where each upstream module's matches live (the most common port module)
    homes: dict[str, dict[str, int]] = {}
    for m in matches:
        up_mod = m.upstream.rsplit(".", 1)[0]
        port_mod = m.port.rsplit(".", 1)[0]
        if m.upstream.rsplit(".", 1)[1] == m.port.rsplit(".", 1)[1]:
            homes.setdefault(up_mod, {}).setdefault(port_mod, 0)
            homes[up_mod][port_mod] += 1
    modules = {up: max(ports, key=lambda p: (ports[p], p)) for up, ports in homes.items()}

    # what the upstream closure of the matches holds that the port never reaches
    matched = {m.upstream for m in matches}
    up_closure = closure(upstream, sorted(matched), up_package) if matched else []
    left_out = [(it.symbol, f"not reached by the port's own code (reached upstream from {it.reached_from})")
                for it in up_closure if it.symbol not in matched]
    return PortScaffold(sorted(matches, key=lambda m: m.upstream), dict(sorted(modules.items())),
                        left_out, unplaced, entries)


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_port_manifest(sc: PortScaffold, up_package: str, port_package: str, upstream_lines: list[str],
                         name: Optional[str] = None, port_path: Optional[str] = None) -> str:
    lines = [f"# Generated by `portaudit scaffold` from the port {port_package}: "
             f"{len(sc.matches)} definitions matched, {len(sc.left_out)} upstream definitions left out, "
             f"{len(sc.unplaced)} port definitions unplaced.",
             "# Curate it: check the matches marked 'body' (a rename), stage titles, waivers."]
    if name:
        lines.append(f"name: {name}")
    lines += ["upstream:", f"  package: {up_package}"] + [f"  {ln}" for ln in upstream_lines]
    lines += ["port:", f"  package: {port_package}"]
    if port_path:
        lines.append(f"  path: {_q(port_path)}")
    lines.append("  fidelity: copy")
    if sc.modules:
        lines.append("  modules:")
        lines += [f"    {up}: {po}" for up, po in sc.modules.items()]
    # a vendored copy keeps its provenance beside the manifest (`portaudit fix-citations --write`)
    lines.append(f"citations: {{style: sidecar, file: {name or 'port'}.citations.json}}")
    lines.append("entry_points:")
    lines += [f"  - {m.upstream}" for m in sc.matches if m.port in sc.port_entries]
    lines.append("stages:")
    # one entry per upstream symbol; a symbol the port defines in several places lists them all
    by_symbol: dict[str, list[Match]] = {}
    for m in sc.matches:
        by_symbol.setdefault(m.upstream, []).append(m)
    by_module: dict[str, list[list[Match]]] = {}
    for sym, ms in by_symbol.items():
        by_module.setdefault(sym.rsplit(".", 1)[0], []).append(ms)
    for i, (mod, groups) in enumerate(sorted(by_module.items()), 1):
        lines += [f"  - id: \"{i}\"", f"    title: {_q(mod)}", "    symbols:"]
        for ms in groups:
            m = ms[0]
            opts = []
            ports = [x.port for x in ms]
            if m.kind == KERNEL:
                opts.append("kind: kernel")
            if len(ports) > 1:
                opts.append(f"port: [{', '.join(ports)}]")
            elif sc.entry_port(m):
                opts.append(f"port: {m.port}")
            renames = {k: v for x in ms for k, v in x.renames.items()}
            if renames:
                opts.append("renames: {" + ", ".join(f"{a}: {b}" for a, b in renames.items()) + "}")
            hows = sorted({x.how for x in ms if x.how != "name"})
            note = f"  # matched by {'; '.join(hows)}" if hows else ""
            if opts:
                lines.append(f"      - {{symbol: {m.upstream}, {', '.join(opts)}}}{note}")
            else:
                lines.append(f"      - {m.upstream}{note}")
    lines += ["waivers: []", "deviations: []"]
    if sc.left_out:
        lines.append("# Left out: upstream definitions the port's own code never reaches")
        lines += [f"#   {sym}: {why}" for sym, why in sc.left_out]
    if sc.unplaced:
        lines.append("# Unplaced: port definitions that match no upstream definition")
        lines += [f"#   {sym}: {why}" for sym, why in sc.unplaced]
    return "\n".join(lines) + "\n"
