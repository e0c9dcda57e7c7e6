"""The manifest: a YAML contract naming the upstream, the port and every symbol to port.

Loaded with ``yaml.safe_load`` for values and ``yaml.compose`` for positions, so every validation
error names ``file:line:col`` and the key. Unknown keys are errors: a typo must never silently
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from portaudit.errors import UsageError
from portaudit.static.fidelity import (CitationPolicy, Renames, parse_citation_policy, parse_fidelity,
                                       parse_renames)
from portaudit.static.index.model import KINDS

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
    """Maps a key path (tuple of str/int) to the YAML position of its value (and key)."""

    def __init__(self, file: str, node: Any):
        self.file = file
        self.values: dict[tuple, Loc] = {}
        self.keys: dict[tuple, Loc] = {}
        if node is not None:
            self._walk(node, ())

    def _loc(self, mark) -> Loc:
        return Loc(self.file, mark.line + 1, mark.column + 1)

    def _walk(self, node, path: tuple) -> None:
        self.values[path] = self._loc(node.start_mark)
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = k.value
                self.keys[path + (key,)] = self._loc(k.start_mark)
                self._walk(v, path + (key,))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                self._walk(v, path + (i,))

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
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            self.fail(path, f"expected a string, got {type(value).__name__}")
        s = str(value)
        if not allow_empty and not s.strip():
            self.fail(path, "must not be empty")
        return s

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

    def dotted(self, value: Any, path: tuple) -> str:
        s = self.string(value, path)
        if not all(part.isidentifier() for part in s.split(".")):
            if "*" in s:
                return s
            self.fail(path, f"'{s}' is not a dotted Python name")
        return s


def load_manifest(path: str | Path, known_codes: Optional[set[str]] = None) -> Manifest:
    from portaudit.static.findings import CODES

    known = known_codes if known_codes is not None else set(CODES)
    path = Path(path)
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{file}: manifest file not found; pass --manifest PATH to an existing YAML file")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{file}: cannot read the manifest: {exc}")
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{file}:{mark.line + 1}:{mark.column + 1}" if mark else file
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UsageError(f"{where}: invalid YAML: {problem}")
    v = _Validator(file, _Positions(file, node), known)
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
    for i, d in enumerate(dists):
        name, sep, ver = d.partition("==")
        if not sep or not name.strip() or not ver.strip():
            v.fail(("upstream", "distributions", i), f"'{d}' is not pinned; write it as NAME==VERSION")
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

    waivers = []
    for wi, w in enumerate(v.seq(top.get("waivers"), ("waivers",))):
        wp = ("waivers", wi)
        w = v.mapping(w, wp, {"symbol": True, "code": True, "reason": False})
        code = v.string(w["code"], wp + ("code",))
        if not any(fnmatch.fnmatchcase(c, code) for c in known):
            v.fail(wp + ("code",), f"unknown finding code '{code}'; see docs/codes.md")
        reason = w.get("reason")
        waivers.append(Waiver(symbol=v.dotted(w["symbol"], wp + ("symbol",)), code=code,
                              reason="" if reason is None else v.string(reason, wp + ("reason",), True),
                              loc=v.pos.at(wp)))
    deviations = []
    for di, d in enumerate(v.seq(top.get("deviations"), ("deviations",))):
        dp = ("deviations", di)
        d = v.mapping(d, dp, {"symbol": True, "reason": True, "fixed_upstream_in": False})
        deviations.append(Deviation(symbol=v.dotted(d["symbol"], dp + ("symbol",)),
                                    reason=v.string(d["reason"], dp + ("reason",)),
                                    fixed_upstream_in=v.opt_string(d, "fixed_upstream_in", dp),
                                    loc=v.pos.at(dp)))
    entry_points = [v.dotted(e, ("entry_points", i))
                    for i, e in enumerate(v.seq(top.get("entry_points"), ("entry_points",)))]
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
            if isinstance(t["rtol"], bool) or not isinstance(t["rtol"], (int, float)) or t["rtol"] <= 0:
                v.fail(tp + ("rtol",), "expected a positive number (the RMS-ratio tolerance)")
            v.string(t["reason"], tp + ("reason",))
            tolerances.append(dict(t))
    name = v.opt_string(top, "name", ()) or path.stem
    citations = (parse_citation_policy(v, top["citations"], ("citations",))
                 if top.get("citations") is not None else CitationPolicy())
    return Manifest(path=path, name=name, upstream=upstream, port=port, stages=stages, waivers=waivers,
                    deviations=deviations, description=v.opt_string(top, "description", ()),
                    entry_points=entry_points, tolerances=tolerances, citations=citations)


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
