"""The ratchet: a committed baseline per manifest, so CI fails only on regressions.

``manifests/baseline/<manifest>.json`` records the accepted open findings (line-independent
keys such as ``PA201:fla.ops.kda.chunk.chunk_kda:scale``) and the minimum completeness. The gate:

* an open finding whose key is not accepted is a regression, except on a symbol the baseline
  accepted as missing (PA101/PA102/PA105): a symbol that did not exist may arrive with findings;
* completeness below ``min_percent`` is a regression;
* a symbol the baseline's manifest listed that the manifest no longer lists is a regression (the
  contract shrank: deleting an entry must not be a way to pass); schema 1 baselines, which record no
  symbols, compare the number of symbols;
* a symbol the baseline checked as a copy (its body compared with the upstream's) that the manifest
  now declares a translation is a regression (the contract weakened without a reason);
* accepted keys that no longer occur are reported as fixed: ``--update-baseline`` tightens the
  ratchet. Updating refuses to lower completeness or to accept new findings unless forced.

When the port is complete the baseline is ``{"min_percent": 100, "accepted": []}`` and the gate
demands 100% with zero unexplained findings. A manifest without a baseline file is gated that way.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from portaudit.errors import UsageError
from portaudit.safe_io import read_regular, write_file
from portaudit.static.findings import BASELINE, OPEN
from portaudit.static.manifest import manifest_name_problem
from portaudit.static.results import ManifestResult

# /2 adds "symbols" and "copies": the manifest's entries when recorded, and those checked as copies
SCHEMA = "portaudit.baseline/2"
OLD_SCHEMAS = ("portaudit.baseline/1",)
MISSING_CODES = ("PA101", "PA102", "PA105")
EPS = 1e-9
MAX_BASELINE_BYTES = 16 << 20


@dataclass
class Baseline:
    manifest: str
    min_percent: float = 100.0
    accepted: list[str] = field(default_factory=list)
    passed: int = 0
    total: int = 0
    path: Optional[Path] = None
    exists: bool = False
    symbols: Optional[list[str]] = None   # the manifest's entries when recorded (None: a schema 1 file)
    copies: Optional[list[str]] = None    # those of them checked as copies (fidelity: copy)

    @property
    def missing_symbols(self) -> set[str]:
        out = set()
        for key in self.accepted:
            code, _, rest = key.partition(":")
            if code in MISSING_CODES:
                out.add(rest.split(":")[0])
        return out


@dataclass
class GateResult:
    manifest: str
    baseline: Baseline
    percent: float
    regressions: list[str] = field(default_factory=list)     # keys of new findings
    fixed: list[str] = field(default_factory=list)           # accepted keys that are gone
    completeness_drop: bool = False
    dropped: list[str] = field(default_factory=list)         # baseline symbols the manifest no longer lists
    no_longer_copies: list[str] = field(default_factory=list)  # baseline copies now declared translations
    total: int = 0                                           # symbols the manifest lists now

    @property
    def weakened(self) -> Optional[str]:
        """How the contract is smaller or weaker than the baseline's (None when it is not)."""
        why = []
        if self.dropped:
            why.append(f"{len(self.dropped)} symbol(s) of the baseline no longer listed in the manifest "
                       f"({_some(self.dropped)})")
        elif self.baseline.symbols is None and self.total < self.baseline.total:
            why.append(f"the manifest lists {self.total} symbols, the baseline {self.baseline.total}")
        if self.no_longer_copies:
            why.append(f"{len(self.no_longer_copies)} symbol(s) the baseline checked as copies are now translations, "
                       f"so their bodies are no longer compared ({_some(self.no_longer_copies)})")
        return "; ".join(why) or None

    @property
    def ok(self) -> bool:
        return not self.regressions and not self.completeness_drop and self.weakened is None

    def to_dict(self) -> dict:
        return {"manifest": self.manifest, "ok": self.ok, "baseline": str(self.baseline.path or ""),
                "baseline_exists": self.baseline.exists, "min_percent": self.baseline.min_percent,
                "percent": round(self.percent, 2), "completeness_drop": self.completeness_drop,
                "regressions": self.regressions, "fixed": self.fixed, "dropped_symbols": self.dropped,
                "no_longer_copies": self.no_longer_copies, "weakened": self.weakened}


def _some(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def baseline_path(location: Path, manifest_name: str) -> Path:
    """``location`` is a directory of baselines or one JSON file."""
    location = Path(location)
    if location.suffix == ".json":
        return location
    if manifest_name_problem(manifest_name):   # the loader refuses such names; never build a path from one
        raise UsageError(f"manifest name '{manifest_name}' {manifest_name_problem(manifest_name)}")
    return location / f"{manifest_name}.json"


_KEYS = {"schema", "manifest", "min_percent", "passed", "total", "accepted", "symbols", "copies"}


def _unique(pairs: list) -> dict:
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"key '{k}' appears twice")
        out[k] = v
    return out


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number a baseline can hold")


def _count(data: dict, key: str) -> int:
    value = data.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"'{key}' must be a whole number >= 0, got {value!r}")
    return value


def load_baseline(location: Path, manifest_name: str) -> Baseline:
    """The committed baseline; a missing file is gated strictly. Every value is checked: a NaN
    ``min_percent`` would make the gate unfailable, a string ``accepted`` would accept its letters."""
    path = baseline_path(location, manifest_name)
    if not os.path.exists(path):
        return Baseline(manifest_name, path=path, exists=False)
    raw = read_regular(path, MAX_BASELINE_BYTES, "baseline")
    try:
        data = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique, parse_constant=_no_constant)
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - _KEYS)
        if unknown:
            raise ValueError(f"unknown key '{unknown[0]}'")
        schema = data.get("schema")
        if schema != SCHEMA and schema not in OLD_SCHEMAS:
            raise ValueError(f"schema is {schema!r}, expected {SCHEMA!r}")
        owner = data.get("manifest", manifest_name)
        if owner != manifest_name:
            raise ValueError(f"it is the baseline of manifest {owner!r}, not {manifest_name!r}")
        pct = data["min_percent"]
        if isinstance(pct, bool) or not isinstance(pct, (int, float)) or not math.isfinite(pct) \
                or not 0 <= pct <= 100:
            raise ValueError(f"'min_percent' must be a number from 0 to 100, got {pct!r}")
        accepted = data["accepted"]
        if not isinstance(accepted, list) or not all(isinstance(k, str) and k for k in accepted):
            raise ValueError("'accepted' must be a list of finding keys (strings)")
        passed, total = _count(data, "passed"), _count(data, "total")
        if passed > total:
            raise ValueError(f"'passed' ({passed}) exceeds 'total' ({total})")
        symbols = copies = None
        if schema == SCHEMA:
            symbols, copies = data["symbols"], data["copies"]
            for key, value in (("symbols", symbols), ("copies", copies)):
                if not isinstance(value, list) or not all(isinstance(x, str) and x for x in value):
                    raise ValueError(f"'{key}' must be a list of the manifest's symbols (strings)")
            if len(symbols) != total:
                raise ValueError(f"'symbols' lists {len(symbols)} symbols but 'total' is {total}")
            if not set(copies) <= set(symbols):
                raise ValueError(f"'copies' names {sorted(set(copies) - set(symbols))[0]!r}, which 'symbols' lacks")
        else:
            for key in ("symbols", "copies"):
                if key in data:
                    raise ValueError(f"unknown key '{key}' (a {schema} baseline has none)")
        return Baseline(manifest=manifest_name, min_percent=float(pct), accepted=list(accepted),
                        passed=passed, total=total, path=path, exists=True, symbols=symbols, copies=copies)
    except KeyError as exc:
        problem = f"missing key {exc}"
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    raise UsageError(f"{path}: invalid baseline ({problem}); regenerate it with "
                     "`portaudit gate --update-baseline --force` or fix it by hand")


def apply_gate(result: ManifestResult, baseline: Baseline) -> GateResult:
    """Mark accepted findings as BASELINE and compute regressions (mutates finding status)."""
    accepted = set(baseline.accepted)
    was_missing = baseline.missing_symbols
    gate = GateResult(result.manifest.name, baseline, result.percent, total=result.total)
    if baseline.symbols is not None:
        listed = set(_listed_symbols(result))
        gate.dropped = sorted(set(baseline.symbols) - listed)
        gate.no_longer_copies = sorted((set(baseline.copies) & listed) - set(_copies(result)))
    present: set[str] = set()
    for f in result.findings:
        if f.status != OPEN:
            continue
        present.add(f.key)
        base_symbol = _entry_symbol(f.symbol, result)
        if f.key in accepted or base_symbol in was_missing:
            f.status = BASELINE
        else:
            gate.regressions.append(f.key)
    gate.regressions = sorted(set(gate.regressions))
    gate.fixed = sorted(accepted - present)
    gate.completeness_drop = result.percent + EPS < baseline.min_percent
    return gate


def _listed_symbols(result: ManifestResult) -> list[str]:
    return sorted({s.symbol for s in result.symbols})


def _copies(result: ManifestResult) -> list[str]:
    """The entries whose bodies are compared with the upstream's (fidelity ``copy``)."""
    m = result.manifest
    return sorted({e.symbol for e in m.entries if m.fidelity_of(e) == "copy"})


def _entry_symbol(symbol: str, result: ManifestResult) -> str:
    """The manifest entry a finding belongs to (methods map to their class)."""
    names = {s.symbol for s in result.symbols}
    s = symbol
    while s and s not in names and "." in s:
        s = s.rsplit(".", 1)[0]
    return s if s in names else symbol


def write_baseline(result: ManifestResult, location: Path, force: bool = False) -> tuple[Path, list[str]]:
    """Record the current open findings; refuse to lower completeness or accept regressions."""
    old = load_baseline(location, result.manifest.name)
    notes: list[str] = []
    if old.exists:
        gate = apply_gate(result, old)
        if not force and not gate.ok:
            what = []
            if gate.completeness_drop:
                what.append(f"completeness {result.percent:.1f}% < baseline {old.min_percent:.1f}%")
            if gate.regressions:
                what.append(f"{len(gate.regressions)} new finding(s), e.g. {gate.regressions[0]}")
            if gate.weakened:
                what.append(gate.weakened)
            raise UsageError(f"{old.path}: refusing to update the baseline: {'; '.join(what)}; fix them "
                             "or pass --force to accept the regression")
        notes += [f"fixed: {k}" for k in gate.fixed]
    keys = sorted({f.key for f in result.findings if f.status in (OPEN, BASELINE)})
    data = {"schema": SCHEMA, "manifest": result.manifest.name,
            "min_percent": math.floor(result.percent * 1e4) / 1e4,   # never above the true value
            "passed": result.passed, "total": result.total,
            "accepted": keys, "symbols": _listed_symbols(result), "copies": _copies(result)}
    path = baseline_path(location, result.manifest.name)
    write_file(path, json.dumps(data, indent=1) + "\n", what="baseline")
    return path, notes
