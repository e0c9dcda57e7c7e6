"""Forward+backward of myfla's chunk_kda and chunk_gated_delta_rule on CPU with the backward reading
the forward's kept intermediates (MYFLA_SAVE_MB, ``myfla.ops.utils.save_budget``) against fla's
recompute (budget 0), side by side in one run: the two variants alternate call by call, medians.
Also prints the bytes one call keeps. Writes benchmarks/results/bench_save.json (or --out).

    python benchmarks/bench_save.py                                  # B=1 T=2048 H=4 K=V=128, 1 thread
    python benchmarks/bench_save.py --shapes 1x8192x4x128,4x4096x16x128 --threads 1,2,4,8,16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import myfla.ops.gated_delta_rule.chunk as gdn_chunk
import myfla.ops.kda.chunk as kda_chunk
from myfla.ops.gated_delta_rule import chunk_gated_delta_rule
from myfla.ops.kda import chunk_kda
from myfla.ops.utils import save_budget

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "bench_save.json"


def make_step(op: str, B: int, T: int, H: int, K: int, V: int):
    torch.manual_seed(0)
    q, k = (F.normalize(torch.randn(B, T, H, K), dim=-1) for _ in range(2))
    v, beta = torch.randn(B, T, H, V), torch.rand(B, T, H).sigmoid()
    if op == "kda":
        g, fn = F.logsigmoid(torch.randn(B, T, H, K)) / 16, chunk_kda
    else:
        g, fn = F.logsigmoid(torch.randn(B, T, H)), chunk_gated_delta_rule
    xs = [x.requires_grad_() for x in (q, k, v, g, beta)]
    do = torch.randn(B, T, H, V)

    def step():
        for x in xs:
            x.grad = None
        o, _ = fn(*xs, scale=K ** -0.5)
        o.backward(do)
    return step, xs


def kept_bytes(op: str, xs) -> int:
    q, k, v = xs[:3]
    if op == "kda":
        return kda_chunk._kept_bytes(q, k, v, None)
    B, T, H, K = k.shape
    segments = gdn_chunk._time_segments(B, T, H, max(K, v.shape[-1]), None)
    return sum(gdn_chunk._kept_bytes(k[:, s:e], v[:, s:e], None) for s, e in segments)


def side_by_side(step, repeats: int, budget: int):
    """Median seconds of ``step`` kept (``budget``) and recomputed (0), alternating, after one
    untimed call of each."""
    times = {"kept": [], "recompute": []}
    for i in range(repeats + 1):
        for name, b in (("kept", budget), ("recompute", 0)):
            save_budget.SAVE_BYTES = b
            t0 = time.perf_counter()
            step()
            if i:
                times[name].append(time.perf_counter() - t0)
    save_budget.SAVE_BYTES = budget
    return {name: statistics.median(ts) for name, ts in times.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", default="kda,gdn")
    ap.add_argument("--shapes", default="1x2048x4x128", help="BxTxHxK[xV], comma-separated")
    ap.add_argument("--threads", default="1", help="comma-separated thread counts")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    budget = save_budget.SAVE_BYTES
    record = {"machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
              "torch": torch.__version__, "dtype": "float32", "save_mb": budget / 2 ** 20,
              "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": []}
    print(f"fwd+bwd, fp32, medians of {args.repeats} (kept and recompute alternating); "
          f"MYFLA_SAVE_MB={budget / 2 ** 20:g}")
    print(f"{'op':4} {'shape':>16} {'thr':>3} {'kept MB':>8} {'kept ms':>9} {'recompute ms':>13} {'ratio':>6}")
    for shape in args.shapes.split(","):
        dims = [int(x) for x in shape.split("x")]
        B, T, H, K = dims[:4]
        V = dims[4] if len(dims) > 4 else K
        for op in args.ops.split(","):
            step, xs = make_step(op, B, T, H, K, V)
            for threads in (int(t) for t in args.threads.split(",")):
                torch.set_num_threads(threads)
                nbytes = kept_bytes(op, xs)
                t = side_by_side(step, args.repeats, budget)
                fits = save_budget.keeps(nbytes, budget)
                row = {"op": op, "B": B, "T": T, "H": H, "K": K, "V": V, "threads": threads,
                       "kept_mb": nbytes / 2 ** 20, "kept_fits_budget": fits,
                       "kept_ms": t["kept"] * 1e3, "recompute_ms": t["recompute"] * 1e3}
                record["rows"].append(row)
                note = "" if fits else "  (over budget: both recompute)"
                print(f"{op:4} {f'{B}x{T}x{H}x{K}x{V}':>16} {threads:>3} {row['kept_mb']:>8.0f} "
                      f"{row['kept_ms']:>9.1f} {row['recompute_ms']:>13.1f} "
                      f"{row['kept_ms'] / row['recompute_ms']:>6.2f}{note}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
