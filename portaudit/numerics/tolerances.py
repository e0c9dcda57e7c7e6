"""Tolerances as data: RMS-ratio limits keyed by (op, output, dtype), each looser value with its reason.

Keys are fnmatch patterns; the most specific matching rule wins (fewest wildcards, then the
first declared). ``op`` is the API's last name (``chunk_kda``, ``KimiDeltaAttention``); outputs
are the names a case returns (``o``, ``ht``, ``dq``, ``dparam.q_proj.weight``...). The rules
themselves come with a case registry (fla 0.4.0's: :mod:`.fla040.tolerances`).

Manifest overrides (``numerics.tolerances`` entries with a required ``reason``) are applied on
top; an override whose rule is never looser than what the run needed is reported as unneeded.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import Iterable, List, Optional

from portaudit.errors import UsageError


@dataclass(frozen=True)
class Tolerance:
    op: str
    output: str
    dtype: str
    value: float
    reason: str
    source: str = "builtin"

    def matches(self, op: str, output: str, dtype: str) -> bool:
        return (fnmatch.fnmatchcase(op, self.op) and fnmatch.fnmatchcase(output, self.output)
                and fnmatch.fnmatchcase(dtype, self.dtype))

    @property
    def specificity(self) -> tuple:
        """Fully literal fields first, then the number of literal characters (``chunk_*`` beats ``*``)."""
        fields = (self.op, self.output, self.dtype)
        literal = sum(1 for p in fields if not any(c in p for c in "*?["))
        chars = sum(len(p.replace("*", "").replace("?", "")) for p in fields)
        return (literal, chars)


# The fallback when no rule matches: fp32 against an fp64 oracle.
STRICT = "fp32 against an fp64 oracle: DESIGN.md/common brief bound (1e-5 outputs)"


class ToleranceTable:
    def __init__(self, rules: Iterable[Tolerance], overrides: Iterable[Tolerance] = ()):
        self.rules = list(rules)
        self.overrides = list(overrides)
        self.used_overrides: dict = {}

    def lookup(self, op: str, output: str, dtype: str) -> Tolerance:
        for group in (self.overrides, self.rules):
            hits = [t for t in group if t.matches(op, output, dtype)]
            if hits:
                best = max(hits, key=lambda t: t.specificity)
                return best
        return Tolerance("*", "*", "*", 1e-5, STRICT)

    def base(self, op: str, output: str, dtype: str) -> Tolerance:
        hits = [t for t in self.rules if t.matches(op, output, dtype)]
        return max(hits, key=lambda t: t.specificity) if hits else Tolerance("*", "*", "*", 1e-5, STRICT)

    def note_needed(self, tol: Tolerance, op: str, output: str, dtype: str, ratio: float) -> None:
        """Remember, per override, whether any comparison needed it (ratio over the base rule)."""
        if tol.source == "builtin":
            return
        needed = ratio >= self.base(op, output, dtype).value
        self.used_overrides[tol] = self.used_overrides.get(tol, False) or needed

    def unneeded_overrides(self) -> List[Tolerance]:
        return [t for t in self.overrides if not self.used_overrides.get(t, False)]


def overrides_from_manifest(data: Optional[dict], where: str = "manifest") -> List[Tolerance]:
    """``numerics: {tolerances: [{op, output, dtype, rtol, reason}]}``; a missing reason is an error."""
    if not data:
        return []
    section = data.get("numerics", {}) if isinstance(data, dict) else {}
    entries = (section or {}).get("tolerances", []) or []
    out = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            raise UsageError(f"{where}: numerics.tolerances[{i}] must be a mapping")
        reason = str(e.get("reason", "")).strip()
        if not reason:
            raise UsageError(f"{where}: numerics.tolerances[{i}] ({e.get('op', '*')}/{e.get('output', '*')}) "
                             f"needs a reason")
        value = e.get("rtol", e.get("value"))
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise UsageError(f"{where}: numerics.tolerances[{i}] needs rtol, a finite positive number "
                             f"(got {value!r})")
        fields = {k: e.get(k, "*") for k in ("op", "output", "dtype")}
        bad = [k for k, x in fields.items() if not isinstance(x, str) or not x]
        if bad:
            raise UsageError(f"{where}: numerics.tolerances[{i}].{bad[0]} must be a non-empty string (a pattern)")
        out.append(Tolerance(fields["op"], fields["output"], fields["dtype"], float(value), reason, source=where))
    return out
