"""The invariant engine: run named, parametrized numeric invariants against any implementation.

An :class:`Invariant` is data (a name, the op group it is reported under, the upstream API paths
it calls, its cases) plus a body that calls those paths through the implementation under test and
returns :class:`Check` s: an actual tensor against an oracle's. The definitions for one upstream
live in a case registry (:mod:`.case_registry`; fla 0.4.0's is :mod:`.fla040`), which also supplies
the oracle (``registry.reference``) and the tolerance rules. This module runs them: it resolves
the APIs, turns exceptions into ``error`` rows, a declared missing capability
(:class:`~.impl.NotApplicable`) into ``n/a`` rows, and compares every check under the tolerance
table.
"""

from __future__ import annotations

import math
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

import torch

from portaudit.errors import UsageError
from portaudit.numerics.impl import Implementation, MissingSymbol, NotApplicable
from portaudit.numerics.metrics import compare
from portaudit.numerics.results import ERROR, FAIL, MISSING, NA, PASS, SKIP, ResultRow
from portaudit.numerics.tolerances import ToleranceTable

if TYPE_CHECKING:
    from portaudit.numerics.case_registry import CaseRegistry


@dataclass
class Check:
    """One comparison produced by an invariant: ``actual`` against the oracle ``ref``."""
    output: str
    ref: Optional[torch.Tensor]
    actual: Optional[torch.Tensor]
    dtype: str = "fp32"
    passed: Optional[bool] = None      # for boolean checks (gradcheck), no tensors
    message: str = ""


class Skip(Exception):
    """The invariant does not apply to this case (reported as skipped), e.g. an upstream dtype
    contract that makes the comparison meaningless. A capability the implementation lacks is
    :class:`~.impl.NotApplicable` instead."""


@dataclass
class Context:
    impl: Implementation
    upstream_root: Path
    device: torch.device
    registry: "CaseRegistry"
    _oracle: Any = None

    def api(self, path: str):
        return self.impl.resolve(path)

    @property
    def oracle(self) -> Implementation:
        """The registry's references behind the same API paths, computing in float64 on the CPU."""
        if self._oracle is None:
            self._oracle = self.registry.reference(self.upstream_root, True)
        return self._oracle

    def require_float64(self, path: str) -> None:
        """Raise :class:`NotApplicable` when the implementation declares ``path`` takes no float64."""
        gap = self.impl.float64_gap(path)
        if gap:
            raise NotApplicable(f"{self.impl.name} does not compute {path.rsplit('.', 1)[-1]} in float64: {gap}")


@dataclass
class Invariant:
    name: str
    group: str                       # op / module / layer name (the table it is printed in)
    apis: List[str]
    cases: List[Dict[str, Any]]
    body: Callable[[Context, Dict[str, Any]], List[Check]]
    quick: int = 1                   # how many of the cases --quick runs
    layer: Optional[str] = None      # the one layer whose closure needs it (None: all), for --layer
    doc: str = ""
    hypothesis: bool = False         # --hypothesis N adds the registry's random cases to it

    def label(self, p: Dict[str, Any]) -> str:
        return ",".join(f"{k}={v}" for k, v in p.items() if not k.startswith("_"))


def known_ops(invs: List[Invariant]) -> List[str]:
    return sorted({i.group for i in invs})


def select(invs: List[Invariant], ops: Optional[List[str]] = None, layer: Optional[str] = None) -> List[Invariant]:
    if ops and "all" not in ops:
        unknown = [o for o in ops if o not in known_ops(invs)]
        if unknown:
            raise UsageError(f"unknown op {', '.join(unknown)}; known ops: {', '.join(known_ops(invs))}, all")
        invs = [i for i in invs if i.group in ops]
    if layer:
        layers = sorted({i.layer for i in invs if i.layer})
        if layer not in layers:
            raise UsageError(f"unknown layer {layer}; known layers: {', '.join(layers)}")
        invs = [i for i in invs if i.layer in (layer, None)]   # None: shared by every layer's closure
    return invs


def split_provided(impl: Implementation, invs: List[Invariant]) -> tuple[List[Invariant], Dict[str, int]]:
    """Invariants whose every API the implementation claims, and {unclaimed API: invariants left out}.

    A port that mirrors the upstream claims every path (a missing one is a failure); a library
    seen through an implementation file claims only the paths it maps."""
    kept, left_out = [], {}
    for inv in invs:
        unclaimed = [a for a in inv.apis if not impl.provides(a)]
        if unclaimed:
            for a in unclaimed:
                left_out[a] = left_out.get(a, 0) + 1
        else:
            kept.append(inv)
    return kept, left_out


def _where(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    return f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""


def run_invariants(
    impl: Implementation,
    upstream_root: Path,
    invariants: List[Invariant],
    registry: "CaseRegistry",
    device: torch.device = torch.device("cpu"),
    quick: bool = False,
    hypothesis: int = 0,
    seed: int = 0,
    table: Optional[ToleranceTable] = None,
    progress: Optional[Callable[[str], None]] = None,
) -> List[ResultRow]:
    table = table or ToleranceTable(registry.invariant_rules(impl.precision))
    ctx = Context(impl, Path(upstream_root), device, registry)
    rows: List[ResultRow] = []
    work = []
    for inv in invariants:
        cases = inv.cases[:inv.quick] if quick else list(inv.cases)
        if hypothesis and inv.hypothesis:
            cases += registry.hypothesis_cases(hypothesis, seed)
        work += [(inv, c) for c in cases]
    for inv, case in work:
        label = inv.label(case)
        if progress:
            progress(f"{inv.group}: {inv.name} [{label}]")

        def row(status: str, message: str) -> ResultRow:
            return ResultRow(inv.group, inv.name, label, "*", math.nan, math.nan, math.nan, status, message)

        missing = [a for a in inv.apis if not impl.has(a)]
        if missing:
            try:
                impl.resolve(missing[0])
                detail = ""
            except MissingSymbol as exc:
                detail = str(exc)
            rows.append(row(MISSING, f"{impl.name} lacks {', '.join(missing)} ({detail})"))
            continue
        try:
            checks = inv.body(ctx, case)
        except NotApplicable as exc:
            rows.append(row(NA, str(exc)))
            continue
        except Skip as exc:
            rows.append(row(SKIP, str(exc)))
            continue
        except Exception as exc:
            rows.append(row(ERROR, f"{type(exc).__name__}: {exc}{_where(exc)}"))
            continue
        for c in checks:
            if c.passed is not None:
                rows.append(ResultRow(inv.group, inv.name, label, c.output, math.nan, math.nan, math.nan,
                                      PASS if c.passed else FAIL, c.message))
                continue
            tol = table.lookup(inv.group, c.output, c.dtype)
            cmp = compare(c.ref, c.actual, tol.value)
            table.note_needed(tol, inv.group, c.output, c.dtype, cmp.rms_ratio)
            rows.append(ResultRow(inv.group, inv.name, label, c.output, cmp.max_abs, cmp.rms_ratio, tol.value,
                                  PASS if cmp.passed else FAIL, cmp.reason or c.message, tol.reason))
    return rows
