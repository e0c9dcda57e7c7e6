"""Speed and memory of myfla's chunk_gated_delta_rule on CPU (fp32, 2 threads), against fla 0.6.0's
naive_chunk_gated_delta_rule (loaded by file path from the fetched upstream tree) run side by side,
and a FLOP lower bound measured in the same run. Prints a table and writes
benchmarks/results/bench_gdn.json.

    python benchmarks/bench_gdn.py            # B=1 H=4 K=V=128, T=8192 (and T=2048 for scaling)
    python benchmarks/bench_gdn.py --quick    # small shapes, for a smoke run

Targets (at T=8192): forward <= 90 ms; forward+backward <= 300 ms and >= 5x faster than the naive
chunk reference; fwd+bwd(T=8192) <= 4.5 x fwd+bwd(T=2048); tensors saved for backward < 0.5 GB.

The op allocates many short-lived tensors of a few MB. glibc's malloc returns such blocks to the
OS, and every page of the next allocation faults back in zero-filled; on this machine that cost a
fifth to a third of a forward+backward before myfla reused its buffers
(``myfla/ops/utils/workspace.py``). To see the pool's effect, compare a default run with
    MYFLA_WORKSPACE_MB=0 python benchmarks/bench_gdn.py --no-naive --out /tmp/bench_gdn_no_pool.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from myfla.ops.gated_delta_rule import chunk_gated_delta_rule
from myfla.ops.utils import workspace
from timing import median_time  # noqa: E402  (benchmarks/ is the script directory)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "bench_gdn.json"
BT = 64
FLA_060 = ["fla-core==0.6.0", "flash-linear-attention==0.6.0"]



def make_inputs(B, T, H, K, V, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=gen)
    k = F.normalize(torch.randn(B, T, H, K, generator=gen), p=2, dim=-1)
    v = torch.randn(B, T, H, V, generator=gen)
    g = F.logsigmoid(torch.randn(B, T, H, generator=gen))
    beta = torch.rand(B, T, H, generator=gen).sigmoid()
    h0 = torch.randn(B, H, K, V, generator=gen)
    return [x.requires_grad_() for x in (q, k, v, g, beta, h0)]


def ours(q, k, v, g, beta, h0):
    return chunk_gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True)


def load_naive_chunk():
    """fla 0.6.0's pure-torch chunked GDN (argument order q, k, v, g, beta)."""
    from portaudit.numerics.upstream_code import load_module
    from portaudit.static.upstream import resolve_upstream
    local = os.environ.get("PORTAUDIT_FLA060")
    root = resolve_upstream(upstream_path=local, package="fla") if local else resolve_upstream(FLA_060, package="fla")
    mod = load_module(root, "fla/ops/gated_delta_rule/naive.py")

    def naive(q, k, v, g, beta, h0):
        return mod.naive_chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=BT, initial_state=h0,
                                                output_final_state=True)
    return naive


def run_fwd(fn, xs):
    with torch.no_grad():
        fn(*xs)


def run_fwd_bwd(fn, xs):
    for x in xs:
        x.grad = None
    o, ht = fn(*xs)
    (o.sum() + ht.sum()).backward()


def flop_counts(B, T, H, K, V):
    """FLOPs of the chunked algorithm's matmuls (2 per multiply-add), forward and forward+backward,
    counted from the port's call graph (per chunk and head)."""
    n = B * H * (-(-T // BT))
    mm = (lambda m, k_, n_: 2 * m * k_ * n_)
    fwd = (mm(BT, K, BT)                                  # kkt
           + BT ** 3 // 3                                 # triangular solve
           + mm(BT, BT, K) + mm(BT, BT, V)                # w, u
           + mm(BT, K, V) * 2                             # v_new = u - w h; h += k^T v_new
           + mm(BT, K, V) + mm(BT, K, BT) + mm(BT, BT, V))  # o = q h + (q k^T) v_new
    bwd = (mm(BT, BT, K) + mm(BT, BT, V) + mm(BT, K, V) * 2          # recompute w, u, h
           + mm(BT, K, BT) + mm(BT, BT, V)                            # dv_local
           + mm(BT, K, V) * 3                                         # bwd_dhu
           + mm(BT, V, BT) + mm(BT, V, K) * 3 + mm(BT, K, BT) + mm(BT, BT, K) * 2   # dqkwg
           + mm(BT, K, BT) + mm(BT, V, BT) + mm(BT, BT, K) + mm(BT, BT, V)         # wy: dA, dkbg, dvb
           + mm(BT, BT, BT) * 2 + mm(BT, BT, K) * 2 + mm(BT, K, BT))              # wy: A dA A, dkb, dk, kk^T
    return n * fwd, n * (fwd + bwd)


def matmul_rate(repeats: int) -> float:
    """FLOP/s of a large fp32 matmul on this machine (the best case for the FLOP lower bound)."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    t = median_time(lambda: torch.mm(a, b), repeats, warmup=2)
    return 2 * 2048 ** 3 / t


def saved_tensor_bytes(fn, xs) -> int:
    """Bytes of the distinct storages autograd keeps for backward (saved_tensors_hooks)."""
    seen = {}

    def pack(t):
        if t.numel():
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        o, ht = fn(*xs)
    del o, ht
    return sum(seen.values())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small shapes (smoke run)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-naive", action="store_true", help="skip the naive reference")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/bench_gdn.json)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)

    B, H, K, V = 1, 4, 128, 128
    T_big, T_small = (1024, 256) if args.quick else (8192, 2048)
    rep = args.repeats

    rate = matmul_rate(rep)
    xs = make_inputs(B, T_big, H, K, V)
    t_fwd = median_time(lambda: run_fwd(ours, xs), rep)
    t_fwd_grad = median_time(lambda: ours(*xs), rep)
    t_fb = median_time(lambda: run_fwd_bwd(ours, xs), rep)
    xs_small = make_inputs(B, T_small, H, K, V)
    t_fb_small = median_time(lambda: run_fwd_bwd(ours, xs_small), rep)
    saved = saved_tensor_bytes(ours, xs)
    flops_fwd, flops_fb = flop_counts(B, T_big, H, K, V)
    lb_fwd, lb_fb = flops_fwd / rate, flops_fb / rate

    t_naive_fwd = t_naive_fb = None
    if not args.no_naive:
        naive = load_naive_chunk()
        t_naive_fwd = median_time(lambda: run_fwd(naive, xs), max(1, rep // 2))
        t_naive_fb = median_time(lambda: run_fwd_bwd(naive, xs), max(1, rep // 2))
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    ms = (lambda t: None if t is None else round(t * 1e3, 2))
    record = {
        "benchmark": "chunk_gated_delta_rule",
        "shape": {"B": B, "H": H, "K": K, "V": V, "T": T_big, "T_small": T_small},
        "dtype": "float32",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "repeats": rep,
        # buffer pool and allocator settings change the page-fault share of the timings (module docstring)
        "workspace_mb": workspace.MAX_BYTES / 2 ** 20,
        "allocator_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_") or k == "THP_MEM_ALLOC_ENABLE"},
        "matmul_gflops": round(rate / 1e9, 1),
        "forward_no_grad_ms": ms(t_fwd),
        "forward_with_grad_ms": ms(t_fwd_grad),
        "forward_backward_ms": ms(t_fb),
        "forward_backward_small_T_ms": ms(t_fb_small),
        "scaling_ratio_4x_T": round(t_fb / t_fb_small, 2),
        "flops_forward": flops_fwd,
        "flops_forward_backward": flops_fb,
        "lower_bound_forward_ms": ms(lb_fwd),
        "lower_bound_forward_backward_ms": ms(lb_fb),
        "naive_chunk_forward_ms": ms(t_naive_fwd),
        "naive_chunk_forward_backward_ms": ms(t_naive_fb),
        "speedup_vs_naive_forward_backward": None if t_naive_fb is None else round(t_naive_fb / t_fb, 2),
        "saved_for_backward_bytes": saved,
        "peak_rss_bytes": peak_rss,
        "targets": {"forward_ms": 90, "forward_backward_ms": 300, "speedup_vs_naive": 5,
                    "scaling_ratio": 4.5, "saved_bytes": 0.5e9},
    }

    rows = [
        ("matmul rate (2048^3 fp32)", f"{rate / 1e9:.0f} GFLOP/s", ""),
        (f"forward, no grad (T={T_big})", f"{t_fwd * 1e3:.1f} ms", "<= 90 ms"),
        (f"forward, inputs requiring grad", f"{t_fwd_grad * 1e3:.1f} ms", "<= 90 ms"),
        (f"forward+backward (T={T_big})", f"{t_fb * 1e3:.1f} ms", "<= 300 ms"),
        ("FLOP lower bound fwd / fwd+bwd", f"{lb_fwd * 1e3:.1f} / {lb_fb * 1e3:.1f} ms", ""),
        (f"forward+backward (T={T_small})", f"{t_fb_small * 1e3:.1f} ms", ""),
        ("scaling fwd+bwd 4x T", f"{t_fb / t_fb_small:.2f}x", "<= 4.5x"),
        ("naive_chunk (fla 0.6.0) fwd / fwd+bwd",
         "skipped" if t_naive_fb is None else f"{t_naive_fwd * 1e3:.1f} / {t_naive_fb * 1e3:.1f} ms", ""),
        ("speedup vs naive, fwd+bwd", "-" if t_naive_fb is None else f"{t_naive_fb / t_fb:.1f}x", ">= 5x"),
        ("saved for backward", f"{saved / 1e6:.1f} MB", "< 500 MB"),
        ("peak RSS", f"{peak_rss / 1e6:.0f} MB", ""),
    ]
    w = max(len(r[0]) for r in rows)
    print(f"chunk_gated_delta_rule  B={B} H={H} K={K} V={V} fp32, {torch.get_num_threads()} threads, "
          f"median of {rep}")
    for name, val, target in rows:
        print(f"  {name:<{w}}  {val:>22}  {target}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    out = Path(args.out) if args.out else (RESULTS if not args.quick else RESULTS.with_name("bench_gdn_quick.json"))
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
