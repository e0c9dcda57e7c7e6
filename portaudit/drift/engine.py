"""The drift of manifests (and of the port's citations) from one upstream release to another."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from portaudit.drift.checklist import checklist
from portaudit.drift.matching import Located, Matcher
from portaudit.drift.model import (BODY_CHANGED, CITE_CHANGED, CITE_RELOCATED, CITE_UNCHANGED, CITE_UNKNOWN,
                                   MOVED, NOT_IN_FROM, REMOVED, RENAMED, UNCHANGED, CitationDrift,
                                   ManifestDrift, NewSymbol, SymbolDrift)
from portaudit.drift.signature import diff_definitions
from portaudit.drift.threeway import ThreeWay, classify_manifest
from portaudit.static.fidelity import DOCSTRING
from portaudit.errors import UsageError
from portaudit.static.citations import Citation, format_citation
from portaudit.static.index.model import Definition, ModuleInfo, Resolved
from portaudit.static.index.tree import TreeIndex
from portaudit.safe_io import is_regular_file, read_regular
from portaudit.static.source import MAX_SOURCE_BYTES, read_source
from portaudit.static.manifest import Manifest
from portaudit.static.scaffold import closure, resolve_use

_VERSION_RE = re.compile(r"""^__version__\s*=\s*['"]([^'"]+)['"]""", re.M)


@dataclass
class Release:
    """One side of the comparison: a tree, its index and how to name it."""
    root: Path
    index: TreeIndex
    label: str                      # e.g. "fla 0.6.0"
    version: Optional[str]
    distributions: list[str] = field(default_factory=list)


def release_version(root: Path, package: str, distributions: Sequence[str] = ()) -> Optional[str]:
    versions = {d.partition("==")[2].strip() for d in distributions if "==" in d}
    if len(versions) == 1:
        return versions.pop()
    init = Path(root) / package / "__init__.py"
    try:
        m = _VERSION_RE.search(read_source(init).text)
    except UsageError:
        m = None
    return m.group(1) if m else None


@dataclass
class DriftRun:
    """All manifests of one run, plus the port citations (computed once per port/tree pair)."""
    manifests: list[ManifestDrift]
    citations: list[CitationDrift]
    from_label: str
    to_label: str
    from_version: Optional[str] = None
    to_version: Optional[str] = None
    # kept for --write-manifest (not serialised)
    sources: dict[str, Manifest] = field(default_factory=dict, repr=False)
    port_indexes: dict[str, TreeIndex] = field(default_factory=dict, repr=False)

    @property
    def changed_citations(self) -> list[CitationDrift]:
        return [c for c in self.citations if c.status in (CITE_CHANGED, CITE_RELOCATED)]

    @property
    def changed(self) -> bool:
        return any(m.changed for m in self.manifests) or bool(self.changed_citations)

    @property
    def three_way(self) -> bool:
        return any(s.port is not None for m in self.manifests for s in m.symbols)

    def citation_counts(self) -> dict[str, int]:
        c = Counter(x.status for x in self.citations)
        return {k: c.get(k, 0) for k in (CITE_CHANGED, CITE_RELOCATED, CITE_UNCHANGED, CITE_UNKNOWN)}

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return {"from": self.from_label, "to": self.to_label, "changed": self.changed,
                "checklist": [asdict(item) for item in checklist(self)],
                "manifests": [m.to_dict() for m in self.manifests],
                "citations": {"counts": self.citation_counts(),
                              "items": [asdict(c) for c in self.citations if c.status != CITE_UNCHANGED]}}


# ---------------------------------------------------------------------------------------------
# entry points

def top_symbol(r: Resolved) -> str:
    return f"{r.module.module}.{r.definition.name.split('.')[0]}"


def entry_points(manifest: Manifest, matcher: Matcher) -> list[str]:
    """The manifest's declared ``entry_points``; else the manifest symbols no other manifest
    symbol uses (the roots the closure was computed from)."""
    if manifest.entry_points:
        return list(manifest.entry_points)
    found: dict[str, Resolved] = {}
    for e in manifest.entries:
        r = matcher.resolve_old(e.symbol)
        if r is not None and "." not in r.definition.name:
            found[e.symbol] = r
    used: set[str] = set()
    for r in found.values():
        own = top_symbol(r)
        for name in r.definition.uses:
            f = resolve_use(matcher.old, r.module, name)
            if f is not None and top_symbol(f) != own:
                used.add(top_symbol(f))
    return [s for s, r in found.items() if top_symbol(r) not in used]


# ---------------------------------------------------------------------------------------------
# manifests

def _stage_for(module: str, by_module: dict[str, Counter], stage_order: list[str]) -> Optional[str]:
    """The stage whose (new) modules share the longest dotted prefix with ``module``."""
    best, best_len = None, 0
    parts = module.split(".")
    for mod, stages in by_module.items():
        other = mod.split(".")
        n = 0
        while n < min(len(parts), len(other)) and parts[n] == other[n]:
            n += 1
        if n == len(parts) == len(other):
            n += 100   # the same module wins
        if n > best_len:
            best, best_len = stages.most_common(1)[0][0], n
    if best is not None and best_len >= 3 or best_len >= 100:
        return best
    return None


def drift_manifest(manifest: Manifest, matcher: Matcher, from_label: str, to_label: str,
                   entries: Optional[list[str]] = None,
                   sides: Optional[tuple["Release", "Release"]] = None) -> ManifestDrift:
    old_ix, new_ix = matcher.old, matcher.new
    package = manifest.upstream.package
    for e in entries or []:
        if matcher.resolve_old(e) is None:
            raise UsageError(f"entry point '{e}' is not defined in the {from_label} tree")
    roots = entries or entry_points(manifest, matcher)
    # the new closure, from the entry points as found in the new tree
    new_roots = []
    for sym in roots:
        loc = matcher.locate(sym)
        if loc is not None and loc.new is not None:
            new_roots.append(loc.new.symbol)
    if roots and not new_roots:
        raise lost_entry_points(manifest, roots, matcher, sides)
    new_items = closure(new_ix, new_roots, package) if new_roots else []
    in_new = {it.symbol for it in new_items}
    matcher.preferred |= {it.module for it in new_items}
    located: dict[str, Optional[Located]] = {e.symbol: matcher.locate(e.symbol) for e in manifest.entries}
    # rename guesses for what was not found by name, among definitions new in this release
    taken = {loc.new.symbol for loc in located.values() if loc is not None and loc.new is not None}
    # not found by name, or found by name only outside the new closure (a backend's copy)
    missing = [s for s, loc in located.items() if loc is not None and (loc.new is None or loc.weak)]
    if missing:
        pool_modules = [located[s].old.module.module for s in missing]
        pool_modules += [loc.new.module.module for loc in located.values()
                         if loc is not None and loc.new is not None and not loc.weak
                         and loc.old.module.module in set(pool_modules)]
        pool_modules += [it.module for it in new_items]
        pool = matcher.rename_pool(pool_modules, taken)
        guesses = []
        for s in missing:
            g = matcher.guess_rename(located[s].old, pool)
            if g is not None:
                guesses.append((g[1], s, g[0]))
        for score, s, cand in sorted(guesses, key=lambda t: -t[0]):
            if cand.symbol in taken:
                continue
            taken.add(cand.symbol)
            loc = located[s]
            if loc.new is not None:
                taken.discard(loc.new.symbol)
            same_name = cand.definition.short == loc.old.definition.short
            loc.new, loc.weak = cand, False
            loc.how = ("same" if cand.module.module == loc.old.module.module else "moved") if same_name \
                else "renamed"
            loc.score = None if same_name else round(score, 3)
            loc.body_changed = matcher.tok(loc.old) != matcher.tok(cand)
    symbols = []
    for e in manifest.entries:
        loc = located[e.symbol]
        if loc is None:
            symbols.append(SymbolDrift(e.symbol, e.stage_id, e.kind or "?", NOT_IN_FROM,
                                       note=f"not defined in the {from_label} tree"))
            continue
        old = loc.old
        sd = SymbolDrift(e.symbol, e.stage_id, old.definition.kind, UNCHANGED,
                         old_ref=matcher.ref(old_ix, old), body_changed=loc.body_changed, score=loc.score)
        if loc.new is None:
            sd.status = REMOVED
        else:
            new = loc.new
            sd.new_symbol = new.symbol
            sd.new_ref = matcher.ref(new_ix, new)
            sd.status = {"renamed": RENAMED, "moved": MOVED}.get(
                loc.how, BODY_CHANGED if loc.body_changed else UNCHANGED)
            sd.signature = diff_definitions(old.module, old.definition, new.module, new.definition)
            if new_items:
                sd.reached = top_symbol(new) in in_new
        symbols.append(sd)
    matched = {s.new_symbol for s in symbols if s.new_symbol}
    by_module: dict[str, Counter] = {}
    for s in symbols:
        if s.new_symbol:
            by_module.setdefault(s.new_symbol.rsplit(".", 1)[0], Counter())[s.stage] += 1
    order = [st.id for st in manifest.stages]
    new_symbols = []
    for it in new_items:
        if it.symbol in matched:
            continue
        info = new_ix.module(it.module)
        d = info.definitions[it.symbol.rsplit(".", 1)[1]]
        new_symbols.append(NewSymbol(it.symbol, it.module, it.kind,
                                     f"{new_ix.relpath(info.path)}:L{d.start}-L{d.end}", it.reached_from,
                                     _stage_for(it.module, by_module, order)))
    new_symbols.sort(key=lambda n: (n.module, int(n.ref.rsplit(":L", 1)[1].split("-")[0])))
    old_items = closure(old_ix, [r for r in roots if matcher.resolve_old(r) is not None], package) \
        if roots else []
    listed = {e.symbol for e in manifest.entries}
    closure_removed = {}
    for it in old_items:     # helpers the old closure had and the new release dropped
        if it.symbol not in listed:
            loc = matcher.locate(it.symbol)
            if loc is not None and loc.new is None:
                closure_removed[it.symbol] = it.kind
    return ManifestDrift(manifest=manifest.name, manifest_path=str(manifest.path), from_label=from_label,
                         to_label=to_label, entry_points=list(roots), new_entry_points=new_roots,
                         symbols=symbols, new_symbols=new_symbols, old_closure_size=len(old_items),
                         new_closure_size=len(new_items), closure_removed=closure_removed)


def _record_owner(root: Path, relpath: str) -> Optional[str]:
    """The distribution (``name version``) whose wheel RECORD lists ``relpath`` under ``root``."""
    for record in sorted(Path(root).glob("*.dist-info/RECORD")):
        try:
            text = read_regular(record, MAX_SOURCE_BYTES, "wheel RECORD").decode("utf-8", "replace")
        except UsageError:
            continue
        if any(line.split(",", 1)[0] == relpath for line in text.splitlines()):
            name, _, version = record.parent.name[:-len(".dist-info")].partition("-")
            return f"{name.replace('_', '-')} {version}"
    return None


def lost_entry_points(manifest: Manifest, roots: Sequence[str], matcher: Matcher,
                      sides: Optional[tuple["Release", "Release"]]) -> UsageError:
    """The usage error for a new tree that has none of the entry points: most often a pin that
    names only some of the upstream's distributions (fla-core without flash-linear-attention)."""
    why = []
    for sym in roots:
        old = matcher.resolve_old(sym)
        if old is None:
            why.append(f"{sym} (not in the old tree either)")
            continue
        rel = matcher.old.relpath(old.module.path)
        owner = _record_owner(matcher.old.root, rel)
        present = matcher.new.has_module(old.module.module)
        where = (f"{rel} is shipped by {owner} in the old tree" if owner
                 else f"{rel} is in the old tree")
        why.append(f"{sym} ({where}; the new tree {'has the module but not the name' if present else 'has no ' + rel})")
    side, hint = "", ""
    if sides is not None:
        new = sides[1]
        side = f" ({', '.join(new.distributions) or new.label})"
        owners = {w.split(" shipped by ")[1].split(" in the old tree")[0].split(" ")[0]
                  for w in why if " shipped by " in w}
        named = {d.partition("==")[0].strip().lower().replace("_", "-") for d in new.distributions}
        missing = sorted(o for o in owners if o.lower() not in named)
        if new.distributions and missing:
            pins = list(new.distributions) + [f"{o}=={new.version or 'VERSION'}" for o in missing]
            hint = f"; the new side names no {', '.join(missing)}: add it (--to {','.join(pins)})"
    return UsageError(f"{manifest.name}: none of the {len(roots)} entry point(s) is defined in the new tree"
                      f"{side}, which would read as every symbol removed: " + "; ".join(why) + hint)

# ---------------------------------------------------------------------------------------------
# citations

def _module_of_path(path: str) -> str:
    parts = path[:-3].split("/") if path.endswith(".py") else path.split("/")
    if parts and parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _covered(info: ModuleInfo, c: Citation) -> list[Definition]:
    """Old definitions a citation's range covers: whole top-level ones, else methods, else the
    innermost definition that contains the range."""
    def inside(d: Definition) -> bool:
        return any(c.start <= s and e <= c.end for s, e in (d.spans or [(d.start, d.end)]))
    tops = [d for n, d in info.definitions.items() if "." not in n and inside(d)]
    if tops:
        return tops
    methods = [d for n, d in info.definitions.items() if "." in n and inside(d)]
    if methods:
        return methods
    containing = [d for d in info.definitions.values() if d.start <= c.start and c.end <= d.end]
    return [min(containing, key=lambda d: d.end - d.start)] if containing else []


def port_modules(root: Path, package: str, extra: Sequence[str] = ()) -> list[str]:
    """The modules of the port package the manifest names (``vllm.model_executor.layers.fla.ops``,
    never all of ``vllm``), plus ``extra`` (modules the manifest places symbols in elsewhere)."""
    base = Path(root).joinpath(*package.split("."))
    out = []
    paths = sorted(base.rglob("*.py")) if base.is_dir() else []
    if not paths and base.with_suffix(".py").is_file():
        paths = [base.with_suffix(".py")]
    for path in paths:
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if all(p.isidentifier() for p in parts):
            out.append(".".join(parts))
    return list(dict.fromkeys(out + [m for m in extra if m]))


def drift_citations(port: TreeIndex, port_package: str, label: str, from_version: str, matcher: Matcher,
                    to_version: Optional[str], extra_modules: Sequence[str] = ()) -> list[CitationDrift]:
    out: list[CitationDrift] = []
    memo: dict[tuple[str, str], Located] = {}
    for mod in port_modules(port.root, port_package, extra_modules):
        info = port.module(mod)
        if info is None:
            continue
        for qual, d in info.definitions.items():
            for c in d.citations:
                if c.label != label or c.version != from_version:
                    continue
                out.append(_one_citation(port, info, qual, c, matcher, memo, label, to_version))
    return out


def _one_citation(port: TreeIndex, info: ModuleInfo, qual: str, c: Citation, matcher: Matcher,
                  memo: dict, label: str, to_version: Optional[str]) -> CitationDrift:
    cd = CitationDrift(port_symbol=f"{info.module}.{qual}", port_file=port.relpath(info.path),
                       port_line=c.line, citation=c.raw or format_citation(c.path, c.start, c.end, c.label,
                                                                            c.version), status=CITE_UNCHANGED)
    old_info = matcher.old.module(_module_of_path(c.path))
    if old_info is None:
        cd.status = CITE_UNKNOWN
        return cd
    defs = _covered(old_info, c)
    if not defs:
        old_text = matcher.src.span(old_info.path, c.start, c.end)
        new_path = matcher.new.root / c.path
        new_text = matcher.src.span(str(new_path), c.start, c.end) if is_regular_file(new_path) else None
        cd.status = CITE_UNCHANGED if new_text == old_text else CITE_CHANGED
        return cd
    news = []
    for d in defs:
        key = (old_info.module, d.name)
        if key not in memo:
            memo[key] = matcher.locate_resolved(Resolved(old_info, d))
        loc = memo[key]
        sym = f"{old_info.module}.{d.name}"
        cd.covers.append(sym)
        if loc.new is None:
            cd.changes.append(f"{sym}: removed")
        elif loc.how == "renamed":
            cd.changes.append(f"{sym}: renamed to {loc.new.symbol}")
        elif loc.body_changed:
            cd.changes.append(f"{sym}: body changed" + (f" (now {loc.new.symbol})" if loc.how == "moved" else ""))
        if loc.new is not None:
            news.append(loc.new)
    if cd.changes:
        cd.status = CITE_CHANGED
    files = {r.module.path for r in news}
    if news and len(files) == 1:
        path = matcher.new.relpath(news[0].module.path)
        start = min(r.definition.start for r in news)
        end = max(r.definition.end for r in news)
        if cd.status != CITE_CHANGED and (path != c.path or start != c.start or end != c.end):
            cd.status = CITE_RELOCATED
        if cd.status != CITE_UNCHANGED:
            cd.suggested = format_citation(path, start, end, label, to_version or "?")
    elif news and cd.status != CITE_CHANGED:
        cd.status = CITE_RELOCATED
    return cd


# ---------------------------------------------------------------------------------------------
# a whole run

Progress = Callable[[str], None]


def run_drift(manifests: list[Manifest], sides: Callable[[Manifest], tuple[Release, Release]],
              port_for: Optional[Callable[[Manifest], Optional[tuple[TreeIndex, str]]]] = None,
              entries: Optional[list[str]] = None, rename_threshold: float = 0.65,
              progress: Optional[Progress] = None, citations: bool = True) -> DriftRun:
    """Drift of every manifest. ``sides(m)`` gives its (from, to) releases; ``port_for(m)`` the port
    index and package (None: no port), for the three-way states and, unless ``citations`` is off,
    the port's citations. Matchers and citation results are shared between manifests that compare
    the same trees."""
    if not manifests:
        raise UsageError("no manifest to compare")
    results, cites = [], []
    matchers: dict[tuple, Matcher] = {}
    threeways: dict[tuple, ThreeWay] = {}
    ports: dict[tuple, tuple] = {}
    port_indexes: dict[str, TreeIndex] = {}
    pair = None
    for m in manifests:
        o, n = sides(m)
        pair = (o, n)
        key = (str(o.root), str(n.root), m.upstream.package)
        if key not in matchers:
            matchers[key] = Matcher(o.index, n.index, m.upstream.package, rename_threshold)
        matcher = matchers[key]
        if progress:
            progress(f"drift of {m.name}: {o.label} -> {n.label}")
        md = drift_manifest(m, matcher, o.label, n.label, entries, sides=(o, n))
        results.append(md)
        port = port_for(m) if port_for is not None else None
        if port is None:
            continue
        port_indexes[m.name] = port[0]
        tkey = (str(port[0].root), key)
        if tkey not in threeways:
            cache = port[0].cache_dir.parent if port[0].cache_dir is not None else None
            threeways[tkey] = ThreeWay(matcher, port[0], n.version, cache)
        if progress:
            progress(f"three-way: where {m.port.package} stands")
        classify_manifest(md, m, threeways[tkey])
        cite_version = o.version or m.citation_version   # citations of the from-release only
        # only `Source:` lines in the port's docstrings drift with it; a sidecar or no citations:
        # nothing to walk (the port is then read only where the manifest places its entries)
        in_docstrings = any(p.style == DOCSTRING for p in [m.citations] +
                            [st.citations for st in m.stages if st.citations is not None])
        if citations and cite_version and in_docstrings:
            extra = [port[0].split_symbol(p)[0] for e in m.entries for p in m.port_symbols(e)]
            entry = ports.setdefault(tkey, (port, matcher, m.citation_label, cite_version, n, []))
            entry[5].extend(x for x in extra if x)
    for tw in threeways.values():
        tw.store.flush()
    # citations last, so that every manifest's new closure guides the search by name
    for port, matcher, label, version, n, extra in ports.values():
        if progress:
            progress(f"checking the citations of {port[1]}")
        cites.extend(drift_citations(port[0], port[1], label, version, matcher, n.version, extra))
    o, n = pair
    return DriftRun(results, cites, o.label, n.label, o.version, n.version,
                    sources={m.name: m for m in manifests}, port_indexes=port_indexes)
