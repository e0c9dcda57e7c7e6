"""bench_rwkv7.speedup_target: the time a "20x faster than the reference" target allows, and that
time against the FLOP bound (below 1x: no implementation of the chunked algorithm can meet it)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_rwkv7  # noqa: E402


def test_allowed_times_and_bound_multiples():
    # this VM, one thread, K=128 (2026-11-27): dplr_recurrence 700.6 / 94833.2 ms, bound 48.4 / 182.0 ms
    need = bench_rwkv7.speedup_target((0.7006, 94.8332), (0.0484, 0.1820))
    assert need["factor"] == 20
    assert need["fwd_s"] == pytest.approx(0.03503)
    assert need["fwd_bwd_s"] == pytest.approx(4.74166)
    assert need["fwd_bound_multiple"] == pytest.approx(0.03503 / 0.0484)      # < 1: out of reach
    assert need["fwd_bound_multiple"] < 1 < need["fwd_bwd_bound_multiple"]


def test_other_factor():
    need = bench_rwkv7.speedup_target((1.0, 2.0), (0.1, 0.1), factor=5)
    assert (need["fwd_s"], need["fwd_bwd_s"]) == (0.2, 0.4)
    assert (need["fwd_bound_multiple"], need["fwd_bwd_bound_multiple"]) == pytest.approx((2.0, 4.0))
