"""The floor of separate torch ops for the chunked ops, against the FLOP bound and against myfla.

The CPU targets (issue 12: forward+backward within 3x of the FLOP bound at 1-16 threads; issue 14:
chunk_rwkv7 within 5x at K=64) divide the chunked algorithm's matmul FLOPs by the rate of one large
square GEMM. An implementation made of separate torch ops runs those FLOPs as batched products at
the chunk's shapes (``[BT, K] @ [K, BT]`` and the like), and the state-carrying ones chunk by chunk,
batched over heads only. This script times exactly that and nothing else: every product the FLOP
bound counts, each as a batched ``torch.bmm`` on contiguous operands at its shape, in the fastest of
several batchings (the whole grid in one call, or slabs of 16, 64 or 256 chunk-heads streaming
through memory, or one slab over and over with its operands warm in cache), the products that read
the carried state in a loop over the chunks (on one thread or on all, whichever is faster), and the
triangular inverse where the bound counts one (LAPACK's batched solve or myfla's block doubling,
whichever is faster, on one thread or on all).
No gate arithmetic, no layout copy, no allocation, no autograd: a floor that no implementation made
of these torch calls can go below, whatever it fuses or reorders around them. The backward's
products are those left when the forward's intermediates are saved (myfla saves them; fla recomputes
them, and the bound counts the recompute), so the floor holds for myfla as it runs.

Per op and shape, at each thread count, side by side in one process: the FLOP bound (the large
GEMM's rate measured before and after, the higher kept), the floor, and myfla's op (forward and
forward+backward). Reported: floor / bound (above the target: out of reach of torch calls),
myfla / floor (what myfla adds: gate work, copies, dispatch), myfla / bound, and the streamed floor
/ bound: the same without the warm batchings, every operand read from where it lies (inside an op
each product's operands are new to the cache).

    python benchmarks/bench_chunk_floor.py --ops gdn kda --shapes small train --threads 1,2
    python benchmarks/bench_chunk_floor.py --ops rwkv7 --shapes 64 128 --threads 2

Product lists, per chunk and head (``(m, k, n)`` is ``[m, k] @ [k, n]``), follow the FLOP counts of
``bench_matrix.flop_counts`` (GDN, KDA, chunk size 64) and ``bench_rwkv7.flop_counts`` (DPLR, at
fla's chunk size 16 and at myfla's 32; each pass takes the lower of the two). Where a count names a
product only by its FLOPs, its shape is one of the chunk's own (the rates of ``[BT, K] @ [K, BT]``
and its permutations differ by tens of percent, not by multiples).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_matrix  # noqa: E402
import bench_rwkv7  # noqa: E402
from myfla.ops.utils.solve_tril import _unit_lower_inverse  # noqa: E402
from timing import machine_info, median_time  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "bench_chunk_floor.json"
SHAPES = {"small": (1, 8192, 4, 128, 128), "train": (4, 4096, 16, 128, 128)}
RWKV7_B, RWKV7_T, RWKV7_H = 1, 8192, 4
SLAB_SIZES = (16, 64, 256)

Product = Tuple[int, int, int]


def products(op: str, BT: int, K: int, V: int) -> Dict[str, dict]:
    """Per pass: ``parallel`` products (independent across chunks), ``loop`` products (read the state
    carried from the previous chunk), ``inverses`` (``BT x BT`` triangular inverses) per chunk-head."""
    if op == "gdn":
        fwd = {"parallel": [(BT, K, BT), (BT, BT, K), (BT, BT, V), (BT, K, V), (BT, K, BT), (BT, BT, V)],
               "loop": [(BT, K, V), (K, BT, V)], "inverses": 1}
        bwd = {"parallel": [(BT, BT, V), (K, BT, V), (BT, V, BT)] + [(BT, V, K)] * 3
               + [(BT, K, BT)] + [(BT, BT, K)] * 2 + [(BT, K, BT), (BT, V, BT), (BT, BT, K), (BT, BT, V)]
               + [(BT, BT, BT)] * 2 + [(BT, BT, K)] * 2 + [(BT, K, BT)],
               "loop": [(BT, K, V), (K, BT, V)], "inverses": 0}
    elif op == "kda":
        fwd = {"parallel": [(BT, K, BT)] * 2 + [(BT, BT, K), (BT, BT, V), (BT, BT, V), (BT, K, V)],
               "loop": [(BT, K, V), (K, BT, V)], "inverses": 0}
        bwd = {"parallel": [(BT, V, BT), (K, BT, V), (BT, BT, V)] + [(BT, V, K)] * 3
               + [(BT, K, BT), (BT, BT, K), (BT, V, BT), (BT, BT, V)] + [(BT, BT, BT)] * 2 + [(BT, BT, K)] * 4,
               "loop": [(BT, K, V), (K, BT, V)], "inverses": 0}
    elif op == "rwkv7":
        fwd = {"parallel": [(BT, K, BT)] * 4 + [(BT, BT, BT), (BT, BT, K), (BT, BT, V), (K, BT, V), (BT, K, V),
                                                 (BT, BT, V), (BT, BT, V)],
               "loop": [(BT, K, V), (K, BT, V)], "inverses": 1}
        bwd = {"parallel": [(BT, K, BT)] * 5 + [(BT, BT, K)] * 5 + [(BT, V, BT)] * 3 + [(BT, BT, V)] * 3
               + [(BT, BT, BT)] * 5 + [(K, BT, V)] * 2 + [(BT, V, K)] * 2 + [(BT, K, V)] * 2,
               "loop": [(BT, K, V), (K, BT, V)], "inverses": 0}
    else:
        raise ValueError(f"unknown op {op!r}: use gdn, kda or rwkv7")
    return {"fwd": fwd, "bwd": bwd}


def recomputed(op: str, BT: int, K: int, V: int) -> List[Product]:
    """Products the FLOP bound counts in the backward that recompute the forward's intermediates
    (fla recomputes them; myfla saves them, so the floor leaves them out)."""
    if op == "gdn":
        # w, u and the states, and q k^T (fla's chunk_bwd_dv_local forms it again)
        return [(BT, BT, K), (BT, BT, V), (BT, K, V), (K, BT, V), (BT, K, BT)]
    if op == "kda":
        return [(BT, K, BT), (BT, BT, K), (BT, BT, V), (BT, K, V), (K, BT, V)]
    fwd = products(op, BT, K, V)["fwd"]
    output = [(BT, K, V), (BT, BT, V), (BT, BT, V)]        # the forward without its output
    rest = list(fwd["parallel"])
    for p in output:
        rest.remove(p)
    return rest + fwd["loop"]


def inverse_flops(op: str, BT: int) -> float:
    """FLOPs the bound counts for one ``BT x BT`` triangular inverse (bench_matrix counts BT^3 / 3,
    bench_rwkv7 twice that)."""
    return 2 * BT ** 3 / 3 if op == "rwkv7" else BT ** 3 // 3


def part_flops(op: str, part: dict, BT: int, chunk_heads: int) -> float:
    per = sum(2 * m * k * n for m, k, n in part["parallel"] + part["loop"]) + part["inverses"] * inverse_flops(op, BT)
    return per * chunk_heads


class Buffers:
    """Operand and result buffers for ``N`` chunk-heads, reused by every product (sized for the largest)."""

    def __init__(self, N: int, largest: int):
        gen = torch.Generator().manual_seed(0)
        self.a = torch.randn(N * largest, generator=gen)
        self.b = torch.randn(N * largest, generator=gen)
        self.o = torch.empty(N * largest)

    def operands(self, N: int, m: int, k: int, n: int):
        return (self.a[:N * m * k].view(N, m, k), self.b[:N * k * n].view(N, k, n), self.o[:N * m * n].view(N, m, n))


def batched_floor(N: int, call: Callable[[slice], None], repeats: int) -> Dict[str, Tuple[float, str]]:
    """Fastest way to run ``call`` over ``N`` chunk-heads: one call on all of them, or slabs of
    ``SLAB_SIZES`` chunk-heads (each slab its own memory, or the first slab again and again: warm).
    Returns ``{'any': (seconds, way), 'streamed': (seconds, way)}``, the second without the warm ways
    (every operand read from where it lies, as inside an op, where each is new to the cache)."""
    ways = {"grid": lambda: call(slice(0, N))}
    for S in SLAB_SIZES:
        if S >= N:
            continue
        starts = range(0, N - S + 1, S)
        ways[f"slabs of {S}"] = lambda S=S, starts=starts: [call(slice(s, s + S)) for s in starts]
        ways[f"warm slab of {S}"] = lambda S=S, starts=starts: [call(slice(0, S)) for _ in starts]
    times = {name: median_time(fn, repeats) for name, fn in ways.items()}
    best = min(times, key=times.get)
    streamed = min((w for w in times if not w.startswith("warm")), key=times.get)
    return {"any": (times[best], best), "streamed": (times[streamed], streamed)}


def floor_time(part: dict, B: int, H: int, NC: int, BT: int, buffers: Buffers, repeats: int) -> dict:
    """Seconds of one pass's products as torch calls (see the module docstring), by kind."""
    N, BH = B * H * NC, B * H
    threads = torch.get_num_threads()
    out = {"parallel_s": 0.0, "parallel_streamed_s": 0.0, "loop_s": 0.0, "inverse_s": 0.0,
           "inverse_streamed_s": 0.0, "ways": {}}
    for m, k, n in sorted(set(part["parallel"])):
        count = part["parallel"].count((m, k, n))
        a, b, o = buffers.operands(N, m, k, n)
        best = batched_floor(N, lambda sl: torch.bmm(a[sl], b[sl], out=o[sl]), repeats)
        out["parallel_s"] += count * best["any"][0]
        out["parallel_streamed_s"] += count * best["streamed"][0]
        out["ways"][f"{m}x{k}x{n}"] = best["any"][1]
    if part["inverses"]:
        lower = torch.randn(N, BT, BT).tril_(-1).div_(BT)
        eye = torch.eye(BT).expand(N, BT, BT)
        result = torch.empty(N, BT, BT)
        ways = {
            "solve_triangular": lambda sl: torch.linalg.solve_triangular(
                lower[sl], eye[sl], upper=False, unitriangular=True, out=result[sl]),
            # myfla's block doubling (pairs of batched matmuls; solve_tril's CPU path)
            "block doubling": lambda sl: _unit_lower_inverse(lower[sl]),
        }
        best, streamed = {}, {}
        for name, call in ways.items():
            for n in sorted({1, threads}):
                torch.set_num_threads(n)
                found = batched_floor(N, call, repeats)
                best[f"{name}, {found['any'][1]}, {n} thread(s)"] = found["any"][0]
                streamed[f"{name}, {found['streamed'][1]}, {n} thread(s)"] = found["streamed"][0]
        torch.set_num_threads(threads)
        way = min(best, key=best.get)
        out["inverse_s"] = part["inverses"] * best[way]
        out["inverse_streamed_s"] = part["inverses"] * min(streamed.values())
        out["ways"]["inverse"] = way
    loops = [buffers.operands(N, m, k, n) for m, k, n in part["loop"]]
    steps = [tuple(x.view(NC, BH, *x.shape[1:]).unbind(0) for x in abo) for abo in loops]

    def loop():
        for c in range(NC):
            for a, b, o in steps:
                torch.bmm(a[c], b[c], out=o[c])
    # the loop's batched products are small: on many threads they may run faster on one
    loop_times = {}
    for n in sorted({1, threads}):
        torch.set_num_threads(n)
        loop_times[n] = median_time(loop, repeats)
    torch.set_num_threads(threads)
    out["loop_threads"] = min(loop_times, key=loop_times.get)
    out["loop_s"] = loop_times[out["loop_threads"]]
    out["total_s"] = out["parallel_s"] + out["loop_s"] + out["inverse_s"]
    out["total_streamed_s"] = out["parallel_streamed_s"] + out["loop_s"] + out["inverse_streamed_s"]
    return out


def gemm_rate(repeats: int) -> float:
    """FLOP/s of a 2048^3 fp32 GEMM (bench_matrix's rate for the bound)."""
    return bench_matrix.matmul_rate("cpu", torch.float32, repeats)


def myfla_times(op: str, shape, repeats: int) -> Dict[str, float]:
    """Median seconds of myfla's op, forward (no grad) and forward+backward."""
    if op == "rwkv7":
        fwd_in = bench_rwkv7.make_inputs(*shape)
        grad_in = bench_rwkv7.make_inputs(*shape, requires_grad=True)
        return {"fwd_s": median_time(lambda: bench_rwkv7.run_fwd(bench_rwkv7.ours, fwd_in), repeats),
                "fwd_bwd_s": median_time(lambda: bench_rwkv7.run_fwd_bwd(bench_rwkv7.ours, grad_in), repeats)}
    from myfla.ops.gated_delta_rule import chunk_gated_delta_rule
    from myfla.ops.kda import chunk_kda
    fn = {"gdn": chunk_gated_delta_rule, "kda": chunk_kda}[op]
    xs = bench_matrix.make_inputs(op, shape, torch.float32, "cpu")
    return {"fwd_s": median_time(lambda: bench_matrix.run_fwd("myfla", op, fn, xs), repeats),
            "fwd_bwd_s": median_time(lambda: bench_matrix.run_fwd_bwd("myfla", op, fn, xs), repeats)}


def bound_flops(op: str, shape) -> Tuple[float, float]:
    if op == "rwkv7":
        return bench_rwkv7.flop_counts(*shape, bench_rwkv7.FLA_BT)
    return bench_matrix.flop_counts(op, *shape)


def measure(op: str, shape, threads: int, repeats: int) -> dict:
    torch.set_num_threads(threads)
    B, T, H, K, V = shape
    chunk_sizes = (bench_rwkv7.FLA_BT, 32) if op == "rwkv7" else (bench_matrix.BT,)
    rate_before = gemm_rate(repeats)
    ours = myfla_times(op, shape, repeats)
    floors = {}
    for BT in chunk_sizes:
        NC = -(-T // BT)
        passes = products(op, BT, K, V)
        largest = max(max(m * k, k * n, m * n) for p in passes.values() for m, k, n in p["parallel"] + p["loop"])
        buffers = Buffers(B * H * NC, largest)
        f = {name: floor_time(part, B, H, NC, BT, buffers, repeats) for name, part in passes.items()}
        f["flops"] = {name: part_flops(op, part, BT, B * H * NC) for name, part in passes.items()}
        floors[BT] = f
        del buffers
    rate = max(rate_before, gemm_rate(repeats))
    f_fwd, f_all = bound_flops(op, shape)
    bound = {"fwd_s": f_fwd / rate, "fwd_bwd_s": f_all / rate}
    # each pass at its faster chunk size (the forward alone may prefer another than forward+backward)
    fwd_bt = min(floors, key=lambda bt: floors[bt]["fwd"]["total_s"])
    all_bt = min(floors, key=lambda bt: floors[bt]["fwd"]["total_s"] + floors[bt]["bwd"]["total_s"])
    floor = {"fwd_s": floors[fwd_bt]["fwd"]["total_s"],
             "fwd_bwd_s": floors[all_bt]["fwd"]["total_s"] + floors[all_bt]["bwd"]["total_s"],
             "chunk_size": {"fwd": fwd_bt, "fwd_bwd": all_bt}}
    streamed = {"fwd_s": min(f["fwd"]["total_streamed_s"] for f in floors.values()),
                "fwd_bwd_s": min(f["fwd"]["total_streamed_s"] + f["bwd"]["total_streamed_s"] for f in floors.values())}
    ratios = {f"{a}/{b}": {p: x[f"{p}_s"] / y[f"{p}_s"] for p in ("fwd", "fwd_bwd")}
              for a, b, x, y in (("floor", "bound", floor, bound), ("streamed floor", "bound", streamed, bound),
                                 ("myfla", "floor", ours, floor), ("myfla", "bound", ours, bound))}
    return {"op": op, "shape": list(shape), "threads": threads, "gemm_flops_per_s": rate,
            "gemm_rates_before_after": [rate_before, rate], "bound": bound, "floor": floor,
            "streamed_floor": streamed,
            "floor_by_chunk_size": {str(bt): f for bt, f in floors.items()}, "myfla": ours, "ratios": ratios}


def print_row(r: dict) -> None:
    rat = r["ratios"]
    print(f"{r['op']:5s} {'x'.join(map(str, r['shape'])):18s} {r['threads']:2d} thr "
          f"{r['gemm_flops_per_s'] / 1e9:6.0f} GF/s | bound {r['bound']['fwd_s'] * 1e3:7.1f} / "
          f"{r['bound']['fwd_bwd_s'] * 1e3:7.1f} ms | floor {r['floor']['fwd_s'] * 1e3:7.1f} / "
          f"{r['floor']['fwd_bwd_s'] * 1e3:7.1f} ms (BT={r['floor']['chunk_size']['fwd']}/"
          f"{r['floor']['chunk_size']['fwd_bwd']}) | myfla "
          f"{r['myfla']['fwd_s'] * 1e3:7.1f} / {r['myfla']['fwd_bwd_s'] * 1e3:7.1f} ms | floor/bound "
          f"{rat['floor/bound']['fwd']:.2f}x / {rat['floor/bound']['fwd_bwd']:.2f}x | myfla/floor "
          f"{rat['myfla/floor']['fwd']:.2f}x / {rat['myfla/floor']['fwd_bwd']:.2f}x | myfla/bound "
          f"{rat['myfla/bound']['fwd']:.2f}x / {rat['myfla/bound']['fwd_bwd']:.2f}x | streamed floor/bound "
          f"{rat['streamed floor/bound']['fwd']:.2f}x / {rat['streamed floor/bound']['fwd_bwd']:.2f}x", flush=True)


def main(argv: List[str] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ops", nargs="+", default=["gdn", "kda"], choices=["gdn", "kda", "rwkv7"])
    ap.add_argument("--shapes", nargs="+", default=["small"],
                    help="gdn/kda: small, train or BxTxHxKxV; rwkv7: K=V (B=1 T=8192 H=4)")
    ap.add_argument("--threads", default="2", help="comma-separated thread counts")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    record = {"machine": machine_info("cpu"),
              "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": []}
    cells = []
    for op in args.ops:
        for name in args.shapes:
            if op == "rwkv7":
                if not name.isdigit():
                    ap.error(f"rwkv7 takes head sizes as shapes (e.g. 64 128), not {name!r}")
                cells.append((op, (RWKV7_B, RWKV7_T, RWKV7_H, int(name), int(name))))
            elif name in SHAPES:
                cells.append((op, SHAPES[name]))
            elif len(name.split("x")) == 5 and all(x.isdigit() for x in name.split("x")):
                cells.append((op, tuple(int(x) for x in name.split("x"))))
            else:
                ap.error(f"{op} takes small, train or BxTxHxKxV as shapes, not {name!r}")
    for op, shape in cells:
        for threads in (int(t) for t in args.threads.split(",")):
            row = measure(op, shape, threads, args.repeats)
            record["rows"].append(row)
            print_row(row)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
