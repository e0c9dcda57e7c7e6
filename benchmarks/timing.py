"""Timing helpers shared by the CPU op benchmarks (bench_gdn, bench_kda, bench_rwkv7)."""

import statistics
import time

import torch


def median_time(fn, repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_rates(BT: int, K: int, V: int, repeats: int):
    """fp32 FLOP/s of this machine at the current threads: on chunk-shaped batched matmuls
    ([BT, K] @ [K, V]) and on one large square GEMM (the peak, which gives the stricter lower bound)."""
    a = torch.randn(256, BT, K)
    b = torch.randn(256, K, V)
    t = median_time(lambda: torch.bmm(a, b), repeats=max(repeats, 5), warmup=2)
    chunked = 2 * 256 * BT * K * V / t
    n = 1024
    x, y = torch.randn(n, n), torch.randn(n, n)
    t = median_time(lambda: x @ y, repeats=max(repeats, 5), warmup=2)
    return chunked, 2 * n ** 3 / t
