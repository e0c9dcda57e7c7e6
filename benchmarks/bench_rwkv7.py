"""Speed of myfla's chunk_rwkv7 on CPU (fp32, explicit thread count) against a FLOP lower bound
measured in the same run and fla 0.4.0's naive DPLR references (``dplr_recurrence``,
``dplr_chunkwise``, loaded by file path from the fetched upstream tree) side by side. Prints a table
and writes benchmarks/results/bench_rwkv7.json and .md.

    python benchmarks/bench_rwkv7.py                   # B=1 T=8192 H=4, K=V=64 and 128, 2 threads
    python benchmarks/bench_rwkv7.py --threads 1       # another thread count
    python benchmarks/bench_rwkv7.py --quick           # T=1024, for a smoke run
    python benchmarks/bench_rwkv7.py --recompute       # backward recomputes the forward, as fla does
    python benchmarks/bench_rwkv7.py --device cuda --fla-path /tmp/fla --dtypes fp32,bf16 \
        --out benchmarks/results/h100_bench_rwkv7_cuda.json   # GPU: myfla vs fla's Triton kernels

On CUDA (``--device cuda``) the script times, side by side in one run, myfla's ``chunk_rwkv7`` on CUDA
tensors (its state loops replayed as CUDA graphs), the same with the graphs off (``myfla-eager``: the
loops launch per chunk), fla's Triton ``chunk_rwkv7`` (``--fla-path`` names where fla 0.4.0 is
installed; its autotuning trimmed to two configs per kernel as /work/shared/GPU.md advises) and,
unless ``--skip-refs``, fla's naive ``dplr_chunkwise`` reference on the GPU; and counts, for one
forward+backward after warm-up, the host's kernel and graph launches, the GPU's busy time (torch
profiler) and the memory it allocates beyond its inputs at its peak, at every ``--T`` (comma-separated,
to show whether launches grow with the length).
``--decode`` adds one-token steps of ``fused_mul_recurrent_rwkv7`` (B=1 and 8, 16 heads of 64), myfla
(graphs on and off) against fla's Triton kernel.

The backward reads the forward's intermediates by default (``ForwardParts``, kept up to
``MYFLA_DPLR_SAVE_MB``); ``--recompute`` times fla's recompute instead (``SAVE_BYTES = 0``).

Inputs are what RWKV7Attention feeds the op: r, k, v ~ N(0, 1), log decay w = -exp(-1/2) sigmoid(.),
a = -kk, b = kk * sigmoid(.) with kk L2-normalised, an initial state, scale 1.

FLOP lower bound: the multiply-adds (x2) of fla's chunked DPLR algorithm at its 16-token chunks
(``flop_counts``: intra-chunk matrices, WY representation, state recurrence and output; the backward
recomputes the forward and runs fla's six backward functions), divided by the best fp32 matmul rate
measured in the same run (chunk-shaped batched matmul or one large GEMM, each timed before and after
our op and the higher rate kept, so a slow moment of a drifting machine cannot loosen the bound). The
port runs 32-token chunks (more FLOPs than the bound counts); the bound is not adjusted for that. Next
to it, a diagnostic (``timing.matmul_rate_after_other_work``): one slab's score product timed back to
back, right after a read of 64 MB and right after 3 ms of pure-Python work; inside the op every
product follows other work, which cost the product 10-30% of its back-to-back rate on this project's
2-core VM and on the H100 host.

fla's references are timed at the full T by default, after one untimed call at a short T (their first
call pays one-off set-up a second one does not), medians of ``--ref-repeats``. ``--ref-T`` times them at
a shorter T and scales the times linearly to T instead (quicker; both references are token or chunk
loops, so a short T inflates their share of per-call overhead: report full-T figures).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from myfla.ops.generalized_delta_rule.dplr import chunk as dplr_chunk  # noqa: E402
from myfla.ops.rwkv7 import chunk_rwkv7  # noqa: E402
# benchmarks/ is the script directory
from timing import machine_info, matmul_rate_after_other_work, matmul_rates, median_time  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "bench_rwkv7.json"
FLA_BT = 16           # fla's chunk size for the DPLR delta rule


def make_inputs(B, T, H, K, V, requires_grad=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    r = torch.randn(B, T, H, K, generator=gen)
    k = torch.randn(B, T, H, K, generator=gen)
    v = torch.randn(B, T, H, V, generator=gen)
    w = -0.6065306597126334 * torch.randn(B, T, H, K, generator=gen).sigmoid()
    kk = F.normalize(torch.randn(B, T, H, K, generator=gen), dim=-1)
    a = -kk
    b = kk * torch.randn(B, T, H, K, generator=gen).sigmoid()
    h0 = torch.randn(B, H, K, V, generator=gen)
    xs = [r, w, k, v, a, b, h0]
    return [x.requires_grad_() for x in xs] if requires_grad else xs


def ours(r, w, k, v, a, b, h0):
    return chunk_rwkv7(r, w, k, v, a, b, scale=1.0, initial_state=h0, output_final_state=True)


def run_fwd(fn, xs):
    with torch.no_grad():
        return fn(*[x.detach() for x in xs])


def run_fwd_bwd(fn, xs):
    for x in xs:
        x.grad = None
    o, ht = fn(*xs)
    (o.sum() + ht.sum()).backward()


def speedup_target(ref_s, bound_s, factor: float = 20.0) -> dict:
    """What "``factor`` times faster than a reference" asks of our forward and forward+backward:
    the times it allows (``ref_s / factor``) and those times as multiples of the FLOP bound. A
    multiple below 1 asks for more than the machine's matmul rate can deliver on the FLOPs of the
    chunked algorithm; just above 1 asks for all of it, with no time for anything but the products."""
    (r_fwd, r_fb), (lb_fwd, lb_all) = ref_s, bound_s
    return {"factor": factor, "fwd_s": r_fwd / factor, "fwd_bwd_s": r_fb / factor,
            "fwd_bound_multiple": r_fwd / factor / lb_fwd, "fwd_bwd_bound_multiple": r_fb / factor / lb_all}


def flop_counts(B, T, H, K, V, BT):
    """FLOPs (2 x multiply-adds) of the chunked DPLR algorithm at chunk size BT, forward and
    forward+backward. Per chunk and head:
      forward  5 BT^2 K + 3 BT^2 V + 4/3 BT^3 + 4 BT K V
               (4 intra score matrices, WY: inverse, A_ab^-1 A_ak, w, u; state: w h, kg^T v, bg^T v_new;
                output: qg h, A_qk v, A_qb v_new)
      backward 15 BT^2 K + 7 BT^2 V + 19/3 BT^3 + 11 BT K V
               (recomputed forward without the output; dAu, dhu, dv, bwd_o, bwd_wy, dqk_intra)"""
    NT = -(-T // BT)
    n = B * H * NT
    fwd = 5 * BT * BT * K + 3 * BT * BT * V + 4 * BT ** 3 / 3 + 4 * BT * K * V
    bwd = 15 * BT * BT * K + 7 * BT * BT * V + 19 * BT ** 3 / 3 + 11 * BT * K * V
    return 2 * n * fwd, 2 * n * (fwd + bwd)


def load_fla_references():
    """fla 0.4.0's naive DPLR recurrence and chunkwise form, behind the [B, T, H, ...] API."""
    from portaudit.numerics.upstream_code import load_module
    from portaudit.static.upstream import resolve_upstream
    local = os.environ.get("PORTAUDIT_FLA040")
    if local:
        root = resolve_upstream(upstream_path=local, package="fla")
    else:
        root = resolve_upstream(["fla-core==0.4.0", "flash-linear-attention==0.4.0"], package="fla")
    mod = load_module(root, "fla/ops/generalized_delta_rule/dplr/naive.py")

    def wrap(fn, **kw):
        def call(r, w, k, v, a, b, h0):
            K = r.shape[-1]
            # the naive code is head-first and scales q by K ** -0.5 itself (our scale is 1)
            hf = [x.transpose(1, 2) for x in (r * K ** 0.5, k, v, a, b, w)]
            o, S = fn(*hf, initial_state=h0, output_final_state=True, **kw)
            return o.transpose(1, 2), S
        return call
    return {"fla dplr_recurrence": wrap(mod.dplr_recurrence),
            "fla dplr_chunkwise": wrap(mod.dplr_chunkwise, chunk_size=32)}


def cuda_main(args):
    """The GPU comparison (see the module notes): prints a table and writes ``args.out``."""
    from bench_matrix import count_cuda, limit_triton_autotune
    from myfla.ops.utils import loop_graph
    dev = torch.device("cuda")
    impls = {"myfla": ours, "myfla-eager": ours}
    if args.fla_path:
        sys.path.insert(0, args.fla_path)
    try:
        limit_triton_autotune()
        from fla.ops.rwkv7 import chunk_rwkv7 as fla_chunk_rwkv7

        def fla(r, w, k, v, a, b, h0):
            return fla_chunk_rwkv7(r, w, k, v, a, b, scale=1.0, initial_state=h0, output_final_state=True)
        impls["fla"] = fla
    except Exception as err:                                    # noqa: BLE001
        print(f"fla not importable ({type(err).__name__}: {err}); timing myfla only")
    if not args.skip_refs:
        impls["fla dplr_chunkwise"] = load_fla_references()["fla dplr_chunkwise"]
    record = {"device": machine_info("cuda"), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "port_chunk_size": dplr_chunk.CHUNK_SIZE, "cells": []}
    rows = []

    def timed(fn, repeats):
        """Median of device-synchronised calls after three untimed ones (Triton compiles; myfla meets,
        records, then replays its loops)."""
        return median_time(lambda: (fn(), torch.cuda.synchronize()), repeats, warmup=3)

    for dtype_name in args.dtypes.split(","):
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
        for T in [int(t) for t in str(args.T).split(",")]:
            for K in [int(x) for x in args.K.split(",")]:
                base = make_inputs(args.B, T, args.H, K, K)
                x0 = [x.to(dev, dtype) if i < 6 else x.to(dev) for i, x in enumerate(base)]
                xs = [x.clone().requires_grad_() for x in x0]
                for name, fn in impls.items():
                    if name == "fla dplr_chunkwise" and T > args.ref_max_T:
                        continue
                    loop_graph.ENABLED = name != "myfla-eager"
                    try:
                        fwd = timed(lambda: run_fwd(fn, x0), args.repeats)
                        fwd_bwd = timed(lambda: run_fwd_bwd(fn, xs), args.repeats)
                        counts = count_cuda(lambda: run_fwd_bwd(fn, xs))
                        torch.cuda.reset_peak_memory_stats()
                        base_mem = torch.cuda.memory_allocated()
                        run_fwd_bwd(fn, xs)
                        torch.cuda.synchronize()
                        counts["peak_extra_mib"] = (torch.cuda.max_memory_allocated() - base_mem) / 2 ** 20
                    except Exception as err:                    # noqa: BLE001
                        rows.append((dtype_name, T, K, name, None, None, None, f"failed: {type(err).__name__}: {err}"))
                        continue
                    finally:
                        loop_graph.ENABLED = True
                    cell = {"dtype": dtype_name, "B": args.B, "T": T, "H": args.H, "K": K, "impl": name,
                            "fwd_s": fwd, "fwd_bwd_s": fwd_bwd, **counts}
                    record["cells"].append(cell)
                    rows.append((dtype_name, T, K, name, fwd, fwd_bwd, counts["host_launches"],
                                 f"GPU busy {counts['gpu_busy_ms']:.2f} ms, peak +{counts['peak_extra_mib']:.0f} MiB"))
                    args.out.write_text(json.dumps(record, indent=2) + "\n")
    decode_rows = cuda_decode(args, record, timed, count_cuda, loop_graph) if args.decode else []
    lines = [f"B={args.B} H={args.H} V=K, {record['device'].get('gpu', 'cuda')}, medians of {args.repeats}",
             "", "| dtype | T | K | implementation | forward | fwd+bwd | launches (fwd+bwd) | note |",
             "|---|---:|---:|---|---:|---:|---:|---|"]
    for dt, T, K, name, a, b, n, note in rows:
        ms = (lambda x: "-" if x is None else f"{x * 1e3:.2f} ms")
        lines.append(f"| {dt} | {T} | {K} | {name} | {ms(a)} | {ms(b)} | {'-' if n is None else n} | {note} |")
    if decode_rows:
        lines += ["", "One-token decode step (``fused_mul_recurrent_rwkv7``, the layer's decoding op; state in, "
                  "final state out; medians of 50 calls):", "",
                  "| dtype | B | H | K | implementation | step | launches | note |", "|---|---:|---:|---:|---|---:|---:|---|"]
        for dt, B, H, K, name, t, n, note in decode_rows:
            lines.append(f"| {dt} | {B} | {H} | {K} | {name} | {'-' if t is None else f'{t * 1e3:.3f} ms'} | "
                         f"{'-' if n is None else n} | {note} |")
    print("\n".join(lines))
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


def cuda_decode(args, record, timed, count_cuda, loop_graph):
    """One-token steps of ``fused_mul_recurrent_rwkv7`` (what RWKV7Attention calls when decoding) on
    the GPU: myfla (its step replayed as a CUDA graph), myfla with the graphs off, fla's Triton kernel."""
    from myfla.ops.rwkv7 import fused_mul_recurrent_rwkv7 as ours_step
    impls = {"myfla": ours_step, "myfla-eager": ours_step}
    try:
        from fla.ops.rwkv7 import fused_mul_recurrent_rwkv7 as fla_step
        impls["fla"] = fla_step
    except Exception as err:                                    # noqa: BLE001
        print(f"fla's fused_mul_recurrent_rwkv7 not importable ({type(err).__name__}: {err})")
    dev = torch.device("cuda")
    rows, record["decode"] = [], []
    for dtype_name in args.dtypes.split(","):
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
        for B in (1, 8):
            H, K = 16, 64
            gen = torch.Generator().manual_seed(0)
            r, w, k, v = (torch.randn(B, 1, H, K, generator=gen) for _ in range(4))
            w = -0.6065306597126334 * w.sigmoid()
            kk = F.normalize(torch.randn(B, 1, H, K, generator=gen), dim=-1)
            a = torch.rand(B, 1, H, K, generator=gen)
            xs = [x.to(dev, dtype) for x in (r, w, k, v, kk, a)]
            h0 = torch.randn(B, H, K, K, generator=gen).to(dev)
            for name, fn in impls.items():
                loop_graph.ENABLED = name != "myfla-eager"
                try:
                    def step():
                        with torch.no_grad():
                            return fn(*xs, scale=1.0, initial_state=h0, output_final_state=True)
                    t = timed(step, 50)
                    counts = count_cuda(step)
                except Exception as err:                        # noqa: BLE001
                    rows.append((dtype_name, B, H, K, name, None, None, f"failed: {type(err).__name__}: {err}"))
                    continue
                finally:
                    loop_graph.ENABLED = True
                record["decode"].append({"dtype": dtype_name, "B": B, "H": H, "K": K, "impl": name, "step_s": t,
                                         **counts})
                rows.append((dtype_name, B, H, K, name, t, counts["host_launches"],
                             f"GPU busy {counts['gpu_busy_ms']:.3f} ms"))
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--T", type=str, default="8192", help="sequence length (CUDA: comma-separated)")
    parser.add_argument("--B", type=int, default=1, help="batch (CUDA only; the CPU table is at B=1)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtypes", type=str, default="fp32", help="CUDA: fp32,bf16")
    parser.add_argument("--fla-path", type=str, default="", help="CUDA: where fla 0.4.0 is installed")
    parser.add_argument("--ref-max-T", type=int, default=8192, help="CUDA: longest T the naive reference runs at")
    parser.add_argument("--decode", action="store_true", help="CUDA: also time one-token decode steps")
    parser.add_argument("--H", type=int, default=4)
    parser.add_argument("--K", type=str, default="64,128", help="head sizes (V = K), comma-separated")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ref-T", type=int, default=0,
                        help="T at which fla's references are timed, scaled linearly to T (0: the full T)")
    parser.add_argument("--ref-repeats", type=int, default=2,
                        help="timed calls of each reference (median), after an untimed short-T call")
    parser.add_argument("--skip-refs", action="store_true")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--recompute", action="store_true",
                        help="the backward recomputes the forward (as fla) instead of reading its saved parts")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.device == "cuda":
        warnings.simplefilter("ignore")
        return cuda_main(args)
    args.T = int(args.T)
    if args.quick:
        args.T, args.repeats, args.ref_T, args.ref_repeats = 1024, 3, 256, 1
    torch.set_num_threads(args.threads)
    if args.recompute:
        dplr_chunk.SAVE_BYTES = 0
    warnings.simplefilter("ignore")          # fla's fp32 RuntimeWarning of chunk_dplr_delta_rule
    B, H, T = 1, args.H, args.T
    record = {"B": B, "T": T, "H": H, "dtype": "float32", "threads": args.threads, "torch": torch.__version__,
              "machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
              "machine_info": machine_info("cpu"),
              "port_chunk_size": dplr_chunk.CHUNK_SIZE, "fla_chunk_size": FLA_BT,
              "backward": "recompute" if args.recompute else "saved forward parts",
              "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "shapes": []}
    refs = {} if args.skip_refs else load_fla_references()
    rows = []
    for K in [int(x) for x in args.K.split(",")]:
        V = K
        entry = {"K": K, "V": V}
        # the matmul rates before and after our timings, the higher of each kept: a machine whose
        # speed drifts (this project's VM) cannot lower the bound by a slow moment after our runs
        rates_before = matmul_rates(dplr_chunk.CHUNK_SIZE, K, V, args.repeats)
        x0 = make_inputs(B, T, H, K, V)
        fwd = median_time(lambda: run_fwd(ours, x0), args.repeats)
        xs = make_inputs(B, T, H, K, V, requires_grad=True)
        fwd_bwd = median_time(lambda: run_fwd_bwd(ours, xs), args.repeats)
        entry["chunk_rwkv7"] = {"fwd_s": fwd, "fwd_bwd_s": fwd_bwd}
        rows.append((f"myfla chunk_rwkv7 K={K}", T, fwd, fwd_bwd, ""))

        rates_after = matmul_rates(dplr_chunk.CHUNK_SIZE, K, V, args.repeats)
        rate_chunked, rate_gemm = (max(pair) for pair in zip(rates_before, rates_after))
        rate = max(rate_chunked, rate_gemm)
        f_fwd, f_all = flop_counts(B, T, H, K, V, FLA_BT)
        p_fwd, p_all = flop_counts(B, T, H, K, V, dplr_chunk.CHUNK_SIZE)
        lb_fwd, lb_all = f_fwd / rate, f_all / rate
        entry["flop_lower_bound"] = {
            "matmul_flops_per_s": rate, "chunk_shaped_bmm_flops_per_s": rate_chunked,
            "square_gemm_flops_per_s": rate_gemm, "rates_before_after": [rates_before, rates_after],
            "fwd_flops": f_fwd, "fwd_bwd_flops": f_all,
            "port_chunk_fwd_flops": p_fwd, "port_chunk_fwd_bwd_flops": p_all,
            "fwd_s": lb_fwd, "fwd_bwd_s": lb_all, "ratio_fwd": fwd / lb_fwd, "ratio_fwd_bwd": fwd_bwd / lb_all,
            "within_5x": fwd / lb_fwd <= 5 and fwd_bwd / lb_all <= 5}
        rows.append((f"FLOP lower bound K={K}", T, lb_fwd, lb_all,
                     f"{rate / 1e9:.0f} GFLOP/s; ours/bound: fwd {fwd / lb_fwd:.1f}x, fwd+bwd {fwd_bwd / lb_all:.1f}x"))
        after = matmul_rate_after_other_work(dplr_chunk.CHUNK_SIZE, K, args.repeats)
        entry["slab_product_flops_per_s"] = after
        n = 2 * dplr_chunk.CHUNK_SIZE
        print(f"K={K}: a slab's score product ([{n}, {K}] @ [{K}, {n}] x 64) "
              + ", ".join(f"{key.replace('_', ' ')} {value / 1e9:.0f}" for key, value in after.items()) + " GFLOP/s")

        for name, fn in refs.items():
            Tr = min(args.ref_T, T) if args.ref_T > 0 else T
            run_fwd_bwd(fn, make_inputs(B, min(T, 64), H, K, V, requires_grad=True))    # one-off set-up
            xr0 = make_inputs(B, Tr, H, K, V)
            r_fwd = median_time(lambda: run_fwd(fn, xr0), args.ref_repeats, warmup=0) * T / Tr
            xr = make_inputs(B, Tr, H, K, V, requires_grad=True)
            r_fb = median_time(lambda: run_fwd_bwd(fn, xr), args.ref_repeats, warmup=0) * T / Tr
            need = speedup_target((r_fwd, r_fb), (lb_fwd, lb_all))
            entry[name] = {"measured_T": Tr, "repeats": args.ref_repeats,
                           "fwd_s": r_fwd, "fwd_bwd_s": r_fb, "scaled_from_T": Tr if Tr != T else None,
                           "speedup_fwd": r_fwd / fwd, "speedup_fwd_bwd": r_fb / fwd_bwd,
                           "at_least_20x": r_fwd / fwd >= 20 and r_fb / fwd_bwd >= 20, "20x_needs": need}
            where = f"measured at T={Tr}, scaled x{T / Tr:g}" if Tr != T else f"median of {args.ref_repeats}"
            rows.append((f"{name} K={K}", T, r_fwd, r_fb,
                         f"{where}; ours is {r_fwd / fwd:.0f}x / {r_fb / fwd_bwd:.0f}x faster; 20x needs "
                         f"{need['fwd_s'] * 1e3:.1f} / {need['fwd_bwd_s'] * 1e3:.1f} ms, "
                         f"{need['fwd_bound_multiple']:.2f}x / {need['fwd_bwd_bound_multiple']:.2f}x the bound"))
        record["shapes"].append(entry)

    header = (f"B={B} T={T} H={H} V=K fp32, {args.threads} threads, medians of {args.repeats}; "
              f"port chunk size {dplr_chunk.CHUNK_SIZE}, bound at fla's {FLA_BT}; backward "
              f"{'recomputes the forward' if args.recompute else 'reads the saved forward parts'}")
    lines = [header, "", "| implementation | T | forward | fwd+bwd | note |", "|---|---:|---:|---:|---|"]
    for name, t, a, b, note in rows:
        lines.append(f"| {name} | {t} | {a * 1e3:.1f} ms | {b * 1e3:.1f} ms | {note} |")
    print("\n".join(lines))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
