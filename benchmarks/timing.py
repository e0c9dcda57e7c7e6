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


def _spin(seconds: float) -> None:
    """Busy pure-Python work (no vector instructions, no memory traffic) for ``seconds``."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def matmul_rate_after_other_work(BT: int, K: int, repeats: int, read_mb: int = 64, spin_ms: float = 3.0) -> dict:
    """fp32 FLOP/s of one chunk-shaped batched matmul (a 64-chunk-head slab's score product,
    ``[2BT, K] @ [K, 2BT]``) in three settings, in rounds: ``steady`` (the product run back to back, as
    ``matmul_rates`` times it), ``after_read`` (right after a read of
    ``read_mb`` MB, more than the caches hold: the operands come from memory) and ``after_python``
    (right after ``spin_ms`` of pure-Python work, which touches neither the operands nor the vector
    units: what is left is the processor's own state, e.g. its clock or powered-down vector units).
    Inside a chunked op a product follows other work, never itself, so these say how far the op's
    products can come to the peak that the FLOP bound divides by (a diagnostic: the bound stays at
    the peak)."""
    a, b = torch.randn(64, 2 * BT, K), torch.randn(64, K, 2 * BT)
    out = torch.empty(64, 2 * BT, 2 * BT)
    sweep = torch.ones(read_mb * 2 ** 20 // 4)
    samples = {"steady": [], "after_read": [], "after_python": []}

    def product() -> float:
        t0 = time.perf_counter()
        torch.bmm(a, b, out=out)
        return time.perf_counter() - t0

    for _ in range(max(repeats, 5)):
        for _ in range(3):
            product()
        samples["steady"].append(product())
        sweep.sum()
        samples["after_read"].append(product())
        _spin(spin_ms / 1e3)
        samples["after_python"].append(product())
    flops = 2 * 64 * (2 * BT) ** 2 * K
    return {key: flops / statistics.median(times) for key, times in samples.items()}
