"""bench_matrix's FLOP bound uses the higher of the matmul rates measured before and after a thread
count's cells (a machine in a slow phase while the rate is measured would loosen the bound)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_matrix  # noqa: E402


def _run(monkeypatch, tmp_path, rates):
    calls = iter(rates)
    monkeypatch.setattr(bench_matrix, "matmul_rate", lambda device, dtype, repeats=5: next(calls))
    out = tmp_path / "m.json"
    threads = torch.get_num_threads()
    try:
        assert bench_matrix.main(["--device", "cpu", "--threads", "1", "--shapes", "1x128x1x16", "--dtypes", "fp32",
                                  "--impls", "myfla", "--ops", "gdn", "--repeats", "1", "--no-counts",
                                  "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return json.loads(out.read_text())


def test_the_higher_rate_sets_the_bound(monkeypatch, tmp_path):
    f_fwd, f_fb = bench_matrix.flop_counts("gdn", 1, 128, 1, 16, 16)
    for before, after in ((1e9, 2e9), (3e9, 2e9)):
        rec = _run(monkeypatch, tmp_path, [before, after])
        best = max(before, after)
        assert rec["matmul_gflops"]["cpu x1"] == {"fp32": best / 1e9}
        assert rec["matmul_gflops_before_after"]["cpu x1"] == {"fp32": [before / 1e9, after / 1e9]}
        (row,) = rec["cells"]
        assert row["bound_fwd_ms"] == round(f_fwd / best * 1e3, 3)
        assert row["bound_fwd_bwd_ms"] == round(f_fb / best * 1e3, 3)
        assert row["ratio_fwd_bwd_to_bound"] == round(row["fwd_bwd_ms"] / row["bound_fwd_bwd_ms"], 2)
