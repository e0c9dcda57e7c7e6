"""One-token decoding with myfla: the recurrent ops against transformers' torch fallbacks and the
memory bound of the state, the GatedDeltaNet / KimiDeltaAttention layers through a Cache, and the
intra-op thread policy (``myfla/ops/utils/threads.py``), at several thread counts with and without
an artificial load, side by side in one run. Prints a table and writes
benchmarks/results/bench_decode.json (rewritten after every section, so a run cut short keeps what it
measured; ``--time-limit`` skips the rows not yet started).

Sections (``--sections``):
- ``op``: one decoding step (T = 1, with an initial state and the final state returned) of
  ``fused_recurrent_gated_delta_rule`` (scalar gate; Qwen3-Next's 16 key / 32 value heads among the
  shapes) and ``fused_recurrent_kda``, next to transformers' ``torch_recurrent_gated_delta_rule`` /
  ``recurrent_kimi_delta_attention`` (their plain per-token loops, unwrapped from the hub-kernel
  decorator so that an installed fla is not picked up), with the policy off (``myfla/all-threads``)
  where more than one thread is set, and the whole step on one thread (``myfla/1-thread``; the
  policy runs small steps on one thread or on all, as measured), the step without its CUDA graph
  (``myfla/eager``) on CUDA,
  and fla's Triton ``fused_recurrent_*`` on CUDA where real fla
  imports (an implementation that fails is left out of its row, with a note). The bound, from the
  same run: ``copy`` (read the state and write it once into a kept buffer: the least a step that
  returns a new final state must move), at the set thread count and on one thread, whichever is
  faster; ``read`` (one reduction over the state) is shown too, and ``torch-floor``: the three state
  passes (a ``bmm`` read, the decay into a new buffer, the rank-1 update in place) that any step made
  of torch ops must make, run as bare ops (``torch_floor``), so ``myfla/torch-floor`` says how close
  the step is to what torch ops allow and ``torch-floor/bound`` how far that is from the copy.
- ``layer``: per-token latency of one layer (hidden 1024; GatedDeltaNet and KimiDeltaAttention with 8
  heads of 128, RWKV7Attention with 16 of 64) after a 128-token prefill, policy on (the layers apply
  it to decoding calls) and off.
- ``chain``: the ``op`` shapes decoded as a chain, each step's final state the next step's initial
  state and the previous state dropped (what a Cache does): myfla as shipped against the same with
  the CPU buffer pool off (``myfla/no-pool``: every step's final state a fresh allocation, which glibc
  maps and page-faults in anew for states of a few MB; ``myfla/ops/utils/workspace.py``).
- ``chunk``: a short chunked call (``chunk_kda`` / ``chunk_gated_delta_rule`` / ``chunk_rwkv7``, B=2
  T=300 H=4 K=V=64) as it is (the ops apply the policy themselves), on one thread (``1-thread``) and
  with the policy off (``all-threads``); the policy's first calls, in which it measures one thread
  against all, are left untimed (the steady state is timed; the op and layer rows include them).

Every op and layer row also records ``ops_per_call`` from the torch profiler: the top-level aten
ops one call dispatches, those that compute (not a view or an allocation), and on CUDA the kernels it
launches (``cuda_kernels``): a one-token step is bound by dispatch on a CPU and by launches on a GPU.
Layer rows time the step with the whole call on one thread beside it (``myfla/1-thread``, where
several threads are set): on a busy machine the shipped policy should cost about that.

Load (``--loads``): ``none``, or ``busy``: ``--busy-procs`` Python busy loops (default 1: the other
core of a 2-core machine) run while the figures are taken. Timings are medians of interleaved runs
(every implementation of a row runs in turn, so load changes hit them alike); ``p90`` shows stalls.

    python benchmarks/bench_decode.py                          # CPU: threads 1 2, loads none busy
    python benchmarks/bench_decode.py --quick                  # a smoke run
    python benchmarks/bench_decode.py --device cuda --out decode_gpu.json   # GPU: fla side by side, <= 240 s
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from myfla.layers import GatedDeltaNet, KimiDeltaAttention, RWKV7Attention  # noqa: E402
from myfla.models.utils import Cache  # noqa: E402
from myfla.ops.gated_delta_rule import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule  # noqa: E402
from myfla.ops.gated_delta_rule import fused_recurrent as fused_recurrent_module  # noqa: E402
from myfla.ops.kda import chunk_kda, fused_recurrent_kda  # noqa: E402
from myfla.ops.rwkv7 import chunk_rwkv7  # noqa: E402
from myfla.ops.utils import loop_graph, threads, workspace  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "bench_decode.json"
HIDDEN = 1024

# (op, B, H, HV, K = V): head sizes 64 / 128 / 256, Qwen3-Next's GVA heads, batch 1 and 8
OP_SHAPES = [
    ("gdn", 1, 4, 4, 64), ("gdn", 1, 16, 32, 128), ("gdn", 8, 16, 32, 128), ("gdn", 1, 4, 4, 256),
    ("kda", 1, 4, 4, 64), ("kda", 1, 16, 16, 128), ("kda", 8, 16, 16, 128), ("kda", 1, 4, 4, 256),
]
QUICK_OP_SHAPES = [("gdn", 1, 4, 4, 64), ("gdn", 1, 4, 8, 128), ("kda", 1, 4, 4, 64), ("kda", 1, 4, 4, 128)]

LAYERS = {
    "GatedDeltaNet": lambda: GatedDeltaNet(hidden_size=HIDDEN, head_dim=128, num_heads=8, expand_v=2, layer_idx=0),
    "KimiDeltaAttention": lambda: KimiDeltaAttention(hidden_size=HIDDEN, head_dim=128, num_heads=8, expand_v=1,
                                                     layer_idx=0),
    # RWKV-7's usual 64-wide heads; the first of two layers (it makes v_first itself)
    "RWKV7Attention": lambda: RWKV7Attention(hidden_size=HIDDEN, head_dim=64, layer_idx=0, num_hidden_layers=2),
}


# -- timing --------------------------------------------------------------------------------------------

def interleaved(fns: Dict[str, Callable[[], object]], repeats: int, sync: Callable[[], None]) -> Dict[str, dict]:
    """Each path once untimed, then ``repeats`` rounds running every path once, in an order shuffled
    each round (seeded), so that every path follows every other equally often: on this project's
    2-core VM a step right after a long path (transformers' token loop) ran up to 2x slower than the
    same code elsewhere in the round, which a fixed or rotated order charges to one path; wall times."""
    for fn in fns.values():
        fn()
    sync()
    samples = {k: [] for k in fns}
    order = list(fns.items())
    shuffle = random.Random(0).shuffle
    for _ in range(repeats):
        shuffle(order)
        for key, fn in order:
            t0 = time.perf_counter()
            fn()
            sync()
            samples[key].append(time.perf_counter() - t0)
    return {k: summary(s) for k, s in samples.items()}


def summary(s: List[float]) -> dict:
    s = sorted(s)
    return {"median_ms": 1e3 * statistics.median(s), "p10_ms": 1e3 * s[len(s) // 10],
            "p90_ms": 1e3 * s[min(len(s) - 1, (9 * len(s)) // 10)], "n": len(s)}


def out_of_time(args) -> bool:
    """Past ``--time-limit``: the rows not yet started are skipped (and the record says so)."""
    if args.time_limit is None or time.perf_counter() - args.started < args.time_limit:
        return False
    args.skipped = True
    return True


@contextlib.contextmanager
def policy(enabled: bool):
    """The thread policy as shipped (``enabled``) or off for the block."""
    previous = threads.set_small_work(threads.SMALL_WORK if enabled else 0)
    try:
        yield
    finally:
        threads.set_small_work(previous)


@contextlib.contextmanager
def load(kind: str, procs: int):
    """``busy``: ``procs`` Python busy loops running for the block."""
    children = []
    if kind == "busy":
        children = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(procs)]
        time.sleep(0.5)
    try:
        yield
    finally:
        for child in children:
            child.terminate()
        for child in children:
            child.wait()


# -- the implementations ----------------------------------------------------------------------------------

def transformers_fallbacks() -> Dict[str, Callable]:
    """transformers' plain torch decode loops, by op (missing where transformers or the model is).
    The hub-kernel decorator is unwrapped, so that an installed fla is not picked up; a function
    that does not unwrap to the modeling file's own definition is left out rather than mislabelled."""
    found = {}
    for op, module_name, fn_name in (("gdn", "qwen3_next", "torch_recurrent_gated_delta_rule"),
                                     ("kda", "kimi_linear", "recurrent_kimi_delta_attention")):
        try:
            module = importlib.import_module(f"transformers.models.{module_name}.modeling_{module_name}")
        except Exception as error:          # no transformers, an older one without the model, or its imports fail
            print(f"transformers' {fn_name} not timed: {type(error).__name__}: {error}")
            continue
        fn = inspect.unwrap(getattr(module, fn_name, None) or (lambda: None))
        if getattr(fn, "__code__", None) is not None and fn.__code__.co_filename == module.__file__:
            found[op] = fn
    return found


def real_fla_ops() -> Dict[str, Callable]:
    """fla's Triton fused_recurrent ops where the real fla imports (not myfla serving ``fla``)."""
    try:
        import fla
        if fla.__name__ != "fla" or not hasattr(fla, "__file__") or "myfla" in str(fla.__file__):
            return {}
        from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule as fla_gdn
        from fla.ops.kda import fused_recurrent_kda as fla_kda
    except Exception as error:              # no fla, or one that cannot run here (no Triton, no GPU)
        print(f"fla not timed: {type(error).__name__}: {error}")
        return {}
    return {"gdn": fla_gdn, "kda": fla_kda}


def op_inputs(op, B, H, HV, K, device):
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(B, 1, H, K, generator=gen), torch.randn(B, 1, H, K, generator=gen)
    v = torch.randn(B, 1, HV, K, generator=gen)
    gshape = (B, 1, HV, K) if op == "kda" else (B, 1, HV)
    g = F.logsigmoid(torch.randn(*gshape, generator=gen) + 2.0)
    beta = torch.rand(B, 1, HV, generator=gen)
    h0 = torch.randn(B, HV, K, K, generator=gen) * 0.1
    return [x.to(device) for x in (q, k, v, g, beta, h0)]


@contextlib.contextmanager
def one_thread():
    """One intra-op thread for the block (for the single-threaded copy bound)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# aten ops that only make views or allocate: no kernel on a GPU, a dispatch on either device
VIEW_OPS = {"aten::view", "aten::reshape", "aten::_reshape_alias", "aten::transpose", "aten::unsqueeze",
            "aten::squeeze", "aten::select", "aten::slice", "aten::diagonal", "aten::unbind", "aten::as_strided",
            "aten::expand", "aten::permute", "aten::t", "aten::alias", "aten::detach", "aten::split",
            "aten::narrow", "aten::empty", "aten::empty_like", "aten::new_empty", "aten::empty_strided",
            "aten::lift_fresh", "aten::resolve_conj", "aten::resolve_neg", "aten::_unsafe_view"}


def ops_per_call(fn: Callable[[], object], device: torch.device, sync: Callable[[], None]) -> dict:
    """Torch ops one call of ``fn`` dispatches (top-level aten ops, and those that compute: not a
    view or an allocation) and, on CUDA, the kernels (and memcpy/memset) it launches: the per-call
    cost of a step that is bound by dispatch (CPU) or launches (GPU), counted by the profiler."""
    fn()
    sync()
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    try:
        with torch.profiler.profile(activities=activities) as prof:
            fn()
            sync()
        events = prof.events()
    except Exception as error:              # a profiler that cannot run here: the timings still count
        return {"error": f"{type(error).__name__}: {str(error)[:200]}"}
    top = [e for e in events if e.cpu_parent is None and e.name.startswith("aten::")]
    counts = {"aten_ops": len(top), "compute_ops": sum(e.name not in VIEW_OPS for e in top)}
    if device.type == "cuda":
        counts["cuda_kernels"] = sum(e.device_type == torch.autograd.DeviceType.CUDA for e in events)
    return counts


def max_diff(a, b) -> float:
    return max((a[0] - b[0]).abs().max().item(), (a[1] - b[1]).abs().max().item())


@contextlib.contextmanager
def graphs_off(off: bool = True):
    """myfla's CUDA graphs off inside the block (``myfla.ops.utils.loop_graph.ENABLED``)."""
    enabled = loop_graph.ENABLED
    loop_graph.ENABLED = enabled and not off
    try:
        yield
    finally:
        loop_graph.ENABLED = enabled


def torch_floor(op: str, h0: torch.Tensor) -> Callable[[], object]:
    """The state passes a step built from torch ops cannot avoid, as bare ops on ``h0`` with every
    vector precomputed: read ``k^T h`` and ``q^T h`` (one ``bmm``), write the decayed state into a new
    buffer (``mul``: the gate per head for GDN, per key channel for KDA) and add the rank-1 update in
    place (``addcmul_``). No torch op scales a state per head and adds an outer product in one pass,
    and ``bmm`` is torch's fastest way to read it against two vectors (einsum, a transposed ``bmm``,
    a grouped ``conv1d``, a sparse product and ``torch.compile`` measured slower), so these three
    passes (three reads and two writes against the copy's one and one) are the least such a step
    costs."""
    B, HV, K, V = h0.shape
    R = B * HV
    state = h0.reshape(R, K, V)
    gen = torch.Generator().manual_seed(1)
    kq = torch.randn(R, 2, K, generator=gen).to(h0.device)
    decay = torch.rand(R, K if op == "kda" else 1, 1, generator=gen).to(h0.device)
    k_col = kq[:, 0].unsqueeze(-1).contiguous()
    u_row = torch.randn(R, 1, V, generator=gen).to(h0.device)
    read = torch.empty(R, 2, V, device=h0.device)
    new_state = torch.empty_like(state)

    def floor():
        torch.bmm(kq, state, out=read)
        torch.mul(state, decay, out=new_state).addcmul_(k_col, u_row)
        return read, new_state
    return floor


def bench_ops(args, n_threads, load_kind, device, sync) -> List[dict]:
    fallbacks = transformers_fallbacks()
    fla_ops = real_fla_ops() if device.type == "cuda" else {}
    rows = []
    for op, B, H, HV, K in (QUICK_OP_SHAPES if args.quick else OP_SHAPES):
        if out_of_time(args):
            break
        q, k, v, g, beta, h0 = op_inputs(op, B, H, HV, K, device)
        kw = dict(beta=beta, initial_state=h0, output_final_state=True, use_qk_l2norm_in_kernel=True)
        if op == "gdn":
            def ours():
                return fused_recurrent_gated_delta_rule(q, k, v, g=g, **kw)
        else:
            def ours():
                return fused_recurrent_kda(q, k, v, g, **kw)
        fns = {"myfla": ours}
        if device.type == "cuda":
            def eager(fn=ours):                 # the step without its CUDA graph (launch by launch)
                with graphs_off():
                    return fn()
            fns["myfla/eager"] = eager
        multi = n_threads > 1 and device.type == "cpu"
        if multi:
            def all_threads(fn=ours):
                with policy(False):
                    return fn()
            fns["myfla/all-threads"] = all_threads

            def on_one_thread(fn=ours):
                with one_thread():
                    return fn()
            fns["myfla/1-thread"] = on_one_thread
        if op in fallbacks:
            fns["transformers"] = lambda fb=fallbacks[op]: fb(q, k, v, g=g, **kw)
        if op in fla_ops:
            fns["fla"] = (lambda f=fla_ops[op]: f(q, k, v, g=g, **kw)) if op == "gdn" else \
                (lambda f=fla_ops[op]: f(q, k, v, g, **kw))
        # the memory bound: read the state and write a new one (what a step returning a new final
        # state must move), at the set thread count and, where that is more, on one thread
        buffer = torch.empty_like(h0)
        fns["copy"] = lambda: buffer.copy_(h0)
        if multi:
            def copy_one_thread():
                with one_thread():
                    buffer.copy_(h0)
            fns["copy/1-thread"] = copy_one_thread
        fns["read"] = lambda: h0.sum()
        fns["torch-floor"] = torch_floor(op, h0)
        diffs, notes = {}, []
        with torch.no_grad():
            reference = ours()
            for key in ("transformers", "fla"):
                if key not in fns:
                    continue
                try:
                    diffs[key] = max_diff(reference, fns[key]())
                except Exception as error:      # an implementation that fails here is left out, noted
                    notes.append(f"{key} failed: {type(error).__name__}: {str(error)[:200]}")
                    del fns[key]
            times = interleaved(fns, args.op_repeats, sync)
            ops = {key: ops_per_call(fns[key], device, sync) for key in ("myfla", "myfla/eager", "transformers", "fla")
                   if key in fns}
        state_bytes = h0.numel() * h0.element_size()
        bound_ms = min(times[key]["median_ms"] for key in ("copy", "copy/1-thread") if key in times)
        rows.append({"section": "op", "op": op, "B": B, "H": H, "HV": HV, "K": K, "V": K,
                     "state_MB": state_bytes / 2 ** 20, "threads": n_threads, "load": load_kind, "device": str(device),
                     "bound_ms": bound_ms, "copy_GBps": 2 * state_bytes / bound_ms / 1e6,
                     "myfla_over_bound": times["myfla"]["median_ms"] / bound_ms,
                     "myfla_over_torch_floor": times["myfla"]["median_ms"] / times["torch-floor"]["median_ms"],
                     "torch_floor_over_bound": times["torch-floor"]["median_ms"] / bound_ms,
                     "max_abs_diff": diffs, "notes": notes, "ops_per_call": ops, "times": times})
    return rows


@torch.no_grad()
def bench_layers(args, n_threads, load_kind, device, sync) -> List[dict]:
    rows = []
    steps, prompt = (8, 64) if args.quick else (args.steps, args.prompt)
    for name, make in LAYERS.items():
        if out_of_time(args):
            break
        torch.manual_seed(0)
        layer = make().eval().to(device)
        for batch in args.batches:
            x = torch.randn(batch, prompt + steps + 2, HIDDEN, device=device)
            # policy on (as shipped), off, and (several threads set) the whole step on one thread: the
            # target is that a busy machine's step costs about what the one-thread step costs
            keys = ["myfla"]
            if n_threads > 1 and device.type == "cpu":
                keys += ["myfla/all-threads", "myfla/1-thread"]
            if device.type == "cuda":
                keys += ["myfla/eager"]
            caches = {}
            for key in keys:
                caches[key] = Cache()
                layer(x[:, :prompt], past_key_values=caches[key], use_cache=True)
            samples = {key: [] for key in keys}
            for t in range(prompt, prompt + steps + 2):
                for key in keys:
                    with policy(key != "myfla/all-threads"), graphs_off(key == "myfla/eager"), \
                            (one_thread() if key == "myfla/1-thread" else contextlib.nullcontext()):
                        t0 = time.perf_counter()
                        layer(x[:, t:t + 1], past_key_values=caches[key], use_cache=True)
                        sync()
                        if t >= prompt + 2:                     # two untimed steps
                            samples[key].append(time.perf_counter() - t0)
            # counted on two more steps of the timed cache (the call runs twice: warm, profiled)
            ops = ops_per_call(lambda: layer(x[:, -1:], past_key_values=caches["myfla"], use_cache=True), device, sync)
            rows.append({"section": "layer", "layer": name, "B": batch, "prompt": prompt, "threads": n_threads,
                         "load": load_kind, "device": str(device), "ops_per_call": ops,
                         "times": {k: summary(samples[k]) for k in keys}})
    return rows


@contextlib.contextmanager
def pool(enabled: bool):
    """The CPU buffer pool as shipped (``enabled``) or off for the block."""
    previous = workspace.MAX_BYTES
    workspace.MAX_BYTES = previous if enabled else 0
    try:
        yield
    finally:
        workspace.MAX_BYTES = previous


def bench_chain(args, n_threads, load_kind, device, sync) -> List[dict]:
    rows = []
    rounds, steps = (2, 6) if args.quick else (6, 20)
    for op, B, H, HV, K in (QUICK_OP_SHAPES if args.quick else OP_SHAPES):
        if out_of_time(args):
            break
        q, k, v, g, beta, h0 = op_inputs(op, B, H, HV, K, device)
        kw = dict(beta=beta, output_final_state=True, use_qk_l2norm_in_kernel=True)
        if op == "gdn":
            def step(state):
                return fused_recurrent_gated_delta_rule(q, k, v, g=g, initial_state=state, **kw)[1]
        else:
            def step(state):
                return fused_recurrent_kda(q, k, v, g, initial_state=state, **kw)[1]
        samples = {"myfla": [], "myfla/no-pool": []}
        with torch.no_grad():
            for _ in range(rounds):
                for key in samples:
                    with pool(key == "myfla"):
                        state = h0.clone()
                        for i in range(steps):
                            t0 = time.perf_counter()
                            state = step(state)
                            sync()
                            if i >= 2:                          # two untimed steps per chain
                                samples[key].append(time.perf_counter() - t0)
        rows.append({"section": "chain", "op": op, "B": B, "H": H, "HV": HV, "K": K, "V": K,
                     "state_MB": B * HV * K * K * 4 / 2 ** 20, "threads": n_threads, "load": load_kind,
                     "device": str(device), "times": {key: summary(s) for key, s in samples.items()}})
    return rows


def bench_chunk(args, n_threads, load_kind, device, sync) -> List[dict]:
    rows = []
    B, T, H, K = 2, 300, 4, 64
    gen = torch.Generator().manual_seed(0)
    q, v = torch.randn(B, T, H, K, generator=gen), torch.randn(B, T, H, K, generator=gen)
    k = F.normalize(torch.randn(B, T, H, K, generator=gen), dim=-1)
    beta = torch.rand(B, T, H, generator=gen).sigmoid()
    gates = {"chunk_kda": F.logsigmoid(torch.randn(B, T, H, K, generator=gen)),
             "chunk_gated_delta_rule": F.logsigmoid(torch.randn(B, T, H, generator=gen)),
             "chunk_rwkv7": -0.6065306597126334 * torch.rand(B, T, H, K, generator=gen)}
    ops = {"chunk_kda": chunk_kda, "chunk_gated_delta_rule": chunk_gated_delta_rule,
           "chunk_rwkv7": lambda *xs: chunk_rwkv7(*xs, scale=1.0)}
    # RWKV7Attention's call: r, w, k, v, a = -k, b = k * (a sigmoid)
    rwkv7_inputs = [q, gates["chunk_rwkv7"], k, v, -k, k * beta.unsqueeze(-1)]
    for name, fn in ops.items():
        if out_of_time(args):
            break
        xs = [x.to(device) for x in (rwkv7_inputs if name == "chunk_rwkv7" else (q, k, v, gates[name], beta))]

        def plain(fn=fn, xs=xs):
            return fn(*xs)

        def on_one_thread(fn=fn, xs=xs):
            with one_thread():
                return fn(*xs)

        def all_threads(fn=fn, xs=xs):
            with policy(False):
                return fn(*xs)

        fns = {"as it is": plain}
        if n_threads > 1 and device.type == "cpu":
            fns["1-thread"] = on_one_thread
            fns["all-threads"] = all_threads
        with torch.no_grad():
            # untimed: the calls in which the policy measures one thread against all (threads.py)
            for _ in range(2 * threads.SMALL_WORK_SAMPLES):
                plain()
            times = interleaved(fns, args.chunk_repeats, sync)
        rows.append({"section": "chunk", "op": name, "B": B, "T": T, "H": H, "K": K, "V": K, "threads": n_threads,
                     "load": load_kind, "device": str(device), "times": times})
    return rows


# -- output ---------------------------------------------------------------------------------------------

def print_rows(rows: List[dict]) -> None:
    for r in rows:
        t = r["times"]
        if r["section"] == "op":
            head = (f"op    {r['op']:<5} B={r['B']:<2} H={r['H']:<2} HV={r['HV']:<2} K=V={r['K']:<3} "
                    f"thr={r['threads']} load={r['load']:<4}")
            cells = "  ".join(f"{k} {v['median_ms']:.3f} (p90 {v['p90_ms']:.2f})" for k, v in t.items())
            ours = t["myfla"]["median_ms"]
            ratio = f"  | myfla/bound {r['myfla_over_bound']:.1f}x ({r['copy_GBps']:.1f} GB/s)"
            if "torch_floor_over_bound" in r:
                ratio += (f", torch-floor/bound {r['torch_floor_over_bound']:.1f}x,"
                          f" myfla/torch-floor {r['myfla_over_torch_floor']:.2f}x")
            if "transformers" in t:
                ratio += f", transformers/myfla {t['transformers']['median_ms'] / ours:.2f}x"
            if "fla" in t:
                ratio += f", myfla/fla {ours / t['fla']['median_ms']:.2f}x"
            counts = "  ".join(f"{k}: " + " ".join(f"{n}={c}" for n, c in v.items()) for k, v in r["ops_per_call"].items())
            print(head + "  " + cells + ratio + f"\n      ops per call: {counts}"
                  + "".join(f"\n      note: {n}" for n in r["notes"]))
        elif r["section"] == "layer":
            head = f"layer {r['layer']:<18} B={r['B']:<2} thr={r['threads']} load={r['load']:<4}"
            counts = " ".join(f"{n}={c}" for n, c in r["ops_per_call"].items())
            print(head + "  " + "  ".join(f"{k} {v['median_ms']:.3f} ms (p90 {v['p90_ms']:.2f})" for k, v in t.items())
                  + f"\n      ops per call: {counts}")
        elif r["section"] == "chain":
            head = (f"chain {r['op']:<5} B={r['B']:<2} H={r['H']:<2} HV={r['HV']:<2} K=V={r['K']:<3} "
                    f"thr={r['threads']} load={r['load']:<4}")
            cells = "  ".join(f"{k} {v['median_ms']:.3f} ms (p90 {v['p90_ms']:.2f})" for k, v in t.items())
            print(head + "  " + cells + f"  | no-pool/myfla {t['myfla/no-pool']['median_ms'] / t['myfla']['median_ms']:.2f}x")
        else:
            head = f"chunk {r['op']:<22} B={r['B']} T={r['T']} H={r['H']} K=V={r['K']} thr={r['threads']} load={r['load']:<4}"
            print(head + "  " + "  ".join(f"{k} {v['median_ms']:.2f} ms (p90 {v['p90_ms']:.1f})" for k, v in t.items()))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--sections", nargs="+", choices=["op", "layer", "chain", "chunk"], default=None,
                        help="default: op layer chain chunk (CPU), op layer (CUDA)")
    parser.add_argument("--threads", type=int, nargs="+", default=None, help="default: 1 2 (CPU), 1 (CUDA)")
    parser.add_argument("--loads", nargs="+", choices=["none", "busy"], default=None,
                        help="default: none busy (CPU), none (CUDA)")
    parser.add_argument("--busy-procs", type=int, default=1, help="busy loops for --loads busy")
    parser.add_argument("--quick", action="store_true", help="small shapes and few repeats (smoke run)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="layer section batches")
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--steps", type=int, default=48, help="timed decode steps per layer")
    parser.add_argument("--op-repeats", type=int, default=100)
    parser.add_argument("--chunk-repeats", type=int, default=10)
    parser.add_argument("--time-limit", type=float, default=None,
                        help="seconds after which rows not yet started are skipped (default: none on CPU, "
                             "240 on CUDA); the record is written after every section either way")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        print("--device cuda: torch sees no CUDA device", file=sys.stderr)
        return 2
    args.sections = args.sections or (["op", "layer"] if cuda else ["op", "layer", "chain", "chunk"])
    args.threads = args.threads or ([1] if cuda else [1, 2])
    args.loads = args.loads or (["none"] if cuda else ["none", "busy"])
    if args.time_limit is None and cuda:
        args.time_limit = 240.0
    if args.quick:
        args.op_repeats, args.chunk_repeats, args.batches = 10, 3, [1]
    args.started, args.skipped = time.perf_counter(), False
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    try:
        from transformers.utils import logging as hf_logging
        hf_logging.set_verbosity_error()
    except ImportError:
        pass

    sections = {"op": bench_ops, "layer": bench_layers, "chain": bench_chain, "chunk": bench_chunk}
    rows = []
    for load_kind in args.loads:
        with load(load_kind, args.busy_procs):
            for n_threads in args.threads:
                torch.set_num_threads(n_threads)
                for name in args.sections:
                    new = sections[name](args, n_threads, load_kind, device, sync)
                    print_rows(new)
                    rows += new
                    write_record(args, device, rows, complete=False)
    write_record(args, device, rows, complete=True)
    print(f"wrote {args.out}" + (" (time limit reached: rows skipped)" if args.skipped else ""))
    return 0


def write_record(args, device, rows, complete: bool) -> None:
    record = {
        "benchmark": "bench_decode",
        "what": "one-token decoding: myfla ops vs transformers' fallbacks, fla's Triton ops (CUDA) and the "
                "state's memory bound; layers through a Cache; the intra-op thread policy; threads x load",
        "complete": complete and not args.skipped,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "started"},
        "seconds": time.perf_counter() - args.started,
        "small_work_threshold": threads.SMALL_WORK,
        "dtype": "float32",
        "torch": torch.__version__,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        # other processes distort multi-threaded timings badly (OpenMP regions wait for descheduled threads)
        "loadavg": os.getloadavg(),
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(args.out)


if __name__ == "__main__":
    sys.exit(main())
