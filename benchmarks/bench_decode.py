"""Per-token decode latency of one GatedDeltaNet and one KimiDeltaAttention layer (hidden_size 1024)
with a Cache, on CPU (fp32, 2 threads, eval mode, no grad). Each run prefills a prompt (chunk
path, > 64 tokens), then decodes tokens one at a time through the cache (fused_recurrent path and
ShortConvolution.step); the per-step wall times give a median and a 10th/90th percentile.
Prints a table and writes benchmarks/results/bench_decode.json.

    python benchmarks/bench_decode.py            # batch 1 and 8, prompt 128, 64 decode steps
    python benchmarks/bench_decode.py --quick    # fewer steps, for a smoke run
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

from myfla.layers import GatedDeltaNet, KimiDeltaAttention
from myfla.models.utils import Cache

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "bench_decode.json"
HIDDEN = 1024

# layer shapes at hidden_size 1024 (fla's configs scaled down: 8 heads of 128)
LAYERS = {
    "GatedDeltaNet": lambda: GatedDeltaNet(hidden_size=HIDDEN, head_dim=128, num_heads=8, expand_v=2, layer_idx=0),
    "KimiDeltaAttention": lambda: KimiDeltaAttention(hidden_size=HIDDEN, head_dim=128, num_heads=8, expand_v=1,
                                                     layer_idx=0),
}


def percentile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


@torch.no_grad()
def measure(layer, batch: int, prompt: int, steps: int, warmup: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, prompt + warmup + steps, HIDDEN, generator=gen)
    layer(x[:, :prompt], past_key_values=Cache(), use_cache=True)   # one-time costs out of the timing
    cache = Cache()
    t0 = time.perf_counter()
    _, _, cache = layer(x[:, :prompt], past_key_values=cache, use_cache=True)
    prefill = time.perf_counter() - t0
    times = []
    for t in range(prompt, prompt + warmup + steps):
        t0 = time.perf_counter()
        _, _, cache = layer(x[:, t:t + 1], past_key_values=cache, use_cache=True)
        if t >= prompt + warmup:
            times.append(time.perf_counter() - t0)
    assert cache.get_seq_length() == prompt + warmup + steps
    return {
        "batch": batch,
        "prompt": prompt,
        "steps": steps,
        "prefill_s": prefill,
        "decode_median_ms": 1e3 * statistics.median(times),
        "decode_p10_ms": 1e3 * percentile(times, 0.1),
        "decode_p90_ms": 1e3 * percentile(times, 0.9),
        "tokens_per_s": batch / statistics.median(times),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer decode steps")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    steps, warmup = (8, 2) if args.quick else (args.steps, 8)

    torch.set_num_threads(2)
    torch.manual_seed(0)
    rows = []
    for name, make in LAYERS.items():
        layer = make().eval()
        params = sum(p.numel() for p in layer.parameters())
        for batch in args.batches:
            row = {"layer": name, "params": params, **measure(layer, batch, args.prompt, steps, warmup)}
            rows.append(row)

    header = f"{'layer':<20} {'params':>9} {'batch':>5} {'prefill':>9} {'median':>9} {'p10':>8} {'p90':>8} {'tok/s':>8}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['layer']:<20} {r['params']:>9,} {r['batch']:>5} {r['prefill_s'] * 1e3:>7.1f}ms "
              f"{r['decode_median_ms']:>7.2f}ms {r['decode_p10_ms']:>6.2f}ms {r['decode_p90_ms']:>6.2f}ms "
              f"{r['tokens_per_s']:>8.1f}")

    record = {
        "benchmark": "bench_decode",
        "what": "per-token decode latency of one layer with a Cache (prefill, then 1 token per step)",
        "hidden_size": HIDDEN,
        "dtype": "float32",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cuda_visible": torch.cuda.is_available(),
        "processor": platform.processor(),
        "quick": args.quick,
        # other processes on this 2-core machine distort 2-thread timings badly (OpenMP spinning)
        "loadavg_after": os.getloadavg(),
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
