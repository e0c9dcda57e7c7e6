"""Speed matrix of the chunked GDN and KDA ops: device x threads x shape x dtype x implementation,
with the FLOP bound measured in the same run. Prints a compact table last and writes JSON to
benchmarks/results/ (after every cell, so an interrupted run keeps what it measured).

Implementations (each where it can run):
- ``myfla``: ``myfla.ops.gated_delta_rule.chunk_gated_delta_rule`` / ``myfla.ops.kda.chunk_kda``;
- ``transformers``: the torch fallbacks of the installed transformers, Qwen3-Next's
  ``torch_chunk_gated_delta_rule`` and Kimi Linear's ``chunk_kimi_delta_attention`` (imported before
  fla is put on the path, so they are the fallbacks and not fla bound through transformers);
- ``naive``: fla's pure-torch chunked references, loaded by file path (fla 0.6.0's
  ``naive_chunk_gated_delta_rule``, fla 0.4.0's ``naive_chunk_kda``);
- ``fla``: fla's Triton kernels (CUDA only; ``--fla-path`` names where fla is installed, and its
  autotuning is trimmed to two configs per kernel as /work/shared/GPU.md advises).

For each cell: median wall time of the forward (no grad) and of forward+backward (``(o, ht)``
backpropagated with random cotangents), the FLOP bound (the chunked algorithm's matmul FLOPs over the
rate of a large matmul measured at the same device, threads and dtype; for bf16 on CPU the faster of
the bf16 and fp32 rates), their ratio, and the work a forward+backward dispatches: on CPU the aten
operators (views and allocations left out), on CUDA the kernels the GPU ran, the kernel and graph
launches the host issued, and the GPU's busy time (torch profiler). ``--check`` adds errors against
fp64: fla's naive recurrences (loaded by file path, their own code run in fp64) on a smaller shape.

    python benchmarks/bench_matrix.py --device cpu --threads 1,2 --shapes small --dtypes fp32
    python benchmarks/bench_matrix.py --device cuda --shapes small,train --dtypes fp32,bf16 \\
        --impls myfla,transformers,fla --fla-path /tmp/fla --check
    python benchmarks/bench_matrix.py --quick            # small shapes, for a smoke run

Shapes: ``small`` (B=1 T=8192 H=4 K=V=128), ``train`` (B=4 T=4096 H=16 K=V=128), or ``BxTxHxK[xV]``.
Each cell stops at ``--max-cell-seconds`` (timed out cells say so); CUDA out-of-memory is recorded.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import signal
import statistics
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
# benchmarks/ is the script directory (or on the path of the tests that import this script)
from timing import machine_info  # noqa: E402

BT = 64
SHAPES = {"small": (1, 8192, 4, 128, 128), "train": (4, 4096, 16, 128, 128)}
QUICK_SHAPES = {"small": (1, 1024, 4, 128, 128), "train": (2, 512, 4, 64, 64)}
CHECK_SHAPE, QUICK_CHECK_SHAPE = (2, 512, 4, 128, 128), (1, 256, 2, 64, 64)   # naive_chunk_kda needs T % 64 == 0
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FLA_060 = ["fla-core==0.6.0", "flash-linear-attention==0.6.0"]
FLA_040 = ["fla-core==0.4.0", "flash-linear-attention==0.4.0"]


class CellTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise CellTimeout in the main thread after ``seconds`` (checked between Python bytecodes, so
    a loop of torch ops stops within one op)."""
    if not seconds or not hasattr(signal, "setitimer"):
        yield
        return

    def handler(signum, frame):
        raise CellTimeout(f"over {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ---- implementations -----------------------------------------------------------------------------
def load_file(path: Path, name: str) -> types.ModuleType:
    """Execute one upstream reference file as an anonymous module (never importing the package)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Fp64Torch(types.ModuleType):
    """``torch`` whose ``float``/``float32`` are float64: fla's references cast their inputs with
    ``.float()``/``.to(torch.float32)``; rebinding their module's ``torch`` runs their own code in fp64."""
    float = torch.float64
    float32 = torch.float64

    def __getattr__(self, name):
        return getattr(torch, name)


def upstream_root(explicit, requirement):
    """The fla tree holding the naive references: ``explicit``, else fetched by portaudit."""
    if explicit:
        return Path(explicit)
    from portaudit.static.upstream import resolve_upstream
    return Path(resolve_upstream(requirement, package="fla"))


def load_naive(args):
    """fla's chunked references and fp64 recurrent oracles: {op: (chunk_fn, recurrent_fn_fp64)}."""
    out = {}
    try:
        gdn = load_file(upstream_root(args.naive_root_060, FLA_060) / "fla/ops/gated_delta_rule/naive.py",
                        "_bench_naive_gdn")
        gdn64 = load_file(upstream_root(args.naive_root_060, FLA_060) / "fla/ops/gated_delta_rule/naive.py",
                          "_bench_naive_gdn64")
        gdn64.torch = _Fp64Torch("torch")

        def gdn_chunk(q, k, v, g, beta, h0):
            return gdn.naive_chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=BT, initial_state=h0,
                                                    output_final_state=True)

        def gdn_rec(q, k, v, g, beta, h0):
            return gdn64.naive_recurrent_gated_delta_rule(q, k, v, beta, g, initial_state=h0, output_final_state=True)
        out["gdn"] = (gdn_chunk, gdn_rec)
    except Exception as err:                                  # noqa: BLE001 - reported in the record
        out["gdn"] = (f"not loaded: {type(err).__name__}: {err}", None)
    try:
        root = upstream_root(args.naive_root_040, FLA_040)
        kda = load_file(root / "fla/ops/kda/naive.py", "_bench_naive_kda")
        kda64 = load_file(root / "fla/ops/kda/naive.py", "_bench_naive_kda64")
        kda64.torch = _Fp64Torch("torch")

        def kda_chunk(q, k, v, g, beta, h0):
            return kda.naive_chunk_kda(q, k, v, g, beta, initial_state=h0, output_final_state=True, chunk_size=BT)

        def kda_rec(q, k, v, g, beta, h0):
            return kda64.naive_recurrent_kda(q, k, v, g, beta, initial_state=h0, output_final_state=True)
        out["kda"] = (kda_chunk, kda_rec)
    except Exception as err:                                  # noqa: BLE001
        out["kda"] = (f"not loaded: {type(err).__name__}: {err}", None)
    return out


def bound_to(fn):
    """The module of the implementation a transformers hub-kernel wrapper dispatches to."""
    for cell in getattr(fn, "__closure__", None) or ():
        target = cell.cell_contents
        if callable(target) and getattr(target, "__module__", "") and target is not fn:
            mod = target.__module__
            if mod.startswith("fla") or mod.startswith("kernels"):
                return mod
    return getattr(fn, "__module__", "?")


def load_transformers():
    """transformers' torch fallbacks {op: fn or reason}; call before fla is importable."""
    out = {}
    try:
        from transformers.models.qwen3_next import modeling_qwen3_next as m
        out["gdn"] = m.torch_chunk_gated_delta_rule
    except Exception as err:                                  # noqa: BLE001
        out["gdn"] = f"not importable: {type(err).__name__}: {err}"
    try:
        from transformers.models.kimi_linear import modeling_kimi_linear as m
        fn = getattr(m, "torch_chunk_kda", None) or getattr(m, "chunk_kimi_delta_attention", None)
        out["kda"] = fn if fn is not None else "no torch chunk KDA function in this transformers"
    except Exception as err:                                  # noqa: BLE001
        out["kda"] = f"not importable: {type(err).__name__}: {err}"
    for op, fn in out.items():
        if callable(fn) and bound_to(fn).startswith(("fla", "kernels")):
            out[op] = f"bound to {bound_to(fn)}, not the torch fallback"
    return out


def limit_triton_autotune(keep: int = 2) -> bool:
    """Keep the ``keep`` autotune configs with the fewest pipeline stages (GPU.md: the full search
    takes minutes per op family; one config can overflow shared memory). Call before importing fla."""
    try:
        import triton
    except ImportError:
        return False
    original = triton.autotune

    def autotune(configs, *a, **kw):
        return original(sorted(configs, key=lambda c: getattr(c, "num_stages", 0) or 0)[:keep], *a, **kw)

    triton.autotune = autotune
    return True


def load_fla(path):
    if path and path not in sys.path:
        sys.path.insert(0, path)
    try:
        limit_triton_autotune()
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule as fla_gdn
        from fla.ops.kda import chunk_kda as fla_kda
    except Exception as err:                                  # noqa: BLE001
        reason = f"not importable: {type(err).__name__}: {err}"
        return {"gdn": reason, "kda": reason}
    return {"gdn": fla_gdn, "kda": fla_kda}


def implementations(args):
    impls = {}
    wanted = args.impls.split(",")
    if "transformers" in wanted:
        impls["transformers"] = load_transformers()          # before fla is on the path
    if "myfla" in wanted or "myfla-eager" in wanted:
        from myfla.ops.gated_delta_rule import chunk_gated_delta_rule
        from myfla.ops.kda import chunk_kda
        for name in ("myfla", "myfla-eager"):
            if name in wanted:
                impls[name] = {"gdn": chunk_gated_delta_rule, "kda": chunk_kda}
    naive = load_naive(args) if ("naive" in wanted or args.check) else {}
    if "naive" in wanted:
        impls["naive"] = {op: fns[0] for op, fns in naive.items()}
    if "fla" in wanted:
        impls["fla"] = (load_fla(args.fla_path) if args.device == "cuda"
                        else {"gdn": "CUDA only", "kda": "CUDA only"})
    return impls, {op: fns[1] for op, fns in naive.items()}


def call(impl, op, fn, xs):
    """``(o, final_state)`` of one implementation on ``xs = (q, k, v, g, beta, h0)``."""
    q, k, v, g, beta, h0 = xs
    if impl == "naive":
        return fn(q, k, v, g, beta, h0)
    if impl == "myfla-eager":
        impl = "myfla"
    if impl == "transformers":
        return fn(q, k, v, g=g, beta=beta, initial_state=h0, output_final_state=True)
    return fn(q, k, v, g, beta, initial_state=h0, output_final_state=True)


# ---- inputs, passes, counts ------------------------------------------------------------------------
def make_inputs(op, shape, dtype, device, seed=0):
    """fla's test recipe: q randn, k L2-normalised, v randn, g = logsigmoid (per head for GDN, per key
    channel for KDA), beta sigmoid, h0 randn; q/k/v/beta in ``dtype``, g and h0 fp32 (fp64 stays)."""
    B, T, H, K, V = shape
    gen = torch.Generator().manual_seed(seed)
    wide = torch.float64 if dtype == torch.float64 else torch.float32
    q = torch.randn(B, T, H, K, generator=gen)
    k = F.normalize(torch.randn(B, T, H, K, generator=gen), p=2, dim=-1)
    v = torch.randn(B, T, H, V, generator=gen)
    g = F.logsigmoid(torch.randn(B, T, H, *((K,) if op == "kda" else ()), generator=gen))
    beta = torch.rand(B, T, H, generator=gen).sigmoid()
    h0 = torch.randn(B, H, K, V, generator=gen)
    xs = [q.to(dtype), k.to(dtype), v.to(dtype), g.to(wide), beta.to(dtype), h0.to(wide)]
    return [x.to(device).requires_grad_() for x in xs]


def cotangents(o, ht, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(o.shape, generator=gen).to(o), torch.randn(ht.shape, generator=gen).to(ht))


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def run_fwd(impl, op, fn, xs):
    with torch.no_grad():
        return call(impl, op, fn, xs)


def run_fwd_bwd(impl, op, fn, xs, cot=None):
    for x in xs:
        x.grad = None
    o, ht = call(impl, op, fn, xs)
    do, dht = cot if cot is not None else cotangents(o, ht)
    torch.autograd.backward([o, ht], [do, dht])
    return o, ht


def median_time(fn, device, repeats, budget):
    """Median wall time (device synchronised) of ``repeats`` runs after warm-up (two on CUDA: the
    first compiles Triton kernels or records CUDA graphs); fewer repeats when the last warm-up says
    they would not fit in ``budget`` seconds. Returns (median, runs, first warm-up time)."""
    first = None
    for _ in range(2 if device == "cuda" else 1):
        t0 = time.perf_counter()
        fn()
        sync(device)
        last = time.perf_counter() - t0
        first = last if first is None else first
    repeats = max(1, min(repeats, int(budget / max(last, 1e-6)) - 1))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), len(times), first


# operators that launch no kernel: shape/dtype queries and views whose schema does not say so
METADATA_OPS = {"aten::_unsafe_view", "aten::promote_types", "aten::result_type", "aten::sym_size",
                "aten::sym_stride", "aten::sym_numel", "aten::is_nonzero", "aten::_local_scalar_dense"}


def count_cpu_ops(fn):
    """aten operators a call dispatches (views, aliases and allocations left out), as a proxy for
    kernel launches; also the number of distinct operator names."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counter(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.n, self.names = 0, {}

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            schema = func._schema
            returns = schema.returns
            aliasing = bool(returns) and returns[0].alias_info is not None and not returns[0].alias_info.is_write
            name = schema.name
            if not (aliasing or name.startswith(("aten::empty", "aten::new_empty", "aten::lift"))
                    or name in METADATA_OPS):
                self.n += 1
                self.names[name] = self.names.get(name, 0) + 1
            return func(*args, **(kwargs or {}))

    counter = Counter()
    with counter:
        fn()
    top = sorted(counter.names.items(), key=lambda kv: -kv[1])[:8]
    return {"aten_ops": counter.n, "top_ops": top}


def count_cuda(fn):
    """Kernels the GPU ran, launches the host issued (kernel, graph, memcpy/memset API calls) and the
    GPU busy time of one call, from the torch profiler; with the five kernels that took longest."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    kernels, launches, graph_launches, busy, by_name = 0, 0, 0, 0.0, {}
    for e in prof.events():
        dev = getattr(e, "device_type", None)
        if dev is not None and str(dev).endswith("CUDA"):
            kernels += 1
            t = float(getattr(e, "device_time", None) or getattr(e, "cuda_time", 0.0) or 0.0)
            busy += t
            by_name[e.name] = by_name.get(e.name, 0.0) + t
        elif e.name in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx",
                        "cudaMemcpyAsync", "cudaMemsetAsync"):
            launches += 1
        elif e.name in ("cudaGraphLaunch", "cuGraphLaunch"):
            graph_launches += 1
    top = sorted(by_name.items(), key=lambda kv: -kv[1])[:5]
    return {"gpu_kernels": kernels, "host_launches": launches + graph_launches, "graph_launches": graph_launches,
            "gpu_busy_ms": round(busy / 1e3, 3), "top_kernels_ms": [(n[:80], round(t / 1e3, 3)) for n, t in top]}


# ---- FLOP bound --------------------------------------------------------------------------------------
def flop_counts(op, B, T, H, K, V):
    """FLOPs (2 per multiply-add) of the chunked algorithm's matmuls, forward and forward+backward,
    counted from the call graph per chunk and head (benchmarks/bench_gdn.py, bench_kda.py)."""
    n = B * H * (-(-T // BT))
    mm = (lambda m, k_, n_: 2 * m * k_ * n_)
    if op == "gdn":
        fwd = (mm(BT, K, BT) + BT ** 3 // 3 + mm(BT, BT, K) + mm(BT, BT, V) + mm(BT, K, V) * 2
               + mm(BT, K, V) + mm(BT, K, BT) + mm(BT, BT, V))
        bwd = (mm(BT, BT, K) + mm(BT, BT, V) + mm(BT, K, V) * 2 + mm(BT, K, BT) + mm(BT, BT, V)
               + mm(BT, K, V) * 3 + mm(BT, V, BT) + mm(BT, V, K) * 3 + mm(BT, K, BT) + mm(BT, BT, K) * 2
               + mm(BT, K, BT) + mm(BT, V, BT) + mm(BT, BT, K) + mm(BT, BT, V)
               + mm(BT, BT, BT) * 2 + mm(BT, BT, K) * 2 + mm(BT, K, BT))
        return n * fwd, n * (fwd + bwd)
    fwd = BT * BT * (3 * K + 2 * V) + 3 * BT * K * V
    bwd = ((BT * BT * (2 * K + V) + 2 * BT * K * V) + BT * BT * V + 3 * BT * K * V + BT * BT * V
           + 3 * BT * K * V + (2 * BT * BT * K + 2 * BT * BT * V + 2 * BT ** 3) + 4 * BT * BT * K)
    return 2 * n * fwd, 2 * n * (fwd + bwd)


def matmul_rates(device, dtypes):
    """``{dtype name: FLOP/s}`` of ``matmul_rate`` per dtype; on CPU a low-precision rate is at least
    fp32's (the CPU path multiplies bf16/fp16 values in fp32)."""
    rates = {}
    for dname in dtypes:
        rate = matmul_rate(device, DTYPES[dname])
        if device == "cpu" and dname != "fp32":
            rate = max(rate, rates.get("fp32") or matmul_rate(device, torch.float32))
        rates[dname] = rate
    return rates


def rebound(row, rate, f_fwd, f_fb):
    """Set ``row``'s FLOP bounds (and its ratio) for the matmul ``rate`` (FLOP/s)."""
    row["bound_fwd_ms"] = round(f_fwd / rate * 1e3, 3)
    row["bound_fwd_bwd_ms"] = round(f_fb / rate * 1e3, 3)
    if "fwd_bwd_ms" in row:
        row["ratio_fwd_bwd_to_bound"] = round(row["fwd_bwd_ms"] / row["bound_fwd_bwd_ms"], 2)


def matmul_rate(device, dtype, repeats=5):
    """FLOP/s of a large square matmul in ``dtype`` (CPU 2048, CUDA 8192; random data)."""
    n = 8192 if device == "cuda" else 2048
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    t, _, _ = median_time(lambda: torch.mm(a, b), device, repeats, budget=60)
    return 2 * n ** 3 / t


# ---- errors against fp64 -------------------------------------------------------------------------
def err_ratio(ref, x):
    """fla's ``get_err_ratio``: rms(x - ref) / rms(ref)."""
    ref, x = ref.detach().double(), x.detach().double()
    return ((x - ref).square().mean().sqrt() / (ref.square().mean().sqrt() + 1e-8)).item()


def check_errors(args, impls, oracles, device, record, out_path):
    """rms error ratios of every implementation against fla's naive recurrence run in fp64 on the
    same (rounded) inputs and cotangents."""
    shape = QUICK_CHECK_SHAPE if args.quick else CHECK_SHAPE
    names = ["o", "ht", "dq", "dk", "dv", "dg", "dbeta", "dh0"]
    for op in args.ops.split(","):
        oracle = oracles.get(op)
        if oracle is None:
            record["check"].append({"op": op, "error": "no fp64 oracle loaded"})
            continue
        for dname in args.dtypes.split(","):
            dtype = DTYPES[dname]
            ref_in = [x.detach().double().requires_grad_() for x in make_inputs(op, shape, dtype, device)]
            o, ht = oracle(*ref_in)
            do, dht = cotangents(o, ht)
            do, dht = do.to(dtype).double(), dht.float().double()
            torch.autograd.backward([o, ht], [do, dht])
            ref = [o, ht] + [x.grad for x in ref_in]
            for impl, fns in impls.items():
                fn = fns.get(op)
                if not callable(fn):
                    continue
                row = {"op": op, "impl": impl, "dtype": dname, "shape": shape, "device": device}
                try:
                    with time_limit(args.max_cell_seconds):
                        xs = make_inputs(op, shape, dtype, device)
                        o, ht = call(impl, op, fn, xs)
                        torch.autograd.backward([o, ht], [do.to(o.dtype), dht.to(ht.dtype)])
                        got = [o, ht] + [x.grad for x in xs]
                except Exception as err:                      # noqa: BLE001
                    row["error"] = f"{type(err).__name__}: {str(err)[:200]}"
                    record["check"].append(row)
                    continue
                row["rms_ratio"] = {n: (round(err_ratio(r, g), 7) if g is not None else None)
                                    for n, r, g in zip(names, ref, got)}
                record["check"].append(row)
                write(record, out_path)
                print(f"check {op} {dname:<4} {impl:<12} " + " ".join(
                    f"{n}={v:.1e}" for n, v in row["rms_ratio"].items() if v is not None), flush=True)


# ---- the matrix ----------------------------------------------------------------------------------
def parse_shape(name, quick):
    if name in SHAPES:
        return name, (QUICK_SHAPES if quick else SHAPES)[name]
    dims = [int(x) for x in name.split("x")]
    if len(dims) == 4:
        dims.append(dims[3])
    return "x".join(map(str, dims)), tuple(dims)


def write(record, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")


@contextlib.contextmanager
def impl_context(impl):
    """``myfla-eager``: myfla with its CUDA graphs off (the state loops launch per chunk)."""
    if impl != "myfla-eager":
        yield
        return
    from myfla.ops.utils import loop_graph
    enabled = loop_graph.ENABLED
    loop_graph.ENABLED = False
    try:
        yield
    finally:
        loop_graph.ENABLED = enabled


def measure_cell(args, impl, op, fn, shape, dtype, device):
    with impl_context(impl):
        cell = _measure_cell(args, impl, op, fn, shape, dtype, device)
    if impl.startswith("myfla"):
        from myfla.ops.utils import loop_graph
        cell["loop_graph_stats"] = dict(loop_graph.stats)
    return cell


def _measure_cell(args, impl, op, fn, shape, dtype, device):
    cell = {}
    xs = make_inputs(op, shape, dtype, device)
    budget = args.max_cell_seconds
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t_fwd, n_fwd, _ = median_time(lambda: run_fwd(impl, op, fn, xs), device, args.repeats, budget / 3)
    cell["fwd_ms"], cell["fwd_runs"] = round(t_fwd * 1e3, 3), n_fwd
    o, ht = run_fwd(impl, op, fn, xs)
    cot = cotangents(o, ht)
    del o, ht
    t_fb, n_fb, first = median_time(lambda: run_fwd_bwd(impl, op, fn, xs, cot), device, args.repeats, budget / 2)
    cell["fwd_bwd_ms"], cell["fwd_bwd_runs"], cell["first_fwd_bwd_ms"] = round(t_fb * 1e3, 3), n_fb, round(first * 1e3, 1)
    if device == "cuda":
        cell["peak_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
        cell.update(count_cuda(lambda: run_fwd_bwd(impl, op, fn, xs, cot)))
    elif not args.no_counts:
        cell.update(count_cpu_ops(lambda: run_fwd_bwd(impl, op, fn, xs, cot)))
    return cell


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", default="1,2", help="CPU thread counts, e.g. 1,2,4,8,16 (ignored on cuda)")
    ap.add_argument("--shapes", default="small,train", help="small, train or BxTxHxK[xV]; comma-separated")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--impls", default="myfla,transformers,naive,fla",
                    help="myfla, myfla-eager (CUDA graphs off), transformers, naive, fla")
    ap.add_argument("--ops", default="gdn,kda")
    ap.add_argument("--quick", action="store_true", help="small shapes and 2 repeats (smoke run)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per cell (default 5, quick 2)")
    ap.add_argument("--max-cell-seconds", type=float, default=120.0)
    ap.add_argument("--check", action="store_true", help="also measure errors against fp64 oracles")
    ap.add_argument("--no-counts", action="store_true", help="skip operator / kernel counting")
    ap.add_argument("--fla-path", default=None, help="directory holding an installed fla (CUDA)")
    ap.add_argument("--naive-root-040", default=os.environ.get("PORTAUDIT_FLA040"),
                    help="fla 0.4.0 tree for naive_chunk_kda (default: fetched by portaudit)")
    ap.add_argument("--naive-root-060", default=os.environ.get("PORTAUDIT_FLA060"),
                    help="fla 0.6.0 tree for naive_chunk_gated_delta_rule (default: fetched by portaudit)")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/bench_matrix_<device>.json)")
    args = ap.parse_args(argv)
    if args.repeats is None:
        args.repeats = 2 if args.quick else 5
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device")
    suffix = "_quick" if args.quick else ""
    out_path = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"bench_matrix_{device}{suffix}.json"

    impls, oracles = implementations(args)
    record = {"benchmark": "bench_matrix", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "device": device, "machine": machine_info(device), "args": vars(args),
              "implementations": {impl: {op: (fn if isinstance(fn, str) else f"{fn.__module__}.{fn.__name__}")
                                         for op, fn in fns.items()} for impl, fns in impls.items()},
              "matmul_gflops": {}, "cells": [], "check": []}
    threads = [int(t) for t in args.threads.split(",")] if device == "cpu" else [None]
    shapes = [parse_shape(s, args.quick) for s in args.shapes.split(",")]
    dtypes = args.dtypes.split(",")

    if args.check:
        check_errors(args, impls, oracles, device, record, out_path)

    for nthreads in threads:
        if nthreads is not None:
            torch.set_num_threads(nthreads)
        where = f"cpu x{nthreads}" if nthreads is not None else "cuda"
        rates = matmul_rates(device, dtypes)
        record["matmul_gflops"][where] = {d: round(r / 1e9, 1) for d, r in rates.items()}
        first_row = len(record["cells"])
        for sname, shape in shapes:
            for dname in dtypes:
                for op in args.ops.split(","):
                    f_fwd, f_fb = flop_counts(op, *shape)
                    for impl, fns in impls.items():
                        fn = fns.get(op)
                        row = {"where": where, "threads": nthreads, "op": op, "shape": sname, "dims": shape,
                               "dtype": dname, "impl": impl}
                        if not callable(fn):
                            row["skipped"] = fn
                        else:
                            try:
                                with time_limit(args.max_cell_seconds):
                                    row.update(measure_cell(args, impl, op, fn, shape, DTYPES[dname], device))
                            except CellTimeout as err:
                                row["skipped"] = f"timeout ({err})"
                            except torch.cuda.OutOfMemoryError:
                                row["skipped"] = "CUDA out of memory"
                            except Exception as err:                      # noqa: BLE001
                                row["skipped"] = f"{type(err).__name__}: {str(err)[:300]}"
                            if device == "cuda":
                                with contextlib.suppress(Exception):
                                    torch.cuda.synchronize()
                                torch.cuda.empty_cache()
                        rebound(row, rates[dname], f_fwd, f_fb)
                        record["cells"].append(row)
                        write(record, out_path)
                        print(format_row(row), flush=True)
        # the rates again after the cells: a machine that drifted into a slow phase while the rate was
        # measured would otherwise loosen the bound; the higher of the two is kept (the stricter bound)
        after = matmul_rates(device, dtypes)
        record.setdefault("matmul_gflops_before_after", {})[where] = {
            d: [round(rates[d] / 1e9, 1), round(after[d] / 1e9, 1)] for d in dtypes}
        if any(after[d] > rates[d] for d in dtypes):
            rates = {d: max(rates[d], after[d]) for d in dtypes}
            record["matmul_gflops"][where] = {d: round(r / 1e9, 1) for d, r in rates.items()}
            for row in record["cells"][first_row:]:
                rebound(row, rates[row["dtype"]], *flop_counts(row["op"], *row["dims"]))
        write(record, out_path)

    print(f"\nwrote {out_path}")
    print_table(record)
    return 0


def format_row(r):
    if "skipped" in r:
        return f"{r['where']:<8} {r['op']:<3} {r['shape']:<6} {r['dtype']:<4} {r['impl']:<12} skipped: {r['skipped']}"
    count = (f"{r['host_launches']} launches/{r['gpu_kernels']} kernels, gpu {r['gpu_busy_ms']} ms"
             if "gpu_kernels" in r else f"{r.get('aten_ops', '-')} ops")
    return (f"{r['where']:<8} {r['op']:<3} {r['shape']:<6} {r['dtype']:<4} {r['impl']:<12} "
            f"fwd {r['fwd_ms']:9.2f}  fwd+bwd {r['fwd_bwd_ms']:9.2f} ms  bound {r['bound_fwd_bwd_ms']:8.2f}  "
            f"x{r['ratio_fwd_bwd_to_bound']:<6}  {count}")


def print_table(record):
    """Compact table: one line per cell (times in ms; ratio = fwd+bwd over its FLOP bound)."""
    print(f"\n{record['device']}  {record['machine'].get('gpu') or record['machine'].get('cpu')}  "
          f"torch {record['machine']['torch']}  {record['time']}")
    print("matmul GFLOP/s: " + "; ".join(f"{w}: " + ", ".join(f"{d} {r}" for d, r in v.items())
                                         for w, v in record["matmul_gflops"].items()))
    head = f"{'where':<8} {'op':<3} {'shape':<6} {'dtype':<4} {'impl':<12} {'fwd':>9} {'fwd+bwd':>9} {'bound':>8} {'ratio':>6}  work"
    print(head)
    print("-" * len(head))
    for r in record["cells"]:
        if "skipped" in r:
            print(f"{r['where']:<8} {r['op']:<3} {r['shape']:<6} {r['dtype']:<4} {r['impl']:<12} "
                  f"{'-':>9} {'-':>9} {r['bound_fwd_bwd_ms']:8.2f} {'-':>6}  {r['skipped'][:60]}")
            continue
        work = (f"{r['host_launches']} launches, {r['gpu_kernels']} kernels, gpu {r['gpu_busy_ms']} ms"
                if "gpu_kernels" in r else f"{r.get('aten_ops', '-')} ops")
        print(f"{r['where']:<8} {r['op']:<3} {r['shape']:<6} {r['dtype']:<4} {r['impl']:<12} {r['fwd_ms']:9.2f} "
              f"{r['fwd_bwd_ms']:9.2f} {r['bound_fwd_bwd_ms']:8.2f} {r['ratio_fwd_bwd_to_bound']:6.2f}  {work}")
    if record["check"]:
        print("\nerrors against fp64 (fla's rms ratio)")
        for c in record["check"]:
            if "rms_ratio" in c:
                print(f"{c['op']:<3} {c['dtype']:<4} {c['impl']:<12} " + " ".join(
                    f"{n}={v:.1e}" for n, v in c["rms_ratio"].items() if v is not None))
            else:
                print(f"{c['op']:<3} {c.get('dtype', ''):<4} {c.get('impl', ''):<12} {c.get('error')}")


if __name__ == "__main__":
    sys.exit(main())
