"""Effect of myfla's CPU buffer pool (myfla/ops/utils/workspace.py) on chunk_gated_delta_rule and
chunk_kda forward+backward: pool on and off alternate in one process, so both see the same machine
state. Reports medians and the minor page faults per pass. Writes
benchmarks/results/bench_workspace.json.

    python benchmarks/bench_workspace.py            # B=1 H=4 K=V=128 T=8192, 2 threads
    python benchmarks/bench_workspace.py --quick    # T=1024
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from myfla.ops.gated_delta_rule import chunk_gated_delta_rule
from myfla.ops.kda import chunk_kda
from myfla.ops.utils import workspace

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "bench_workspace.json"


def make_inputs(op: str, B: int, T: int, H: int, K: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=gen)
    k = F.normalize(torch.randn(B, T, H, K, generator=gen), p=2, dim=-1)
    v = torch.randn(B, T, H, K, generator=gen)
    gate_shape = (B, T, H) if op == "gdn" else (B, T, H, K)
    g = F.logsigmoid(torch.randn(*gate_shape, generator=gen)) / (1 if op == "gdn" else 16)
    beta = torch.rand(B, T, H, generator=gen)
    h0 = torch.randn(B, H, K, K, generator=gen)
    return [x.requires_grad_() for x in (q, k, v, g, beta, h0)]


def fwd_bwd(fn, xs):
    for x in xs:
        x.grad = None
    o, ht = fn(*xs[:5], initial_state=xs[5], output_final_state=True)
    (o.sum() + ht.sum()).backward()


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=5, help="alternations of pool on / off")
    args = ap.parse_args()
    torch.set_num_threads(2)
    B, H, K = 1, 4, 128
    T = 1024 if args.quick else 8192
    bound = workspace.MAX_BYTES
    record = {"benchmark": "workspace", "shape": {"B": B, "T": T, "H": H, "K": K, "V": K}, "threads": 2,
              "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
              "cpu_count": os.cpu_count(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "rounds": args.rounds, "pool_bound_mb": bound / 2 ** 20, "ops": {}}
    print(f"B={B} H={H} K=V={K} T={T} fp32, 2 threads, {args.rounds} alternating rounds")
    print(f"{'op':<24}{'pool':>6}{'median':>12}{'faults/pass':>14}")
    for op, fn in (("chunk_gated_delta_rule", chunk_gated_delta_rule), ("chunk_kda", chunk_kda)):
        xs = make_inputs("gdn" if op.startswith("chunk_gated") else "kda", B, T, H, K)
        times = {"on": [], "off": []}
        faults = {"on": [], "off": []}
        for mode in ("on", "off"):                              # warm-up of both settings
            workspace.MAX_BYTES = bound if mode == "on" else 0
            fwd_bwd(fn, xs)
        for _ in range(args.rounds):
            for mode in ("on", "off"):
                # off: the pool keeps its buffers but hands none out (every request exceeds bound 0)
                workspace.MAX_BYTES = bound if mode == "on" else 0
                f0, t0 = minor_faults(), time.perf_counter()
                fwd_bwd(fn, xs)
                times[mode].append(time.perf_counter() - t0)
                faults[mode].append(minor_faults() - f0)
        workspace.MAX_BYTES = bound
        entry = {}
        for mode in ("on", "off"):
            med = statistics.median(times[mode])
            flt = statistics.median(faults[mode])
            entry[mode] = {"fwd_bwd_ms": round(med * 1e3, 2), "minor_faults": flt,
                           "faulted_mb": round(flt * resource.getpagesize() / 1e6, 1)}
            print(f"{op:<24}{mode:>6}{med * 1e3:>10.1f} ms{flt:>14.0f}")
        entry["speedup"] = round(entry["off"]["fwd_bwd_ms"] / entry["on"]["fwd_bwd_ms"], 3)
        record["ops"][op] = entry
        print(f"{op:<24} pool speedup {entry['speedup']:.2f}x")
    out = RESULTS.with_name("bench_workspace_quick.json") if args.quick else RESULTS
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
