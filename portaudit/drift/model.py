"""The data a drift run produces (plain dataclasses; reporters read them, nothing here prints)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

# Fate of an old symbol in the new release (one per symbol, most significant first).
REMOVED = "removed"
RENAMED = "renamed"
MOVED = "moved"
BODY_CHANGED = "body changed"
UNCHANGED = "unchanged"
NOT_IN_FROM = "not in from-tree"
STATUSES = (REMOVED, RENAMED, MOVED, BODY_CHANGED, UNCHANGED, NOT_IN_FROM)

# Where the port stands (three-way), in the order a maintainer works through them.
PORT_TODO = "to do"
PORT_CONFLICT = "conflict"
PORT_LOCAL = "local change"
PORT_MISSING = "missing in port"
PORT_ALREADY = "already has it"
PORT_SAME = "unchanged"
PORT_STATES = (PORT_TODO, PORT_CONFLICT, PORT_LOCAL, PORT_MISSING, PORT_ALREADY, PORT_SAME)

# Signature change kinds (stubtest/griffe vocabulary).
PARAM_ADDED = "parameter added"
PARAM_ADDED_REQUIRED = "required parameter added"
PARAM_REMOVED = "parameter removed"
PARAM_RENAMED = "parameter renamed"
PARAM_MOVED = "parameter moved"
PARAM_KIND = "parameter kind changed"
PARAM_DEFAULT = "default changed"
PARAM_REQUIRED = "became required"
PARAM_OPTIONAL = "became optional"
MEMBER_ADDED = "member added"
MEMBER_REMOVED = "member removed"
OBJECT_KIND = "object kind changed"
SIGNATURE_KINDS = (PARAM_ADDED_REQUIRED, PARAM_ADDED, PARAM_REMOVED, PARAM_RENAMED, PARAM_MOVED, PARAM_KIND,
                   PARAM_DEFAULT, PARAM_REQUIRED, PARAM_OPTIONAL, MEMBER_ADDED, MEMBER_REMOVED, OBJECT_KIND)
# Changes that break a caller written against the old signature.
BREAKING = {PARAM_ADDED_REQUIRED, PARAM_REMOVED, PARAM_RENAMED, PARAM_MOVED, PARAM_KIND, PARAM_REQUIRED,
            MEMBER_REMOVED, OBJECT_KIND}

# Citation states.
CITE_CHANGED = "cited code changed"
CITE_RELOCATED = "cited code relocated"
CITE_UNCHANGED = "unchanged"
CITE_UNKNOWN = "cited file missing"


@dataclass
class SignatureChange:
    kind: str
    member: str               # "" for the symbol itself, else the method name ("__init__")
    param: Optional[str] = None
    old: Optional[str] = None
    new: Optional[str] = None

    @property
    def breaking(self) -> bool:
        return self.kind in BREAKING

    def describe(self) -> str:
        where = f"{self.member}: " if self.member else ""
        what = f" `{self.param}`" if self.param else ""
        if self.kind == PARAM_RENAMED:
            return f"{where}{self.kind}{what} ({self.old} -> {self.new})"
        old = self.old if self.old not in (None, self.param) else None   # "(was x)" says nothing new
        new = self.new if self.new not in (None, self.param) else None
        if old is not None and new is not None:
            return f"{where}{self.kind}{what} ({old} -> {new})"
        if new is not None:
            return f"{where}{self.kind}{what} ({new})"
        if old is not None:
            return f"{where}{self.kind}{what} (was {old})"
        return f"{where}{self.kind}{what}"


@dataclass
class PortState:
    """Where the port stands on one symbol (three-way drift; see :mod:`.threeway`)."""
    state: str                          # already has it / to do / conflict / local change / unchanged / missing
    port_symbol: str                    # where the manifest places it in the port
    port_module: Optional[str] = None   # the port module that holds (or would hold) it
    port_ref: Optional[str] = None      # file:line of the port's definition
    compared: str = "body"              # body (copies), signature or citation (translations), presence
    similarity_old: Optional[float] = None   # canonical-line similarity of the port to each release
    similarity_new: Optional[float] = None
    hunks: Optional[str] = None         # "applied/total" upstream hunks found in the port
    note: Optional[str] = None


@dataclass
class SymbolDrift:
    symbol: str                         # the manifest's (old) dotted name
    stage: str
    kind: str                           # definition kind in the old tree
    status: str
    new_symbol: Optional[str] = None    # where it is defined in the new tree
    body_changed: bool = False
    score: Optional[float] = None       # rename guess similarity (0..1)
    old_ref: Optional[str] = None       # path:La-Lb in the old tree
    new_ref: Optional[str] = None
    signature: list[SignatureChange] = field(default_factory=list)
    reached: Optional[bool] = None      # still in the new closure of the entry points
    note: Optional[str] = None
    port: Optional[PortState] = None    # three-way: the port's state (None without a port)

    @property
    def changed(self) -> bool:
        return self.status != UNCHANGED or bool(self.signature)


@dataclass
class NewSymbol:
    symbol: str
    module: str
    kind: str
    ref: str
    reached_from: Optional[str] = None
    stage: Optional[str] = None         # the stage --write-manifest puts it in


@dataclass
class CitationDrift:
    port_symbol: str
    port_file: str
    port_line: int
    citation: str                       # the citation as written
    status: str
    covers: list[str] = field(default_factory=list)          # old upstream symbols the span covers
    changes: list[str] = field(default_factory=list)         # "symbol: status" for the changed ones
    suggested: Optional[str] = None     # the citation for the new release, when it can be computed


@dataclass
class ManifestDrift:
    manifest: str
    manifest_path: str
    from_label: str
    to_label: str
    entry_points: list[str]
    new_entry_points: list[str]
    symbols: list[SymbolDrift] = field(default_factory=list)
    new_symbols: list[NewSymbol] = field(default_factory=list)
    old_closure_size: int = 0
    new_closure_size: int = 0
    # old-closure definitions the new release no longer has (symbol -> kind), and their three-way
    # state when the manifest does not list them (helpers a copy dropped or never took)
    closure_removed: dict[str, str] = field(default_factory=dict)
    removed_helpers: list[SymbolDrift] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in STATUSES if s != NOT_IN_FROM}
        for s in self.symbols:
            out[s.status] = out.get(s.status, 0) + 1
        out["signature changed"] = sum(1 for s in self.symbols if s.signature)
        out["breaking signature"] = sum(1 for s in self.symbols if any(c.breaking for c in s.signature))
        out["body changed (incl. moved/renamed)"] = sum(1 for s in self.symbols if s.body_changed)
        out["no longer reached"] = sum(1 for s in self.symbols if s.reached is False)
        out["new"] = len(self.new_symbols)
        return out

    def port_counts(self) -> dict[str, int]:
        """Three-way states (empty without a port)."""
        from collections import Counter

        rows = [s.port.state for s in self.symbols + self.removed_helpers if s.port is not None]
        if not rows:
            return {}
        c = Counter(rows)
        return {k: c.get(k, 0) for k in PORT_STATES}

    @property
    def changed(self) -> bool:
        return any(s.changed for s in self.symbols) or bool(self.new_symbols) or bool(self.closure_removed)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["counts"] = self.counts()
        d["port_counts"] = self.port_counts()
        for s, sd in zip(self.symbols, d["symbols"]):
            for c, cd in zip(s.signature, sd["signature"]):
                cd["breaking"] = c.breaking
        return d
