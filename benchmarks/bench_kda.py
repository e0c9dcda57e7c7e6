"""Speed and memory of myfla's chunk_kda on CPU (fp32, 2 threads), against fla's naive recurrence,
a FLOP lower bound measured in the same run, and (when importable) transformers' Kimi Linear
torch_chunk_kda fallback. Prints a table and writes benchmarks/results/bench_kda.json.

    python benchmarks/bench_kda.py                       # B=1 H=4 K=V=128 T=8192 (the targets' shape)
    python benchmarks/bench_kda.py --keep-freed-memory   # same, glibc malloc reusing freed memory
    MYFLA_WORKSPACE_MB=0 python benchmarks/bench_kda.py  # without myfla's buffer pool
    python benchmarks/bench_kda.py --quick               # smaller T, for a smoke run

fla's naive recurrence is timed at the full T by default (its backward alone takes minutes);
``--naive-T`` times it at a smaller T and scales linearly, which underestimates it. Set
PORTAUDIT_FLA040 to a local fla 0.4.0 tree where the wheels cannot be fetched.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import platform
import resource
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

from myfla.ops.kda import chunk_kda
from timing import matmul_rates, median_time  # noqa: E402  (benchmarks/ is the script directory)
from myfla.ops.utils import workspace

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "bench_kda.json"
BT = 64


def keep_freed_memory() -> bool:
    """Ask glibc malloc to keep freed blocks up to 1 GiB instead of returning them to the OS, so
    large temporaries are reused rather than page-faulted in again on every call (the effect of
    jemalloc/tcmalloc in CPU deployments). Affects every implementation timed in this process."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    libc = ctypes.CDLL(name)
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 31))



def make_inputs(B, T, H, K, V, requires_grad=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=gen)
    k = F.normalize(torch.randn(B, T, H, K, generator=gen), p=2, dim=-1)
    v = torch.randn(B, T, H, V, generator=gen)
    g = F.logsigmoid(torch.randn(B, T, H, K, generator=gen))
    beta = torch.rand(B, T, H, generator=gen).sigmoid()
    h0 = torch.randn(B, H, K, V, generator=gen)
    xs = [q, k, v, g, beta, h0]
    if requires_grad:
        xs = [x.requires_grad_() for x in xs]
    return xs


def run_fwd(fn, xs):
    with torch.no_grad():
        return fn(*xs[:5], initial_state=xs[5], output_final_state=True)


def run_fwd_bwd(fn, xs):
    for x in xs:
        x.grad = None
    o, ht = fn(*xs[:5], initial_state=xs[5], output_final_state=True)
    (o.sum() + ht.sum()).backward()


def flop_counts(B, T, H, K, V):
    """Multiply-adds of the chunked algorithm's matmuls (per chunk and head), times 2."""
    NT = -(-T // BT)
    n = B * H * NT
    fwd = BT * BT * (3 * K + 2 * V) + 3 * BT * K * V
    # backward: recompute (w, u, h), dv_local, dhu (3 BTKV), dA, dqkwg (3 BTKV), wy bwd, intra bwd
    bwd = (BT * BT * (2 * K + V) + 2 * BT * K * V) + BT * BT * V + 3 * BT * K * V + BT * BT * V \
        + 3 * BT * K * V + (2 * BT * BT * K + 2 * BT * BT * V + 2 * BT ** 3) + 4 * BT * BT * K
    return 2 * n * fwd, 2 * n * (fwd + bwd)



def saved_bytes(fn, xs):
    """Bytes of the distinct tensors autograd keeps for backward."""
    seen = {}

    def pack(t):
        try:
            key = t.untyped_storage().data_ptr()
            seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
        except RuntimeError:
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        o, ht = fn(*xs[:5], initial_state=xs[5], output_final_state=True)
    del o, ht
    return sum(seen.values())


def load_fla_naive():
    sys.path.insert(0, str(ROOT))
    from portaudit.numerics.upstream_code import load_module
    from portaudit.static.upstream import resolve_upstream
    local = os.environ.get("PORTAUDIT_FLA040")      # a local fla 0.4.0 tree, as tests/conftest.py
    if local:
        root = resolve_upstream(upstream_path=local, package="fla")
    else:
        root = resolve_upstream(["fla-core==0.4.0", "flash-linear-attention==0.4.0"], package="fla")
    return load_module(root, "fla/ops/kda/naive.py").naive_recurrent_kda


def load_transformers_kda():
    """Kimi Linear's torch chunk fallback from transformers (named ``torch_chunk_kda`` or
    ``chunk_kimi_delta_attention`` depending on the release), or None."""
    try:
        from transformers.models.kimi_linear import modeling_kimi_linear as m  # type: ignore
    except Exception:
        return None
    return getattr(m, "torch_chunk_kda", None) or getattr(m, "chunk_kimi_delta_attention", None)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--T", type=int, default=8192)
    parser.add_argument("--H", type=int, default=4)
    parser.add_argument("--K", type=int, default=128)
    parser.add_argument("--V", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--naive-T", type=int, default=None,
                        help="T at which fla's naive recurrence is timed (default: the full T); "
                             "times are scaled linearly to T, which underestimates its O(T^2) backward")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="configure glibc malloc to reuse freed memory (see keep_freed_memory)")
    parser.add_argument("--skip-transformers", action="store_true")
    args = parser.parse_args()
    kept = keep_freed_memory() if args.keep_freed_memory else False
    if args.quick:
        args.T, args.repeats, args.naive_T = 2048, 3, 256
    torch.set_num_threads(args.threads)
    B, T, H, K, V = 1, args.T, args.H, args.K, args.V
    rows = []
    record = {"shape": dict(B=B, T=T, H=H, K=K, V=V), "dtype": "float32", "threads": args.threads,
              "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
              "malloc_keeps_freed_memory": kept, "workspace_mb": workspace.MAX_BYTES / 2 ** 20,
              "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpu_count": os.cpu_count()}

    xs = make_inputs(B, T, H, K, V)
    fwd = median_time(lambda: run_fwd(chunk_kda, xs), args.repeats)
    xg = make_inputs(B, T, H, K, V, requires_grad=True)
    fwd_bwd = median_time(lambda: run_fwd_bwd(chunk_kda, xg), args.repeats)
    record["chunk_kda"] = {"fwd_s": fwd, "fwd_bwd_s": fwd_bwd}
    rows.append(("myfla chunk_kda", T, fwd, fwd_bwd, ""))

    rate_chunked, rate_peak = matmul_rates(BT, K, V, args.repeats)
    rate = max(rate_chunked, rate_peak)
    f_fwd, f_all = flop_counts(B, T, H, K, V)
    lb_fwd, lb_all = f_fwd / rate, f_all / rate
    record["flop_lower_bound"] = {"matmul_flops_per_s": rate, "chunk_shaped_bmm_flops_per_s": rate_chunked,
                                  "square_gemm_flops_per_s": rate_peak,
                                  "fwd_flops": f_fwd, "fwd_bwd_flops": f_all,
                                  "fwd_s": lb_fwd, "fwd_bwd_s": lb_all,
                                  "ratio_fwd": fwd / lb_fwd, "ratio_fwd_bwd": fwd_bwd / lb_all}
    rows.append(("FLOP lower bound", T, lb_fwd, lb_all,
                 f"{rate / 1e9:.0f} GFLOP/s (chunk bmm {rate_chunked / 1e9:.0f}, GEMM {rate_peak / 1e9:.0f})"))

    # scaling: T/4 vs T
    xs4 = make_inputs(B, T // 4, H, K, V, requires_grad=True)
    fb4 = median_time(lambda: run_fwd_bwd(chunk_kda, xs4), args.repeats)
    record["scaling"] = {"T_quarter": T // 4, "fwd_bwd_s_quarter": fb4, "ratio_T_over_quarter": fwd_bwd / fb4}
    rows.append(("myfla chunk_kda", T // 4, float("nan"), fb4, f"4T/T = {fwd_bwd / fb4:.2f}x"))

    # fla's naive recurrence at a smaller T, scaled linearly (conservative: its backward is
    # superlinear in T, so the real time at T is larger than this estimate)
    naive = load_fla_naive()
    Tn = min(args.naive_T or T, T)
    xn = make_inputs(B, Tn, H, K, V, requires_grad=True)
    n_fwd = median_time(lambda: run_fwd(naive, [x.detach() for x in xn]), 1, warmup=0) * T / Tn
    n_fb = median_time(lambda: run_fwd_bwd(naive, xn), 1, warmup=0) * T / Tn
    record["fla_naive_recurrent_kda"] = {"measured_T": Tn, "fwd_s_scaled": n_fwd, "fwd_bwd_s_scaled": n_fb,
                                         "speedup_fwd_bwd": n_fb / fwd_bwd}
    rows.append(("fla naive_recurrent_kda", T, n_fwd, n_fb, f"measured at T={Tn}, scaled x{T / Tn:g}"))

    hf = None if args.skip_transformers else load_transformers_kda()
    if hf is None:
        record["transformers_torch_chunk_kda"] = ("skipped" if args.skip_transformers
                                                  else "transformers not importable: not measured")
    else:
        xh = make_inputs(B, T, H, K, V, requires_grad=True)
        h_fwd = median_time(lambda: run_fwd(hf, [x.detach() for x in xh]), 1)
        h_fb = median_time(lambda: run_fwd_bwd(hf, xh), 1)
        record["transformers_torch_chunk_kda"] = {"function": hf.__name__, "fwd_s": h_fwd, "fwd_bwd_s": h_fb,
                                                  "speedup_fwd": h_fwd / fwd, "speedup_fwd_bwd": h_fb / fwd_bwd}
        rows.append((f"transformers {hf.__name__}", T, h_fwd, h_fb, ""))

    xm = make_inputs(B, T, H, K, V, requires_grad=True)
    saved = saved_bytes(chunk_kda, xm)
    record["saved_for_backward_bytes"] = saved
    record["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    print(f"B={B} H={H} K={K} V={V} fp32, {args.threads} threads, medians of {args.repeats}"
          + (", malloc keeps freed memory" if kept else ""))
    print(f"{'implementation':<30}{'T':>7}{'forward':>12}{'fwd+bwd':>12}  note")
    for name, t, a, b, note in rows:
        fa = "-" if a != a else f"{a * 1e3:.1f} ms"
        print(f"{name:<30}{t:>7}{fa:>12}{b * 1e3:>9.1f} ms  {note}")
    print(f"chunk_kda / lower bound: fwd {fwd / lb_fwd:.1f}x, fwd+bwd {fwd_bwd / lb_all:.1f}x")
    print(f"speedup over fla naive_recurrent_kda (fwd+bwd): {n_fb / fwd_bwd:.0f}x")
    if hf is None:
        print(f"transformers torch_chunk_kda: {record['transformers_torch_chunk_kda']}")
    else:
        r = record["transformers_torch_chunk_kda"]
        print(f"speedup over transformers {r['function']}: fwd {r['speedup_fwd']:.1f}x, "
              f"fwd+bwd {r['speedup_fwd_bwd']:.1f}x")
    print(f"saved for backward: {saved / 2**30:.3f} GiB; peak RSS {record['peak_rss_bytes'] / 2**30:.2f} GiB")
    out = RESULTS.with_name("bench_kda_keep_freed_memory.json") if kept else RESULTS
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
