"""Tolerances as data: RMS-ratio limits keyed by (op, output, dtype), each looser value with its reason.

Keys are fnmatch patterns; the most specific matching rule wins (fewest wildcards, then the
first declared). ``op`` is the API's last name (``chunk_kda``, ``KimiDeltaAttention``); outputs
are the names a case returns (``o``, ``ht``, ``dq``, ``dparam.q_proj.weight``...).

Manifest overrides (``numerics.tolerances`` entries with a required ``reason``) are applied on
top; an override whose rule is never looser than what the run needed is reported as unneeded.
"""

from __future__ import annotations

import fnmatch
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


STRICT = "fp32 against an fp64 oracle: DESIGN.md/common brief bound (1e-5 outputs)"

# CPU-vs-CPU invariants: an fp32 implementation against fp64 references or against itself.
INVARIANT_RULES: List[Tolerance] = [
    Tolerance("*", "*", "fp32", 1e-5, STRICT),
    Tolerance("*", "d*", "fp32", 1e-4, "gradients of an fp32 implementation vs fp64 autograd (brief: 1e-4)"),
    Tolerance("*", "*", "fp64", 1e-10, "fp64 against fp64: only summation-order differences"),
    Tolerance("*", "*", "bf16", 2e-2, "bf16 inputs carry an 8-bit mantissa (fla's tests use 5e-3..2e-2)"),
    Tolerance("*", "*", "fp16", 5e-3, "fp16 inputs (fla's own tests: 5e-3 outputs, 8e-3 grads)"),
    Tolerance("*", "d*", "fp16", 8e-3, "fp16 inputs (fla's own tests: 8e-3 gradients)"),
    Tolerance("*Attention", "*", "fp32", 2e-5,
              "layers chain projections, conv, norm and the recurrence in fp32 (several rounding steps)"),
    Tolerance("GatedDeltaNet", "*", "fp32", 2e-5,
              "layers chain projections, conv, norm and the recurrence in fp32 (several rounding steps)"),
    Tolerance("*Attention", "d*", "fp32", 1e-4, "layer gradients of an fp32 implementation vs fp64 autograd"),
    Tolerance("GatedDeltaNet", "d*", "fp32", 1e-4, "layer gradients of an fp32 implementation vs fp64 autograd"),
]

# Golden fixtures: real fla on a GPU. Triton dots take TF32 for fp32 inputs (GPU.md).
TF32 = "fla's Triton dots use TF32 for fp32 inputs (GPU.md: ~1.5e-4 outputs, ~7e-4 states, ~1e-3 gradients)"
GOLDEN_RULES: List[Tolerance] = [
    Tolerance("*", "*", "fp32", 1e-5, "elementwise/recurrent fp32 kernels: rounding-order differences only"),
    Tolerance("chunk_*", "*", "fp32", 1e-3, TF32),
    Tolerance("chunk_*", "ht", "fp32", 3e-3, TF32),
    Tolerance("chunk_gated_delta_rule", "o", "fp32", 3e-3,
              TF32 + "; GDN's outputs are small next to their TF32 error (fla vs fp32 CPU reference: 1.4e-3)"),
    Tolerance("chunk_*", "d*", "fp32", 5e-3, TF32),
    Tolerance("chunk_*", "*", "bf16", 2e-2, "bf16 inputs on top of TF32 dots (fla's own tests: up to 2e-2)"),
    Tolerance("solve_tril", "*", "fp32", 1e-3, "fla inverts 16x16 blocks and merges them with TF32 dots"),
    Tolerance("chunk_local_cumsum", "*", "fp32", 1e-5, "fp32 prefix sums; summation order differs"),
    Tolerance("*Attention", "*", "fp32", 3e-3, TF32 + "; the layer runs the chunk kernels"),
    Tolerance("*Attention", "d*", "fp32", 1e-2, TF32 + "; layer gradients pass through the chunk backward"),
    Tolerance("*Attention", "dparam.A_log", "fp32", 5e-2,
              "an H-element gradient summing TF32-rounded terms over every token and channel with "
              "cancellation (fla vs the fp32 CPU reference: 1.1e-2..1.8e-2)"),
    Tolerance("GatedDeltaNet", "*", "fp32", 3e-3, TF32 + "; the layer runs the chunk kernels"),
    Tolerance("GatedDeltaNet", "d*", "fp32", 1e-2, TF32 + "; layer gradients pass through the chunk backward"),
]


def invariant_rules(impl: str) -> List[Tolerance]:
    """Built-in rules of ``invariants`` for an implementation. Real fla (``--impl fla``, on a GPU)
    runs its chunk kernels with TF32 dots, so its chunk ops, ``solve_tril`` and the layers get the
    golden fixtures' TF32 bounds (measured on an H100: chunk outputs <= 1.5e-3, gradients <= 1.5e-3,
    KDA's ``dparam.A_log`` 4.6e-3); its recurrent and elementwise kernels keep the fp32 bounds."""
    if impl == "fla":
        return [r for r in GOLDEN_RULES if r.op != "*"] + INVARIANT_RULES
    return list(INVARIANT_RULES)


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
        try:
            value = float(e.get("rtol", e.get("value")))
        except (TypeError, ValueError):
            raise UsageError(f"{where}: numerics.tolerances[{i}] needs a numeric rtol") from None
        out.append(Tolerance(str(e.get("op", "*")), str(e.get("output", "*")), str(e.get("dtype", "*")), value,
                             reason, source=where))
    return out
