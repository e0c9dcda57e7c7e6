"""``golden check``: run an implementation on recorded inputs and compare with recorded outputs.

The recorded cases are looked up by name in a case registry (:mod:`.case_registry`), whose
``run`` feeds the recorded inputs to the implementation."""

from __future__ import annotations

import math
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, List, Optional

import torch

from portaudit.errors import UsageError
from portaudit.numerics.fixtures import read_fixtures
from portaudit.numerics.impl import Implementation, MissingSymbol, NotApplicable
from portaudit.numerics.metrics import compare
from portaudit.numerics.results import ERROR, FAIL, MISSING, NA, PASS, SKIP, ResultRow
from portaudit.numerics.tolerances import ToleranceTable

if TYPE_CHECKING:
    from portaudit.numerics.case_registry import CaseRegistry


def _label(params: dict) -> str:
    keys = ("B", "T", "H", "HV", "K", "V", "D", "W", "BT", "dtype")
    parts = [f"{k}={params[k]}" for k in keys if k in params]
    flags = [k for k in ("l2_in_kernel", "h0", "bias", "residual", "prenorm", "reverse", "decode") if params.get(k)]
    if params.get("cu_seqlens"):
        flags.append(f"varlen{len(params['cu_seqlens']) - 1}")
    if "init" in params:
        init = params["init"]
        flags += [f"{k}={v}" for k, v in init.items() if k not in ("hidden_size", "head_dim", "num_heads", "layer_idx")]
    return ",".join(parts + flags)


def check_golden(
    impl: Implementation,
    fixtures: str | Path,
    registry: "CaseRegistry",
    device: torch.device = torch.device("cpu"),
    pattern: Optional[str] = None,
    table: Optional[ToleranceTable] = None,
    progress: Optional[Callable[[str], None]] = None,
    left_out: Optional[Dict[str, int]] = None,
) -> List[ResultRow]:
    """Rows for every recorded case; a case needing an API the implementation does not claim
    (``impl.provides``) is not run and counted in ``left_out`` (API -> cases) instead."""
    fs = read_fixtures(fixtures)
    declared = {c.name: c for c in registry.golden_cases()}
    table = table or ToleranceTable(registry.golden_rules())
    names = [n for n in fs.cases if pattern is None or any(p.strip() in n for p in pattern.split(","))]
    if pattern is not None and not names:
        raise UsageError(f"no golden case in {fs.root} matches '{pattern}'")
    rows: List[ResultRow] = []
    for name in names:
        rec = fs.cases[name]
        case = declared.get(name)
        op = rec.api.rsplit(".", 1)[-1]
        if progress:
            progress(name)
        if rec.status != "ok":
            rows.append(ResultRow(op, "golden", name, "*", math.nan, math.nan, math.nan, SKIP,
                                  f"upstream failed while recording: {rec.error}"))
            continue
        if case is None:
            rows.append(ResultRow(op, "golden", name, "*", math.nan, math.nan, math.nan, ERROR,
                                  "fixture case is not declared by this portaudit (re-record the fixtures)"))
            continue
        unclaimed = [a for a in case.required_apis() if not impl.provides(a)]
        if unclaimed:
            for a in unclaimed:
                if left_out is not None:
                    left_out[a] = left_out.get(a, 0) + 1
            continue
        missing = [a for a in case.required_apis() if not impl.has(a)]
        if missing:
            detail = []
            for a in missing:
                try:
                    impl.resolve(a)
                except MissingSymbol as exc:
                    detail.append(str(exc))
            rows.append(ResultRow(op, "golden", name, "*", math.nan, math.nan, math.nan, MISSING,
                                  f"{impl.name} lacks {', '.join(missing)}: {detail[0] if detail else ''}"))
            continue
        inputs, expected = fs.load_case(name)
        try:
            actual = case.run(case, impl, inputs, device)
        except NotApplicable as exc:
            rows.append(ResultRow(op, "golden", name, "*", math.nan, math.nan, math.nan, NA, str(exc)))
            continue
        except Exception as exc:
            tb = traceback.extract_tb(exc.__traceback__)
            where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
            rows.append(ResultRow(op, "golden", name, "*", math.nan, math.nan, math.nan, ERROR,
                                  f"{type(exc).__name__}: {exc}{where}"))
            continue
        label = f"{name} [{_label(rec.params)}]"
        dtype = rec.params.get("dtype", "fp32")
        for key, ref in expected.items():
            tol = table.lookup(op, key, dtype)
            cmp = compare(ref, actual.get(key), tol.value)
            table.note_needed(tol, op, key, dtype, cmp.rms_ratio)
            status = PASS if cmp.passed else FAIL
            if cmp.passed and key in actual and actual[key].dtype != ref.dtype:
                status, cmp.reason = FAIL, f"dtype {actual[key].dtype} != recorded {ref.dtype}"
            rows.append(ResultRow(op, "golden", label, key, cmp.max_abs, cmp.rms_ratio, tol.value, status,
                                  cmp.reason, tol.reason))
        for key in sorted(set(actual) - set(expected)):
            rows.append(ResultRow(op, "golden", label, key, math.nan, math.nan, math.nan, FAIL,
                                  "output not produced by fla"))
    return rows
