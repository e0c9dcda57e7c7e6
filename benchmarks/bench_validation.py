"""What the input validation (myfla/ops/utils/validation.py) costs on the hot paths.

Each workload runs with the checks as shipped ("checked") and with the added checks replaced by
no-ops ("unchecked": fla's own varlen checks still run), interleaved in one process so that both see
the same machine state; medians and their ratio are reported. Workloads (fp32, eval, no grad):
* one decode step of GatedDeltaNet / KimiDeltaAttention (hidden 1024, batch 1) through a Cache:
  the path where a fixed per-call cost shows most;
* a varlen prefill of both layers (hidden 1024, 4 sequences, 512 tokens, cu_seqlens given): the
  checks read cu_seqlens once per tensor;
* ShortConvolution.step (D 2048) and chunk_kda (B 1, T 256, H 4, K 64) alone.
Also times each check function by itself (microseconds per call).

Prints a table and writes benchmarks/results/bench_validation.json.

    python benchmarks/bench_validation.py           # 2 threads, 200 repeats
    python benchmarks/bench_validation.py --quick   # smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import myfla.layers.gated_deltanet as gdn_layer
import myfla.layers.kda as kda_layer
import myfla.modules.convolution as convolution
import myfla.ops.gated_delta_rule.chunk as gdn_chunk
import myfla.ops.gated_delta_rule.fused_recurrent as gdn_recurrent
import myfla.ops.kda.chunk as kda_chunk
import myfla.ops.kda.fused_recurrent as kda_recurrent
import myfla.ops.kda.gate as kda_gate
from myfla.layers import GatedDeltaNet, KimiDeltaAttention
from myfla.models.utils import Cache
from myfla.modules import ShortConvolution
from myfla.ops.kda import chunk_kda
from myfla.ops.utils import validation
from myfla.ops.utils.index import check_varlen_inputs

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "bench_validation.json"
HIDDEN = 1024


def _fla_checks_only(q, k, v, g=None, beta=None, initial_state=None, cu_seqlens=None, **gates):
    check_varlen_inputs(q, initial_state, cu_seqlens)


def _noop(*args, **kwargs):
    return None


# (module, name, replacement) for every call site of an added check
UNCHECKED = [
    (kda_chunk, "check_op_inputs", _fla_checks_only), (kda_chunk, "warn_if_head_first", _noop),
    (gdn_chunk, "check_op_inputs", _fla_checks_only), (gdn_chunk, "warn_if_head_first", _noop),
    (kda_recurrent, "check_op_inputs", _fla_checks_only), (gdn_recurrent, "check_op_inputs", _fla_checks_only),
    (kda_layer, "check_layer_inputs", _noop), (gdn_layer, "check_layer_inputs", _noop),
    (convolution, "check_conv_inputs", _noop), (kda_gate, "check_softplus_beta", _noop),
]


@contextlib.contextmanager
def unchecked():
    saved = [(m, n, getattr(m, n)) for m, n, _ in UNCHECKED]
    for m, n, f in UNCHECKED:
        setattr(m, n, f)
    try:
        yield
    finally:
        for m, n, f in saved:
            setattr(m, n, f)


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def compare(fn, repeats: int) -> dict:
    """Interleaved medians of ``fn`` with and without the added checks."""
    fn()
    with unchecked():
        fn()
    on, off = [], []
    for _ in range(repeats):
        on.append(_time(fn))
        with unchecked():
            off.append(_time(fn))
    m_on, m_off = statistics.median(on), statistics.median(off)
    return {"checked_ms": 1e3 * m_on, "unchecked_ms": 1e3 * m_off, "ratio": m_on / m_off}


def decode_step(cls):
    layer = cls(hidden_size=HIDDEN, head_dim=128, num_heads=8, layer_idx=0).eval()
    x = torch.randn(1, 129, HIDDEN)
    cache = Cache()
    with torch.no_grad():
        layer(x[:, :128], past_key_values=cache, use_cache=True)
    step = x[:, 128:]

    def run():
        # the cache keeps growing its offset only; the states are overwritten in place each step
        with torch.no_grad():
            layer(step, past_key_values=cache, use_cache=True)
    return run


def varlen_prefill(cls):
    layer = cls(hidden_size=HIDDEN, head_dim=128, num_heads=8, layer_idx=0).eval()
    cu = torch.tensor([0, 100, 228, 400, 512], dtype=torch.int32)
    x = torch.randn(1, 512, HIDDEN)

    def run():
        with torch.no_grad():
            layer(x, cu_seqlens=cu)
    return run


def conv_step():
    conv = ShortConvolution(2048, 4).eval()
    cache = torch.randn(1, 2048, 4)
    x = torch.randn(1, 1, 2048)

    def run():
        with torch.no_grad():
            conv(x, cache=cache, output_final_state=True)
    return run


def chunk_op():
    q, k, v = torch.randn(1, 256, 4, 64), F.normalize(torch.randn(1, 256, 4, 64), dim=-1), torch.randn(1, 256, 4, 64)
    g, beta = F.logsigmoid(torch.randn(1, 256, 4, 64)), torch.rand(1, 256, 4)

    def run():
        with torch.no_grad():
            chunk_kda(q, k, v, g, beta)
    return run


def per_call_us(fn, repeats: int = 2000) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return 1e6 * (time.perf_counter() - t0) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    repeats = 10 if args.quick else args.repeats

    workloads = {
        "GatedDeltaNet decode step": decode_step(GatedDeltaNet),
        "KimiDeltaAttention decode step": decode_step(KimiDeltaAttention),
        "GatedDeltaNet varlen prefill (4 seqs, 512 tok)": varlen_prefill(GatedDeltaNet),
        "KimiDeltaAttention varlen prefill (4 seqs, 512 tok)": varlen_prefill(KimiDeltaAttention),
        "ShortConvolution.step (D 2048)": conv_step(),
        "chunk_kda (T 256, H 4, K 64)": chunk_op(),
    }
    rows = {name: compare(fn, repeats) for name, fn in workloads.items()}

    q = torch.randn(1, 1, 8, 128)
    cu = torch.tensor([0, 100, 228, 400, 512], dtype=torch.int32)
    hidden = torch.randn(1, 512, HIDDEN)
    checks = {
        "check_op_inputs (no cu_seqlens)": lambda: validation.check_op_inputs(q, q, q, q, q[..., 0]),
        "check_op_inputs (cu_seqlens, cached)": lambda: validation.check_op_inputs(
            hidden[..., :8].view(1, 512, 1, 8), hidden[..., :8].view(1, 512, 1, 8),
            hidden[..., :8].view(1, 512, 1, 8), cu_seqlens=cu),
        "fla's check_varlen_inputs alone": lambda: check_varlen_inputs(q, None, None),
        "warn_if_head_first": lambda: validation.warn_if_head_first(hidden.view(1, 512, 8, 128)),
        "check_layer_inputs": lambda: validation.check_layer_inputs(hidden, None, cu),
    }
    per_call = {name: per_call_us(fn, 200 if args.quick else 5000) for name, fn in checks.items()}

    print(f"threads={args.threads} repeats={repeats} torch={torch.__version__}")
    print(f"{'workload':52s} {'checked ms':>11s} {'unchecked ms':>13s} {'ratio':>7s}")
    for name, r in rows.items():
        print(f"{name:52s} {r['checked_ms']:11.3f} {r['unchecked_ms']:13.3f} {r['ratio']:7.3f}")
    print(f"\n{'check':52s} {'us/call':>11s}")
    for name, us in per_call.items():
        print(f"{name:52s} {us:11.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "threads": args.threads, "repeats": repeats, "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "workloads": rows, "check_us_per_call": per_call,
    }, indent=2) + "\n")


if __name__ == "__main__":
    main()
