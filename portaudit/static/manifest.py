"""The manifest: a YAML contract naming the upstream, the port and every symbol to port.

Read with :mod:`.yaml_loader` (bounded size and alias expansion, no duplicate keys), which keeps
the node graph for positions, so every validation error names ``file:line:col`` and the key. Unknown keys are errors: a typo must never silently
disable a check. See docs/codes.md for the schema and the finding codes.

    upstream:   {package: fla, distributions: [fla-core==0.4.0, ...], version: "0.4.0"}
    port:       {package: myfla, path: .., modules: {fla.old.mod: myfla.new.mod}}
    stages:     [{id: "1", title: utilities, symbols: [fla.utils.tensor_cache,
                  {symbol: fla.ops.x.kernel, kind: kernel, port: myfla.ops.x.kernel_torch}]}]
    waivers:    [{symbol: fla.utils.device, code: PA102, reason: "..."}]
    deviations: [{symbol: fla.layers.kda.KimiDeltaAttention.forward, reason: "...",
                  fixed_upstream_in: "0.4.1"}]

Copies (vendored code) add: ``upstream: {git: REPO, rev: COMMIT}`` or ``{archive: FILE}``;
``port: {fidelity: copy, renames: {q: query}}`` (``fidelity`` per stage and entry too, an entry
may list several ``port`` locations and its own ``renames``); ``citations: {style: sidecar, file:
F}`` or ``{style: off, reason: ...}`` (per manifest or stage). See :mod:`.fidelity`.
"""

from __future__ import annotations

import fnmatch
import keyword
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from packaging.version import Version

from portaudit.errors import UsageError
from portaudit.static.fidelity import (CitationPolicy, Renames, parse_citation_policy, parse_fidelity,
                                       parse_renames)
from portaudit.static.index.model import KINDS
from portaudit.static.requirements import RequirementError, parse_pinned
from portaudit.static.yaml_loader import load_yaml_file, parse_yaml

ENTRY_KINDS = tuple(KINDS)


@dataclass
class Loc:
    file: str
    line: int   # 1-based
    col: int    # 1-based

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass
class Entry:
    symbol: str
    stage_id: str
    kind: Optional[str] = None
    port: Optional[str] = None
    note: Optional[str] = None
    loc: Optional[Loc] = None
    fidelity: Optional[str] = None                          # copy | translation (None: the stage's)
    renames: Renames = field(default_factory=dict)          # upstream name -> port name
    extra_ports: list[str] = field(default_factory=list)    # further port locations of the symbol


@dataclass
class Stage:
    id: str
    title: str
    entries: list[Entry] = field(default_factory=list)
    loc: Optional[Loc] = None
    fidelity: Optional[str] = None
    citations: Optional[CitationPolicy] = None


@dataclass
class Waiver:
    symbol: str
    code: str
    reason: str
    loc: Optional[Loc] = None

    def matches(self, symbol: str, code: str) -> bool:
        sym_ok = (fnmatch.fnmatchcase(symbol, self.symbol)
                  or symbol.startswith(self.symbol + "."))
        return sym_ok and fnmatch.fnmatchcase(code, self.code)


@dataclass
class Deviation:
    symbol: str
    reason: str
    fixed_upstream_in: Optional[str] = None
    loc: Optional[Loc] = None

    def matches(self, symbol: str) -> bool:
        return symbol == self.symbol or symbol.startswith(self.symbol + ".") \
            or self.symbol.startswith(symbol + ".")


@dataclass
class Upstream:
    package: str
    distributions: list[str] = field(default_factory=list)
    version: Optional[str] = None
    label: Optional[str] = None
    path: Optional[str] = None
    git: Optional[str] = None          # a local repository (relative to the manifest) ...
    rev: Optional[str] = None          # ... at this commit or tag
    archive: Optional[str] = None      # or a tar/zip of the tree


@dataclass
class Port:
    package: str
    path: Optional[str] = None
    modules: dict[str, str] = field(default_factory=dict)
    fidelity: str = "translation"      # the default kind of port for every stage
    renames: Renames = field(default_factory=dict)


@dataclass
class Manifest:
    path: Path
    name: str
    upstream: Upstream
    port: Port
    stages: list[Stage]
    waivers: list[Waiver] = field(default_factory=list)
    deviations: list[Deviation] = field(default_factory=list)
    description: Optional[str] = None
    # The roots the closure was computed from (scaffold's --entry); drift recomputes from them.
    entry_points: list[str] = field(default_factory=list)
    # ``numerics.tolerances`` overrides, validated here and applied by `portaudit invariants`.
    tolerances: list[dict] = field(default_factory=list)
    citations: CitationPolicy = field(default_factory=CitationPolicy)
    # The whole ``numerics`` section as loaded (cases, implementation, tolerances), so tools that
    # rewrite the manifest (drift --write-manifest) carry it over unchanged.
    numerics: dict = field(default_factory=dict)

    @property
    def entries(self) -> list[Entry]:
        return [e for s in self.stages for e in s.entries]

    @property
    def citation_label(self) -> str:
        return self.upstream.label or self.upstream.package

    @property
    def citation_version(self) -> Optional[str]:
        if self.upstream.version:
            return self.upstream.version
        if self.upstream.rev:
            return self.upstream.rev
        versions = {d.partition("==")[2].strip() for d in self.upstream.distributions}
        return versions.pop() if len(versions) == 1 else None

    def port_symbol(self, entry: Entry) -> str:
        """Where the port is expected to define ``entry``: mirrored path unless overridden."""
        if entry.port:
            return entry.port
        return self.port_name_for(entry.symbol)

    def port_symbols(self, entry: Entry) -> list[str]:
        """Every port location of ``entry`` (one upstream symbol may be ported several times)."""
        return [self.port_symbol(entry)] + list(entry.extra_ports)

    def stage_of(self, entry: Entry) -> Optional[Stage]:
        return next((s for s in self.stages if s.id == entry.stage_id), None)

    def fidelity_of(self, entry: Entry) -> str:
        """``copy`` (the body is compared) or ``translation``: the entry's, its stage's, the port's."""
        stage = self.stage_of(entry)
        return entry.fidelity or (stage.fidelity if stage else None) or self.port.fidelity

    def citation_policy(self, entry: Entry) -> CitationPolicy:
        stage = self.stage_of(entry)
        return stage.citations if stage is not None and stage.citations is not None else self.citations

    def renames_for(self, entry: Entry) -> Renames:
        """Upstream name -> port name for this entry: the port's, the entry's, and the short names
        of entries the manifest places under another name (``{symbol: a.f, port: b.g}``: f -> g)."""
        out = dict(self.implied_renames())
        out.update(self.port.renames)
        out.update(entry.renames)
        return out

    def implied_renames(self) -> Renames:
        if not hasattr(self, "_implied"):
            implied: dict[str, str] = {}
            for e in self.entries:
                if e.port:
                    up, po = e.symbol.rsplit(".", 1)[-1], e.port.rsplit(".", 1)[-1]
                    if up != po:
                        implied.setdefault(up, po)
            self._implied = implied
        return self._implied

    def port_name_for(self, symbol: str) -> str:
        best = ""
        for up_mod in self.port.modules:
            if (symbol == up_mod or symbol.startswith(up_mod + ".")) and len(up_mod) > len(best):
                best = up_mod
        if best:
            return self.port.modules[best] + symbol[len(best):]
        pkg = self.upstream.package
        if symbol == pkg or symbol.startswith(pkg + "."):
            return self.port.package + symbol[len(pkg):]
        return symbol


# --------------------------------------------------------------------------------------------
# loading and validation

class _Positions:
    """Maps a key path (tuple of str/int) to the YAML position of its value (and key), and to the
    source text of scalar values (so '0.40' stays '0.40' where a string is expected)."""

    def __init__(self, file: str, node: Any):
        self.file = file
        self.values: dict[tuple, Loc] = {}
        self.keys: dict[tuple, Loc] = {}
        self.raw: dict[tuple, str] = {}
        if node is not None:
            self._walk(node, ())

    def _loc(self, mark) -> Loc:
        return Loc(self.file, mark.line + 1, mark.column + 1)

    def _walk(self, node, path: tuple) -> None:
        # iterative: the node graph was measured by yaml_loader (bounded size and depth)
        todo = [(node, path)]
        while todo:
            node, path = todo.pop()
            self.values[path] = self._loc(node.start_mark)
            if isinstance(node, yaml.ScalarNode):
                self.raw[path] = node.value
            elif isinstance(node, yaml.MappingNode):
                for k, v in node.value:
                    key = k.value if isinstance(k, yaml.ScalarNode) else repr(k.value)
                    self.keys[path + (key,)] = self._loc(k.start_mark)
                    todo.append((v, path + (key,)))
            elif isinstance(node, yaml.SequenceNode):
                todo.extend((v, path + (i,)) for i, v in enumerate(node.value))

    def at(self, path: tuple, key: bool = False) -> Loc:
        table = self.keys if key else self.values
        p = tuple(path)
        while p:
            if p in table:
                return table[p]
            if p in self.values:
                return self.values[p]
            p = p[:-1]
        return self.values.get((), Loc(self.file, 1, 1))


def _keystr(path: tuple) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<document>"


class _Validator:
    def __init__(self, file: str, pos: _Positions, known_codes: set[str]):
        self.file = file
        self.pos = pos
        self.known_codes = known_codes

    def fail(self, path: tuple, msg: str, key: bool = False) -> None:
        raise UsageError(f"{self.pos.at(path, key)}: manifest key '{_keystr(path)}': {msg}")

    def mapping(self, value: Any, path: tuple, allowed: dict[str, bool]) -> dict:
        """``allowed``: key -> required."""
        if not isinstance(value, dict):
            self.fail(path, f"expected a mapping, got {type(value).__name__}")
        for k in value:
            if k not in allowed:
                close = [a for a in allowed if a.startswith(str(k)[:3])]
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                self.fail(path + (k,), f"unknown key{hint}; allowed keys: {', '.join(allowed)}", key=True)
        for k, required in allowed.items():
            if required and k not in value:
                self.fail(path, f"missing required key '{k}'")
        return value

    def string(self, value: Any, path: tuple, allow_empty: bool = False) -> str:
        if not isinstance(value, str):
            # YAML 1.1 reads `version: 0.40` as 0.4, `id: 010` as 8, `title: on` as True: where a
            # string is expected, take what was written
            raw = self.pos.raw.get(tuple(path))
            if value is None or isinstance(value, (list, dict)) or raw is None:
                self.fail(path, f"expected a string, got {'nothing' if value is None else type(value).__name__}")
            value = raw
        if not allow_empty and not value.strip():
            self.fail(path, "must not be empty")
        if "\0" in value:
            self.fail(path, "contains a NUL character")
        return value

    def opt_string(self, d: dict, key: str, path: tuple, allow_empty: bool = False) -> Optional[str]:
        if key not in d or d[key] is None:
            return None
        return self.string(d[key], path + (key,), allow_empty)

    def seq(self, value: Any, path: tuple) -> list:
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail(path, f"expected a list, got {type(value).__name__}")
        return value

    def dotted(self, value: Any, path: tuple, pattern: bool = False) -> str:
        """A dotted Python name; with ``pattern``, fnmatch wildcards are allowed too (waivers)."""
        s = self.string(value, path)
        parts = s.split(".")
        if pattern and any(c in s for c in "*?["):
            if not all(p and all(ch.isalnum() or ch in "_*?[]!-" for ch in p) for p in parts):
                self.fail(path, f"'{s}' is not a dotted name pattern")
            return s
        if not is_dotted_name(s):
            hint = " (wildcards are allowed only in waivers)" if any(c in s for c in "*?[") else ""
            self.fail(path, f"'{s}' is not a dotted Python name{hint}")
        return s


def is_dotted_name(text: str) -> bool:
    """``pkg.mod.Name``: identifiers that are not keywords, joined by dots."""
    return bool(text) and all(p.isidentifier() and not keyword.iskeyword(p) for p in text.split("."))


def _broad_waiver(symbol: str, code: str, known: set[str], package: str) -> Optional[str]:
    """Why a waiver would silence far more than one symbol's findings (None when it does not).

    A symbol pattern with a wildcard in its first part matches every package; a pattern that is
    the package followed only by wildcards (``fla.*``) with a code pattern matching every code
    waives the whole manifest."""
    parts = symbol.split(".")
    if any(c in parts[0] for c in "*?["):
        return (f"the waiver symbol '{symbol}' is not anchored to a package, so it would waive findings of "
                f"every symbol; start it with the upstream package (e.g. '{package}.utils.*')")
    all_codes = bool(known) and all(fnmatch.fnmatchcase(c, code) for c in known)
    if all_codes and len(parts) > 1 and all(p and set(p) <= set("*?") for p in parts[1:]):
        return (f"the waiver {{symbol: '{symbol}', code: '{code}'}} waives every finding of the package; "
                "name the symbols or the codes it is for")
    return None


# The name is a file name (manifests/baseline/<name>.json): one plain path component.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def manifest_name_problem(name: str) -> Optional[str]:
    """Why ``name`` cannot name a manifest (None when it can)."""
    if not NAME_RE.fullmatch(name):
        return ("must be 1-100 characters from A-Z a-z 0-9 . _ - starting with a letter or digit "
                "(it names the baseline file)")
    return None


def _release(v: "_Validator", d: dict, key: str, path: tuple) -> Optional[str]:
    """An optional upstream release (``fixed_upstream_in: "0.4.1"``): a PEP 440 version, as written."""
    text = v.opt_string(d, key, path)
    if text is not None:
        try:
            Version(text)
        except ValueError:   # InvalidVersion, or a release number past Python's int digit limit
            v.fail(path + (key,), f"'{text[:80]}' is not a release version (PEP 440, e.g. \"0.4.1\")")
    return text


def load_manifest(path: str | Path, known_codes: Optional[set[str]] = None, text: Optional[str] = None) -> Manifest:
    """Load and validate the manifest at ``path`` (or ``text``, as if it were that file's content:
    relative paths in it are taken relative to ``path``'s folder)."""
    from portaudit.static.findings import CODES

    known = known_codes if known_codes is not None else set(CODES)
    path = Path(path)
    file = str(path)
    if text is None and not path.exists() and not path.is_symlink():
        raise UsageError(f"{file}: manifest file not found; pass --manifest PATH to an existing YAML file")
    doc = load_yaml_file(path) if text is None else parse_yaml(text, file)
    data = doc.data
    v = _Validator(file, _Positions(file, doc.node), known)
    if data is None:
        v.fail((), "the manifest is empty; it needs 'upstream', 'port' and 'stages'")
    top = v.mapping(data, (), {"name": False, "description": False, "upstream": True, "port": True,
                               "stages": True, "waivers": False, "deviations": False,
                               "entry_points": False, "numerics": False, "citations": False})

    up = v.mapping(top["upstream"], ("upstream",),
                   {"package": True, "distributions": False, "version": False, "label": False,
                    "path": False, "git": False, "rev": False, "archive": False})
    dists = up.get("distributions") or []
    if isinstance(dists, str):
        dists = [d for d in dists.split(",") if d.strip()]
    dists = [v.string(d, ("upstream", "distributions", i)).strip()
             for i, d in enumerate(v.seq(dists, ("upstream", "distributions")))]
    seen_dists: dict[str, int] = {}
    for i, d in enumerate(dists):
        try:
            req = parse_pinned(d)
        except RequirementError as exc:
            v.fail(("upstream", "distributions", i), str(exc))
        if req.canonical_name in seen_dists:
            v.fail(("upstream", "distributions", i), f"distribution '{req.name}' is named twice")
        seen_dists[req.canonical_name] = i
    sources = [k for k in ("path", "git", "archive") if up.get(k)] + (["distributions"] if dists else [])
    if not sources:
        v.fail(("upstream",), "name 'distributions' (pinned NAME==VERSION), a local 'path', a 'git' "
                              "repository with a 'rev', or an 'archive'")
    if len(sources) > 1:
        v.fail(("upstream", sources[1]), f"name one upstream source, not both '{sources[0]}' and '{sources[1]}'",
               key=True)
    if bool(up.get("git")) != bool(up.get("rev")):
        v.fail(("upstream",), "a 'git' upstream needs 'rev' (a commit or tag) and 'rev' needs 'git'")
    upstream = Upstream(package=v.dotted(up["package"], ("upstream", "package")), distributions=dists,
                        version=v.opt_string(up, "version", ("upstream",)),
                        label=v.opt_string(up, "label", ("upstream",)),
                        path=v.opt_string(up, "path", ("upstream",)),
                        git=v.opt_string(up, "git", ("upstream",)),
                        rev=v.opt_string(up, "rev", ("upstream",)),
                        archive=v.opt_string(up, "archive", ("upstream",)))

    pt = v.mapping(top["port"], ("port",), {"package": True, "path": False, "modules": False,
                                            "fidelity": False, "renames": False})
    modules = {}
    if pt.get("modules") is not None:
        mods = v.mapping(pt["modules"], ("port", "modules"), {k: False for k in pt["modules"] or {}}) \
            if isinstance(pt["modules"], dict) else v.fail(("port", "modules"), "expected a mapping")
        for k, val in mods.items():
            modules[v.dotted(k, ("port", "modules", k))] = v.dotted(val, ("port", "modules", k))
    port = Port(package=v.dotted(pt["package"], ("port", "package")),
                path=v.opt_string(pt, "path", ("port",)), modules=modules,
                fidelity=parse_fidelity(v, pt.get("fidelity"), ("port", "fidelity")) or "translation",
                renames=parse_renames(v, pt.get("renames"), ("port", "renames")))

    stages = []
    seen_ids: dict[str, tuple] = {}
    for si, st in enumerate(v.seq(top["stages"], ("stages",))):
        sp = ("stages", si)
        st = v.mapping(st, sp, {"id": True, "title": True, "symbols": True, "fidelity": False,
                                "citations": False})
        sid = v.string(st["id"], sp + ("id",))
        if sid in seen_ids:
            v.fail(sp + ("id",), f"stage id '{sid}' is used twice")
        seen_ids[sid] = sp
        stage = Stage(id=sid, title=v.string(st["title"], sp + ("title",)), loc=v.pos.at(sp),
                      fidelity=parse_fidelity(v, st.get("fidelity"), sp + ("fidelity",)),
                      citations=(parse_citation_policy(v, st["citations"], sp + ("citations",))
                                 if st.get("citations") is not None else None))
        for ei, item in enumerate(v.seq(st["symbols"], sp + ("symbols",))):
            ep = sp + ("symbols", ei)
            if isinstance(item, dict):
                item = v.mapping(item, ep, {"symbol": True, "kind": False, "port": False, "note": False,
                                            "fidelity": False, "renames": False})
                kind = v.opt_string(item, "kind", ep)
                if kind is not None and kind not in ENTRY_KINDS:
                    v.fail(ep + ("kind",), f"unknown kind '{kind}'; one of {', '.join(ENTRY_KINDS)}")
                ports = item.get("port")
                if isinstance(ports, list) and not ports:
                    v.fail(ep + ("port",), "an empty list; name at least one port location")
                ports = [v.dotted(p, ep + ("port", i)) for i, p in enumerate(ports)] \
                    if isinstance(ports, list) else ([v.dotted(ports, ep + ("port",))] if ports is not None else [])
                entry = Entry(symbol=v.dotted(item["symbol"], ep + ("symbol",)), stage_id=sid, kind=kind,
                              port=ports[0] if ports else None, extra_ports=ports[1:],
                              note=v.opt_string(item, "note", ep), loc=v.pos.at(ep),
                              fidelity=parse_fidelity(v, item.get("fidelity"), ep + ("fidelity",)),
                              renames=parse_renames(v, item.get("renames"), ep + ("renames",)))
            else:
                entry = Entry(symbol=v.dotted(item, ep), stage_id=sid, loc=v.pos.at(ep))
            stage.entries.append(entry)
        stages.append(stage)

    if not any(s.entries for s in stages):
        v.fail(("stages",), "the manifest lists no symbols; a manifest with nothing to check would always "
               "pass (100% of 0)")
    waivers = []
    for wi, w in enumerate(v.seq(top.get("waivers"), ("waivers",))):
        wp = ("waivers", wi)
        w = v.mapping(w, wp, {"symbol": True, "code": True, "reason": False})
        code = v.string(w["code"], wp + ("code",))
        if not any(fnmatch.fnmatchcase(c, code) for c in known):
            v.fail(wp + ("code",), f"unknown finding code '{code}'; see docs/codes.md")
        symbol = v.dotted(w["symbol"], wp + ("symbol",), pattern=True)
        problem = _broad_waiver(symbol, code, known, upstream.package)
        if problem:
            v.fail(wp, problem)
        reason = w.get("reason")
        waivers.append(Waiver(symbol=symbol, code=code,
                              reason="" if reason is None else v.string(reason, wp + ("reason",), True),
                              loc=v.pos.at(wp)))
    deviations = []
    for di, d in enumerate(v.seq(top.get("deviations"), ("deviations",))):
        dp = ("deviations", di)
        d = v.mapping(d, dp, {"symbol": True, "reason": True, "fixed_upstream_in": False})
        deviations.append(Deviation(symbol=v.dotted(d["symbol"], dp + ("symbol",)),
                                    reason=v.string(d["reason"], dp + ("reason",)),
                                    fixed_upstream_in=_release(v, d, "fixed_upstream_in", dp),
                                    loc=v.pos.at(dp)))
    entry_points = [v.dotted(e, ("entry_points", i))
                    for i, e in enumerate(v.seq(top.get("entry_points"), ("entry_points",)))]
    for i, e in enumerate(entry_points):
        if e in entry_points[:i]:
            v.fail(("entry_points", i), f"'{e}' is listed twice")
    tolerances = []
    if top.get("numerics") is not None:
        # `cases` (the case registry) and `implementation` (how the port is called) are validated
        # in full by portaudit.numerics.impl_spec when `invariants`/`golden` read the manifest.
        num = v.mapping(top["numerics"], ("numerics",), {"tolerances": False, "cases": False,
                                                         "implementation": False})
        if num.get("cases") is not None:
            v.string(num["cases"], ("numerics", "cases"))
        if num.get("implementation") is not None and not isinstance(num["implementation"], (str, dict)):
            v.fail(("numerics", "implementation"), "expected a mapping or the path of an implementation YAML file")
        for ti, t in enumerate(v.seq(num.get("tolerances"), ("numerics", "tolerances"))):
            tp = ("numerics", "tolerances", ti)
            t = v.mapping(t, tp, {"op": True, "output": False, "dtype": False, "rtol": True, "reason": True})
            rtol = t["rtol"]
            if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not math.isfinite(rtol) or rtol <= 0:
                v.fail(tp + ("rtol",), f"expected a finite positive number (the RMS-ratio tolerance), got "
                       f"{v.pos.raw.get(tp + ('rtol',), rtol)!r}")
            for key in ("op", "output", "dtype"):
                if key in t:
                    v.string(t[key], tp + (key,))
            v.string(t["reason"], tp + ("reason",))
            tolerances.append(dict(t))
    name = v.opt_string(top, "name", ())
    if name is not None:
        problem = manifest_name_problem(name)
        if problem:
            v.fail(("name",), problem)
    else:
        name = path.stem
        if manifest_name_problem(name):
            v.fail((), f"the file name gives the manifest name '{name}', which {manifest_name_problem(name)}; "
                   "add a 'name:' key")
    citations = (parse_citation_policy(v, top["citations"], ("citations",))
                 if top.get("citations") is not None else CitationPolicy())
    return Manifest(path=path, name=name, upstream=upstream, port=port, stages=stages, waivers=waivers,
                    deviations=deviations, description=v.opt_string(top, "description", ()),
                    entry_points=entry_points, tolerances=tolerances,
                    numerics=dict(top["numerics"]) if isinstance(top.get("numerics"), dict) else {},
                    citations=citations)


def discover_manifests(paths: list[str | Path]) -> list[Path]:
    """Expand directories into their ``*.yaml``/``*.yml`` files (sorted); keep files as given."""
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = sorted(list(p.glob("*.yaml")) + list(p.glob("*.yml")))
            if not found:
                raise UsageError(f"{p}: no *.yaml manifests in this directory")
            out.extend(found)
        else:
            out.append(p)
    return out
