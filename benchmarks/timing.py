"""Timing helpers shared by the op benchmarks (bench_gdn, bench_kda, bench_rwkv7, bench_ab,
bench_matrix, bench_chunk_floor): medians, matmul rates, and the machine a figure ran on."""

import contextlib
import os
import platform
import statistics
import time

import torch

# CPU features that change which kernels torch runs (and so the figures): AVX-512 and its bf16
# dot products, AMX tiles. Two VMs both named "AMD EPYC" differed by these (AVX2 one day, AVX-512
# the next), at twice the matmul rate.
CPU_FLAGS_OF_NOTE = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


def cpu_info() -> dict:
    """The CPU as /proc/cpuinfo names it: model name, family / model / stepping, the flags of note
    (``CPU_FLAGS_OF_NOTE``) it has; empty where the file is missing (not Linux)."""
    fields = {}
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if not line.strip():
                    break                                   # the first processor's block is enough
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    if not fields:
        return {}
    flags = set(fields.get("flags", "").split())
    return {"cpu": fields.get("model name"), "cpu_family": fields.get("cpu family"),
            "cpu_model": fields.get("model"), "cpu_stepping": fields.get("stepping"),
            "cpu_flags": [f for f in CPU_FLAGS_OF_NOTE if f in flags]}


def machine_info(device: str = "cpu") -> dict:
    """What a benchmark record says of its machine: torch, Python, CPU (``cpu_info``) and torch's CPU
    kernel capability, and the GPU, CUDA and Triton versions on ``device == "cuda"``."""
    info = {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "cpu_capability": getattr(torch.backends.cpu, "get_cpu_capability",
                                                                    lambda: None)()}
    info.update(cpu_info())
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
        with contextlib.suppress(ImportError):
            import triton
            info["triton"] = triton.__version__
    with contextlib.suppress(Exception):
        import transformers
        info["transformers"] = transformers.__version__
    return info


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
