"""bench_chunk_floor's products are exactly the ones the FLOP bounds count: the forward's all of them,
the backward's all but the recompute of the forward's intermediates (which myfla saves)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_chunk_floor as floor  # noqa: E402
import bench_matrix  # noqa: E402
import bench_rwkv7  # noqa: E402


@pytest.mark.parametrize("op", ["gdn", "kda", "rwkv7"])
@pytest.mark.parametrize("K,V", [(128, 128), (64, 64), (64, 128)])
def test_products_are_the_bounds_products(op, K, V):
    chunk_sizes = (bench_rwkv7.FLA_BT, 32) if op == "rwkv7" else (bench_matrix.BT,)
    for BT in chunk_sizes:
        T = 4 * BT                                  # four chunks of one head
        if op == "rwkv7":
            fwd, total = bench_rwkv7.flop_counts(1, T, 1, K, V, BT)
        else:
            fwd, total = bench_matrix.flop_counts(op, 1, T, 1, K, V)
        passes = floor.products(op, BT, K, V)
        forward = floor.part_flops(op, passes["fwd"], BT, 4)
        assert forward == pytest.approx(fwd, rel=1e-12)
        # the recompute: fla's forward again (DPLR: without its output; GDN and KDA: without the inverse)
        again = {"parallel": floor.recomputed(op, BT, K, V), "loop": [], "inverses": int(op == "rwkv7")}
        backward = floor.part_flops(op, passes["bwd"], BT, 4) + floor.part_flops(op, again, BT, 4)
        assert forward + backward == pytest.approx(total, rel=1e-12)


def test_loops_carry_the_state_products_only():
    for op in ("gdn", "kda", "rwkv7"):
        for part in floor.products(op, 64, 128, 128).values():
            assert part["loop"] == [(64, 128, 128), (128, 64, 128)]
