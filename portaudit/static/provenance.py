"""Which upstream version a port's definitions came from: per definition and overall.

Real copies are taken from the upstream's main branch between releases, and nobody writes down
the commit. For each manifest entry this compares the port's definition (canonical form,
:mod:`portaudit.static.body`) with the upstream definition at every candidate version:

* git candidates: the first-parent commits of ``until`` (after ``since``) that change one of the
  files the manifest reaches, plus the tagged commits on that line; each distinct file version
  (blob) is read once (``git cat-file --batch``) and normalised with :mod:`ast`, so hundreds of
  commits cost seconds;
* release candidates: pinned distributions or local trees, read from disk.

An entry is *identical* at a candidate when the fingerprints agree (a class: its class-level
statements and all methods); otherwise its *closest* candidate is the one with the highest
similarity. Overall, the closest candidate is the one where the most entries are identical
(ties: higher total similarity, then the newest). Nothing is imported or run.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from portaudit.safe_io import is_regular_file
from portaudit.static.body import Canonical, Scope, canonical, canonical_source, joined, similarity
from portaudit.static.gittree import GitRepo
from portaudit.static.index.body_source import BodySource, extract_tree, module_imports
from portaudit.static.index.model import CLASS_KINDS, Resolved
from portaudit.static.index.tree import TreeIndex
from portaudit.static.manifest import Entry, Manifest

Progress = Callable[[str], None]


@dataclass
class Candidate:
    label: str                       # "v0.3.2+14 (1a2b3c4d5e)" or "fla-core==0.2.2"
    commit: Optional[str] = None     # full id for git candidates
    date: Optional[str] = None
    tags: list[str] = field(default_factory=list)


@dataclass
class EntryProvenance:
    symbol: str
    port_symbol: str
    upstream_path: str
    identical: list[int] = field(default_factory=list)     # candidate indices
    closest: Optional[int] = None
    closest_similarity: float = 0.0
    absent: list[int] = field(default_factory=list)        # candidates without the definition
    note: Optional[str] = None                             # why it was not compared

    def to_dict(self, cands: list[Candidate]) -> dict:
        return {"symbol": self.symbol, "port_symbol": self.port_symbol, "upstream_path": self.upstream_path,
                "identical_at": [cands[i].label for i in self.identical],
                "identical_ranges": [f"{cands[a].label} .. {cands[b].label}" if a != b else cands[a].label
                                     for a, b in runs(self.identical)],
                "closest": cands[self.closest].label if self.closest is not None else None,
                "closest_commit": cands[self.closest].commit if self.closest is not None else None,
                "closest_similarity": round(self.closest_similarity, 4), "note": self.note}


@dataclass
class ProvenanceResult:
    manifest: str
    candidates: list[Candidate]
    entries: list[EntryProvenance]
    scores: list[tuple[int, float]]          # per candidate: (identical entries, total similarity)

    @property
    def best(self) -> Optional[int]:
        if not self.candidates:
            return None
        return max(range(len(self.candidates)), key=lambda i: (self.scores[i][0], self.scores[i][1], i))

    def equally_close(self) -> list[int]:
        b = self.best
        if b is None:
            return []
        return [i for i in range(len(self.candidates)) if self.scores[i][0] == self.scores[b][0]]

    def to_dict(self) -> dict:
        b = self.best
        compared = [e for e in self.entries if e.note is None]
        return {"schema": "portaudit.provenance/1", "manifest": self.manifest,
                "candidates": len(self.candidates),
                "closest": None if b is None else {
                    "label": self.candidates[b].label, "commit": self.candidates[b].commit,
                    "date": self.candidates[b].date, "tags": self.candidates[b].tags,
                    "identical": self.scores[b][0], "compared": len(compared),
                    "equally_close": [self.candidates[i].label for i in self.equally_close()]},
                "entries": [e.to_dict(self.candidates) for e in self.entries]}


def runs(indices: list[int]) -> list[tuple[int, int]]:
    """Contiguous runs of sorted candidate indices."""
    out: list[tuple[int, int]] = []
    for i in indices:
        if out and out[-1][1] == i - 1:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return out


# ---------------------------------------------------------------------------------------------
# the port side

@dataclass
class _Target:
    entry: Entry
    port_symbol: str
    module: str                   # upstream module of the entry
    name: str                     # qualified name inside the module
    path: str                     # upstream file, relative to the root
    port: Optional[Canonical]
    is_class: bool
    renames: dict


def _port_canonical(port: TreeIndex, res: Resolved) -> Optional[Canonical]:
    scope = Scope.of(res.module, port)
    d = res.definition
    parts = [canonical(d, scope)]
    if d.kind in CLASS_KINDS:
        for m in d.methods:
            md = res.module.definitions.get(f"{d.name}.{m}")
            if md is not None:
                parts.append(canonical(md, scope))
    if any(p is None for p in parts):
        return None
    return joined(parts)


def targets(manifest: Manifest, upstream: TreeIndex, port: TreeIndex) -> tuple[list[_Target], list[EntryProvenance]]:
    """The entries to trace (one per port location) and those that cannot be traced."""
    out, skipped = [], []
    for entry in manifest.entries:
        mod, rest = upstream.split_symbol(entry.symbol)
        for psym in manifest.port_symbols(entry):
            path = upstream.module_path(mod) if mod else None
            if mod is None or path is None or not rest:
                skipped.append(EntryProvenance(entry.symbol, psym, "", note="not a definition in the upstream tree"))
                continue
            rel = upstream.relpath(str(path))
            res = port.resolve(psym)
            if res is None:
                skipped.append(EntryProvenance(entry.symbol, psym, rel, note="not defined in the port"))
                continue
            up = upstream.resolve(entry.symbol)
            name = up.definition.name if up is not None and up.module.module == mod else ".".join(rest)
            out.append(_Target(entry, psym, mod, name, rel, _port_canonical(port, res),
                               res.definition.kind in CLASS_KINDS, manifest.renames_for(entry)))
    return out, skipped


# ---------------------------------------------------------------------------------------------
# the upstream versions

class _VersionReader:
    """Canonical forms of one upstream file version, computed once per distinct content."""

    def __init__(self, internal_top: str, wanted: dict[str, set]):
        self.internal_top = internal_top
        self.wanted = wanted          # module -> the definition names to read there
        self._files: dict[str, Optional[tuple[dict[str, BodySource], Scope]]] = {}
        self._canon: dict[tuple, Optional[Canonical]] = {}
        self._by_text: dict[tuple, Optional[Canonical]] = {}

    def _file(self, key: str, module: str, is_package: bool, data: bytes):
        if key not in self._files:
            try:
                tree = ast.parse(data.decode("utf-8"))
                bodies = extract_tree(tree, self.wanted.get(module))
                imports = module_imports(tree, module, is_package)
                local = frozenset(n for n in bodies if "." not in n)
                self._files[key] = (bodies, Scope(module, imports, local, frozenset({self.internal_top})))
            except (SyntaxError, UnicodeDecodeError, ValueError, RecursionError):
                self._files[key] = None
        return self._files[key]

    def _canonical(self, b: BodySource, scope: Scope, renames: dict) -> Optional[Canonical]:
        # most definitions are unchanged between file versions: one canonical form per text
        # (the output depends on the module's imports, not on its other definitions)
        key = (b.text, b.params, scope.imports_key, tuple(sorted(renames.items())))
        if key not in self._by_text:
            self._by_text[key] = canonical_source(b.text, b.params, scope, renames)
        return self._by_text[key]

    def canonical(self, key: str, t: _Target, data: bytes) -> tuple[bool, Optional[Canonical]]:
        """(defined in this version, canonical form)."""
        ck = (key, t.name, tuple(sorted(t.renames.items())), t.is_class)
        if ck in self._canon:
            c = self._canon[ck]
            return c is not None, c
        parsed = self._file(key, t.module, t.path.endswith("__init__.py"), data)
        result = None
        if parsed is not None:
            bodies, scope = parsed
            b = bodies.get(t.name)
            if b is not None:
                parts = [self._canonical(b, scope, t.renames)]
                if t.is_class:
                    for m in b.methods:
                        mb = bodies.get(f"{t.name}.{m}")
                        if mb is not None:
                            parts.append(self._canonical(mb, scope, t.renames))
                result = joined(parts) if all(p is not None for p in parts) else None
        self._canon[ck] = result
        return result is not None, result


def trace(manifest: Manifest, upstream: TreeIndex, port: TreeIndex, sources: list[tuple[Candidate, Callable[[list[str]], dict[str, tuple[str, bytes]]]]],
          progress: Optional[Progress] = None) -> ProvenanceResult:
    """Compare every entry with every candidate; ``sources``: (candidate, read(paths) -> {path: (content
    key, bytes)})."""
    tgts, skipped = targets(manifest, upstream, port)
    paths = sorted({t.path for t in tgts})
    wanted: dict[str, set] = {}
    for t in tgts:
        wanted.setdefault(t.module, set()).add(t.name)
    reader = _VersionReader(manifest.upstream.package.split(".")[0], wanted)
    entries = {id(t): EntryProvenance(t.entry.symbol, t.port_symbol, t.path) for t in tgts}
    sims: dict[int, list[float]] = {id(t): [] for t in tgts}
    cands = [c for c, _ in sources]
    scores: list[tuple[int, float]] = []
    sim_cache: dict[tuple[str, str], float] = {}
    for ci, (cand, read) in enumerate(sources):
        if progress and ci % 25 == 0:
            progress(f"comparing with {cand.label} ({ci + 1}/{len(sources)})")
        files = read(paths)
        same, total = 0, 0.0
        for t in tgts:
            ep = entries[id(t)]
            got = files.get(t.path)
            defined, canon = reader.canonical(got[0], t, got[1]) if got is not None else (False, None)
            if not defined or canon is None or t.port is None:
                ep.absent.append(ci)
                sims[id(t)].append(-1.0)
                continue
            key = (canon.fingerprint, t.port.fingerprint)
            sim = sim_cache.get(key)
            if sim is None:
                sim = sim_cache[key] = similarity(canon, t.port)
            sims[id(t)].append(sim)
            total += sim
            if canon.fingerprint == t.port.fingerprint:
                ep.identical.append(ci)
                same += 1
        scores.append((same, total))
    out = []
    for t in tgts:
        ep = entries[id(t)]
        if t.port is None:
            ep.note = "the port definition could not be normalised"
        elif sims[id(t)]:
            best = max(range(len(cands)), key=lambda i: (sims[id(t)][i], i))
            if sims[id(t)][best] >= 0:
                ep.closest, ep.closest_similarity = best, sims[id(t)][best]
            else:
                ep.note = "absent from every candidate version"
        out.append(ep)
    return ProvenanceResult(manifest.name, cands, out + skipped, scores)


def git_sources(repo: GitRepo, paths_of: Callable[[], list[str]], until: str, since: Optional[str] = None,
                tags_only: bool = False) -> list[tuple[Candidate, Callable]]:
    """Candidates from a repository's first-parent history (see the module docstring)."""
    paths = paths_of()
    line = repo.first_parent_commits(until, since)
    names = repo.describe_line(line)
    states = repo.path_states(until, since, paths)
    tags = repo.tags()
    out = []
    blob_cache: dict[str, bytes] = {}
    state: dict[str, str] = {}
    for c in line:
        changed = c.sha in states
        if changed:
            state = states[c.sha]
        if not (c.sha in tags or (changed and not tags_only)):
            continue
        label = names[c.sha] if names[c.sha] == c.sha[:10] else f"{names[c.sha]} ({c.sha[:10]})"

        def read(ps: list[str], snapshot: dict = dict(state)) -> dict[str, tuple[str, bytes]]:
            ids = {p: snapshot[p] for p in ps if p in snapshot}
            missing = [b for b in ids.values() if b not in blob_cache]
            blob_cache.update(repo.read_blobs(missing))
            return {p: (b, blob_cache[b]) for p, b in ids.items() if b in blob_cache}

        out.append((Candidate(label, c.sha, c.date, tags.get(c.sha, [])), read))
    return out


def tree_source(label: str, root: Path) -> tuple[Candidate, Callable]:
    """A release (or any local tree) as one candidate."""
    import hashlib

    def read(ps: list[str]) -> dict[str, tuple[str, bytes]]:
        out = {}
        for p in ps:
            f = Path(root) / p
            if is_regular_file(f):
                data = f.read_bytes()
                out[p] = (hashlib.sha1(data).hexdigest(), data)
        return out

    return Candidate(label), read
