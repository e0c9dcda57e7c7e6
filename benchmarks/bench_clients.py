"""transformers' Qwen3-Next and Kimi Linear on myfla (``import fla`` served by myfla) against
transformers' own torch fallback, side by side in one process (fp32, CPU, eval/train as stated).

Two copies of each modeling module are imported: the first while ``import fla`` fails, so
transformers binds its torch fallback (``torch_chunk_gated_delta_rule``, ``chunk_kimi_delta_attention``
and the recurrent ones); the second after ``myfla.install_as_fla()``, so it binds myfla. Both models
get the same weights, and the paths run alternately (fallback, myfla, fallback, ...) so that load
changes on the machine hit both alike; each figure is a median.

Sections, per thread count (``--threads``):
- model: prefill (no grad, ``use_cache=False``) at ``--prefill-lengths``, forward+backward of the
  LM loss at ``--train-lengths``, on models of ``--layers`` linear-attention layers; decode per token
  (batch ``--decode-batches``, after a ``--prompt``-token prefill, through transformers' cache) on the
  same layers plus one full-attention layer (transformers' hybrid cache needs one);
- op: the op call the layer makes (``torch_chunk_gated_delta_rule(...)`` etc., through transformers'
  wrapper) at the same shapes, without the projections, MLPs and norms both paths share.

Heads as published: Qwen3-Next 16 key / 32 value heads, Kimi Linear 16 heads, K = V = 128.

    python benchmarks/bench_clients.py --threads 2                 # the full run (long: see --help)
    python benchmarks/bench_clients.py --quick --threads 1 2       # a smoke run at small sizes
    python benchmarks/bench_clients.py --decode-only --threads 1 2 4   # decode rows only (model and op)

On a GPU (``--device cuda``) the same rows run on CUDA tensors, every timing synchronised.
``--served fla --fla-path DIR`` binds the second copy to a real fla installed in DIR instead of myfla
(transformers' fast path, fla's Triton kernels; its autotuning trimmed to two configs per kernel);
its rows keep the column name ``myfla`` and the record says ``"served": "fla"``. Compare myfla with
fla through two runs on the same GPU, each against the same fallback:

    python benchmarks/bench_clients.py --device cuda --out h100_bench_clients_cuda_myfla.json
    python benchmarks/bench_clients.py --device cuda --served fla --fla-path /tmp/fla \
        --out h100_bench_clients_cuda_fla.json

Prints a table and writes benchmarks/results/bench_clients.json (or ``--out``). Timings taken on a
loaded machine are not results.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.abc
import inspect
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "bench_clients.json"

MODELING = {
    "qwen3_next": "transformers.models.qwen3_next.modeling_qwen3_next",
    "kimi_linear": "transformers.models.kimi_linear.modeling_kimi_linear",
}
VOCAB = 1024
DEVICE = torch.device("cpu")


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


# -- the two copies of a modeling module -------------------------------------------------------------

class _BlockFla(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == "fla" or fullname.startswith("fla."):
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


def load_modeling_pair(modname: str, fla_path: str = ""):
    """(fallback copy, myfla copy) of a transformers modeling module; see the module docstring. With
    ``fla_path`` the second copy binds the real fla installed there instead of myfla."""
    sys.modules.pop(modname, None)
    blocker = _BlockFla()
    sys.meta_path.insert(0, blocker)
    try:
        fallback = importlib.import_module(modname)
    finally:
        sys.meta_path.remove(blocker)
    sys.modules.pop(modname, None)
    if fla_path:
        from bench_matrix import limit_triton_autotune
        limit_triton_autotune()
        sys.path.insert(0, fla_path)
        import fla                                  # noqa: F401  (the real one, from fla_path)
        if not getattr(fla, "__file__", "").startswith(fla_path):
            raise RuntimeError(f"fla was not imported from {fla_path}")
    else:
        import myfla
        if myfla.install_as_fla(force=True) != "myfla":
            raise RuntimeError("myfla could not be installed as fla")
    served = importlib.import_module(modname)
    return fallback, served


# -- configurations ----------------------------------------------------------------------------------

def qwen3_next_config(args, layer_types):
    from transformers import Qwen3NextConfig
    n = len(layer_types)
    return Qwen3NextConfig(
        vocab_size=VOCAB, hidden_size=args.hidden, intermediate_size=args.intermediate, num_hidden_layers=n,
        layer_types=layer_types, mlp_only_layers=list(range(n)), num_attention_heads=16, num_key_value_heads=2,
        head_dim=128, linear_num_key_heads=args.heads, linear_num_value_heads=2 * args.heads,
        linear_key_head_dim=args.head_dim, linear_value_head_dim=args.head_dim, linear_conv_kernel_dim=4,
        pad_token_id=0, bos_token_id=1, eos_token_id=2)


def kimi_linear_config(args, layer_types):
    from transformers import KimiLinearConfig
    n = len(layer_types)
    return KimiLinearConfig(
        vocab_size=VOCAB, hidden_size=args.hidden, intermediate_size=args.intermediate, num_hidden_layers=n,
        layer_types=layer_types, mlp_layer_types=["dense"] * n, num_attention_heads=16, num_key_value_heads=16,
        qk_rope_head_dim=64, qk_nope_head_dim=128, v_head_dim=128, kv_lora_rank=512,
        linear_head_dim=args.head_dim, linear_num_heads=args.heads, pad_token_id=0, bos_token_id=1, eos_token_id=2)


CONFIGS = {"qwen3_next": qwen3_next_config, "kimi_linear": kimi_linear_config}
CAUSAL_LM = {"qwen3_next": "Qwen3NextForCausalLM", "kimi_linear": "KimiLinearForCausalLM"}


def model_pair(name, pair, config):
    fallback, served = pair
    torch.manual_seed(0)
    ref = getattr(fallback, CAUSAL_LM[name])(config)
    ours = getattr(served, CAUSAL_LM[name])(config)
    ours.load_state_dict(ref.state_dict())
    return ref.to(DEVICE), ours.to(DEVICE)


# -- timing --------------------------------------------------------------------------------------------

def alternate(fns: Dict[str, Callable[[], None]], repeats: int, budget_s: float) -> Dict[str, dict]:
    """Run each path once untimed, then alternately until every path has ``repeats`` timings or the
    time budget is spent (at least one timing each); medians and all samples."""
    for fn in fns.values():
        fn()
        sync()
    samples = {k: [] for k in fns}
    start = time.perf_counter()
    while True:
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync()
            samples[key].append(time.perf_counter() - t0)
        done = min(len(s) for s in samples.values())
        if done >= repeats or time.perf_counter() - start > budget_s:
            break
    return {k: {"median_s": statistics.median(s), "samples_s": s} for k, s in samples.items()}


class OpClock:
    """Wall time spent inside the chunked linear-attention op calls of one modeling module copy.

    The layers look the op up among their module's globals at call time, so replacing that global with
    a timed wrapper measures every call. A prefill row then splits into the op and everything else
    (projections, convolution, norms, MLPs, which both paths share): the op speedup is myfla's own, and
    fallback total / fallback outside the op bounds the model-level speedup (Amdahl)."""

    OPS = {"qwen3_next": "torch_chunk_gated_delta_rule", "kimi_linear": "chunk_kimi_delta_attention"}

    def __init__(self, module, model_name: str):
        self.seconds = 0.0
        name = self.OPS[model_name]
        op = getattr(module, name)

        def timed(*args, **kwargs):
            sync()
            t0 = time.perf_counter()
            try:
                return op(*args, **kwargs)
            finally:
                sync()
                self.seconds += time.perf_counter() - t0

        setattr(module, name, timed)


def timed_with_op(fn: Callable[[], None], clock: OpClock, into: List[float]) -> Callable[[], None]:
    """``fn`` that appends the op seconds of each run to ``into``."""
    def run():
        clock.seconds = 0.0
        fn()
        into.append(clock.seconds)
    return run


def fallback_peak_bytes(name: str, B: int, T: int, H: int, K: int, train: bool) -> int:
    """Rough peak of transformers' fallback for one layer: Kimi Linear's chunk_kimi_delta_attention
    materialises [B, H, T/64, 64, 64, K] fp32 tensors (the decay mask and products with it), a few
    at a time, more when autograd keeps them; the GDN fallback's are [B, H, T/64, 64, 64]."""
    unit = B * H * T * 64 * 4 * (K if name == "kimi_linear" else 1)
    return unit * (8 if train else 3)


def mem_available() -> Optional[int]:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def fits(name, B, T, H, K, train) -> Optional[str]:
    need = fallback_peak_bytes(name, B, T, H, K, train)
    have = torch.cuda.mem_get_info()[0] if DEVICE.type == "cuda" else mem_available()
    if have is not None and need > 0.8 * have:
        return f"skipped: the fallback needs ~{need / 2**30:.0f} GiB, {have / 2**30:.0f} GiB available"
    return None


# -- measurements ----------------------------------------------------------------------------------------

def bench_model(name, pair, args, threads) -> List[dict]:
    rows = []
    linear = ["linear_attention"] * args.layers
    if not (args.prefill_lengths or args.train_lengths):
        return bench_decode_model(name, pair, args, threads, linear)
    ref, ours = model_pair(name, pair, CONFIGS[name](args, linear))
    clocks = (OpClock(pair[0], name), OpClock(pair[1], name)) if args.prefill_lengths else None
    value_heads = 2 * args.heads if name == "qwen3_next" else args.heads
    for T in args.prefill_lengths:
        ref.eval(), ours.eval()
        ids = torch.randint(3, VOCAB, (1, T)).to(DEVICE)
        row = {"model": name, "section": "model", "what": "prefill", "batch": 1, "T": T, "threads": threads}
        skip = fits(name, 1, T, value_heads, args.head_dim, train=False)
        if skip:
            rows.append({**row, "note": skip})
            continue
        with torch.no_grad():
            check = (ref(ids[:, :200], use_cache=False).logits, ours(ids[:, :200], use_cache=False).logits)
            op_s = {"fallback": [], "myfla": []}
            times = alternate({"fallback": timed_with_op(lambda: ref(ids, use_cache=False), clocks[0], op_s["fallback"]),
                               "myfla": timed_with_op(lambda: ours(ids, use_cache=False), clocks[1], op_s["myfla"])},
                              args.repeats, args.budget)
        rows.append({**row, **summary(times), **op_split(times, op_s),
                     "max_abs_logit_diff": (check[0] - check[1]).abs().max().item()})
    for T in args.train_lengths:
        ref.train(), ours.train()
        ids = torch.randint(3, VOCAB, (1, T)).to(DEVICE)
        row = {"model": name, "section": "model", "what": "forward+backward", "batch": 1, "T": T, "threads": threads}
        skip = fits(name, 1, T, value_heads, args.head_dim, train=True)
        if skip:
            rows.append({**row, "note": skip})
            continue

        def step(model):
            model.zero_grad(set_to_none=True)
            model(ids, labels=ids, use_cache=False).loss.backward()

        times = alternate({"fallback": lambda: step(ref), "myfla": lambda: step(ours)}, args.repeats, args.budget)
        rows.append({**row, **summary(times)})
    del ref, ours
    return rows + bench_decode_model(name, pair, args, threads, linear)


def bench_decode_model(name, pair, args, threads, linear) -> List[dict]:
    """Decode per token on the linear-attention layers plus one full-attention layer (transformers'
    hybrid cache needs one)."""
    if not args.decode_batches:
        return []
    hybrid = linear + ["full_attention"]
    ref, ours = model_pair(name, pair, CONFIGS[name](args, hybrid))
    ref.eval(), ours.eval()
    return [{"model": name, "section": "model", "what": "decode per token", "batch": B, "T": args.prompt,
             "threads": threads, "layers": len(hybrid), **decode(ref, ours, B, args)}
            for B in args.decode_batches]


def _cache_argument(model) -> str:
    """transformers 5.24 names the cache `cache`; earlier 5.x and 4.x name it `past_key_values`."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _returned_cache(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


@torch.no_grad()
def decode(ref, ours, B, args) -> dict:
    from transformers import DynamicCache
    ids = torch.randint(3, VOCAB, (B, args.prompt + args.warmup + args.steps)).to(DEVICE)
    state = {}
    for key, model in (("fallback", ref), ("myfla", ours)):
        name = _cache_argument(model)
        out = model(ids[:, :args.prompt], **{name: DynamicCache(config=model.config)}, use_cache=True)
        state[key] = [model, _returned_cache(out), out.logits[:, -1], name]
    samples = {"fallback": [], "myfla": []}
    for t in range(args.prompt, args.prompt + args.warmup + args.steps):
        for key in ("fallback", "myfla"):
            model, cache, _, name = state[key]
            t0 = time.perf_counter()
            out = model(ids[:, t:t + 1], **{name: cache}, use_cache=True)
            sync()
            elapsed = time.perf_counter() - t0
            state[key][1:3] = [_returned_cache(out), out.logits[:, -1]]
            if t >= args.prompt + args.warmup:
                samples[key].append(elapsed)
    diff = (state["fallback"][2] - state["myfla"][2]).abs().max().item()
    times = {k: {"median_s": statistics.median(s), "samples_s": s} for k, s in samples.items()}
    return {**summary(times), "steps": args.steps, "max_abs_logit_diff": diff}


def bench_ops(name, pair, args, threads) -> List[dict]:
    """The op call each layer makes, through transformers' wrapper, fallback vs myfla."""
    fallback, served = pair
    fn = {"qwen3_next": ("torch_chunk_gated_delta_rule", "torch_recurrent_gated_delta_rule"),
          "kimi_linear": ("chunk_kimi_delta_attention", "recurrent_kimi_delta_attention")}[name]
    H, K = args.heads, args.head_dim
    HV = 2 * H if name == "qwen3_next" else H

    def inputs(B, T, grad):
        gen = torch.Generator().manual_seed(T)
        gshape = (B, T, HV, K) if name == "kimi_linear" else (B, T, HV)
        xs = [torch.randn(B, T, H, K, generator=gen), torch.randn(B, T, H, K, generator=gen),
              torch.randn(B, T, HV, K, generator=gen),
              torch.nn.functional.logsigmoid(torch.randn(*gshape, generator=gen) + 2.0),
              torch.rand(B, T, HV, generator=gen)]
        return [x.to(DEVICE).requires_grad_(grad) for x in xs]

    def call(module, which, xs, state=None, final=False):
        q, k, v, g, beta = xs
        return getattr(module, fn[which])(q, k, v, g=g, beta=beta, initial_state=state, output_final_state=final,
                                          use_qk_l2norm_in_kernel=True)

    rows = []
    for T in args.prefill_lengths:
        row = {"model": name, "section": "op", "what": "prefill", "batch": 1, "T": T, "threads": threads}
        skip = fits(name, 1, T, HV, K, train=False)
        if skip:
            rows.append({**row, "note": skip})
            continue
        xs = inputs(1, T, False)
        with torch.no_grad():
            times = alternate({"fallback": lambda: call(fallback, 0, xs), "myfla": lambda: call(served, 0, xs)},
                              args.repeats, args.budget)
        rows.append({**row, **summary(times)})
    for T in args.train_lengths:
        row = {"model": name, "section": "op", "what": "forward+backward", "batch": 1, "T": T, "threads": threads}
        skip = fits(name, 1, T, HV, K, train=True)
        if skip:
            rows.append({**row, "note": skip})
            continue
        xs = inputs(1, T, True)

        def step(module):
            o, _ = call(module, 0, xs)
            o.sum().backward()

        times = alternate({"fallback": lambda: step(fallback), "myfla": lambda: step(served)},
                          args.repeats, args.budget)
        rows.append({**row, **summary(times)})
    for B in args.decode_batches:
        xs = inputs(B, 1, False)
        state = torch.randn(B, HV, K, K).to(DEVICE)
        row = {"model": name, "section": "op", "what": "decode per token", "batch": B, "T": 1, "threads": threads}
        try:
            with torch.no_grad():
                times = alternate({"fallback": lambda: call(fallback, 1, xs, state, True),
                                   "myfla": lambda: call(served, 1, xs, state, True)},
                                  max(args.repeats, 20), args.budget)
        except RuntimeError as e:                   # e.g. a transformers release whose fallback lacks GVA
            rows.append({**row, "note": f"failed: {type(e).__name__}: {str(e)[:120]}"})
            continue
        rows.append({**row, **summary(times)})
    return rows


def summary(times: Dict[str, dict]) -> dict:
    fb, ours = times["fallback"]["median_s"], times["myfla"]["median_s"]
    return {"fallback_s": fb, "myfla_s": ours, "speedup": fb / ours,
            "samples": {k: len(v["samples_s"]) for k, v in times.items()},
            "samples_s": {k: v["samples_s"] for k, v in times.items()}}


def op_split(times: Dict[str, dict], op_s: Dict[str, List[float]]) -> dict:
    """Medians of the op's share of each run and of the rest; ``amdahl_bound`` is the model speedup
    an infinitely fast op would give (fallback total / fallback time outside the op)."""
    op_s = {k: v[-len(times[k]["samples_s"]):] for k, v in op_s.items()}     # not the untimed first run
    op = {k: statistics.median(v) for k, v in op_s.items()}
    rest = {k: statistics.median([t - o for t, o in zip(times[k]["samples_s"], op_s[k])]) for k in op_s}
    return {"op_s": op, "outside_op_s": rest, "op_speedup": op["fallback"] / op["myfla"],
            "amdahl_bound": times["fallback"]["median_s"] / rest["fallback"]}


def print_table(rows: List[dict]) -> None:
    header = (f"{'model':<12} {'section':<6} {'what':<17} {'thr':>3} {'B':>2} {'T':>5} "
              f"{'fallback':>11} {'myfla':>11} {'speedup':>8}  n")
    print(header)
    print("-" * len(header))
    for r in rows:
        head = f"{r['model']:<12} {r['section']:<6} {r['what']:<17} {r['threads']:>3} {r['batch']:>2} {r['T']:>5} "
        if "note" in r:
            print(head + r["note"])
            continue
        print(head + f"{fmt(r['fallback_s']):>11} {fmt(r['myfla_s']):>11} {r['speedup']:>7.2f}x  "
              f"{min(r['samples'].values())}")
        if "op_s" in r:
            print(" " * len(head) + f"{'op:':>5} {fmt(r['op_s']['fallback']):>11} {fmt(r['op_s']['myfla']):>11} "
                  f"{r['op_speedup']:>7.2f}x  (outside the op {fmt(r['outside_op_s']['fallback'])} / "
                  f"{fmt(r['outside_op_s']['myfla'])}; model speedup bound {r['amdahl_bound']:.1f}x)")


def fmt(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms" if seconds < 1 else f"{seconds:.2f} s"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[2], help="torch thread counts to run")
    parser.add_argument("--quick", action="store_true", help="small sizes and one timing each (smoke run)")
    parser.add_argument("--models", nargs="+", choices=list(MODELING), default=list(MODELING))
    parser.add_argument("--sections", nargs="+", choices=["model", "op"], default=["model", "op"])
    parser.add_argument("--prefill-lengths", type=int, nargs="*", default=[2048, 8192])
    parser.add_argument("--train-lengths", type=int, nargs="*", default=[2048])
    parser.add_argument("--decode-batches", type=int, nargs="*", default=[1, 8])
    parser.add_argument("--layers", type=int, default=3, help="linear-attention layers (default 3)")
    parser.add_argument("--heads", type=int, default=16, help="key heads (Qwen3-Next has twice as many value heads)")
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=2048, help="dense MLP width")
    parser.add_argument("--prompt", type=int, default=128, help="prefill before the decode steps")
    parser.add_argument("--steps", type=int, default=32, help="timed decode steps")
    parser.add_argument("--warmup", type=int, default=4, help="untimed decode steps")
    parser.add_argument("--repeats", type=int, default=5, help="timings per path (within --budget)")
    parser.add_argument("--budget", type=float, default=120.0,
                        help="seconds per measurement after which fewer repeats are taken (at least one)")
    parser.add_argument("--decode-only", action="store_true",
                        help="only the decode-per-token rows (no prefill or forward+backward)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--served", choices=("myfla", "fla"), default="myfla",
                        help="what serves `import fla` in the second copy (fla: the real one, --fla-path)")
    parser.add_argument("--fla-path", type=str, default="", help="with --served fla: where fla is installed")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.served == "fla" and not args.fla_path:
        parser.error("--served fla needs --fla-path")
    global DEVICE
    DEVICE = torch.device(args.device)
    if args.quick:
        args.prefill_lengths, args.train_lengths = [512], [256]
        args.layers, args.heads, args.hidden, args.intermediate = 1, 4, 256, 256
        args.prompt, args.steps, args.warmup, args.repeats, args.budget = 64, 8, 2, 1, 10.0
    if args.decode_only:
        args.prefill_lengths, args.train_lengths = [], []
    out = args.out or RESULTS

    import transformers
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()              # the fallback's "install fla" warnings, once per op
    fla_path = args.fla_path if args.served == "fla" else ""
    pairs = {name: load_modeling_pair(MODELING[name], fla_path) for name in args.models}
    rows = []
    for threads in (args.threads if DEVICE.type == "cpu" else args.threads[:1]):
        torch.set_num_threads(threads)
        for name in args.models:
            if "model" in args.sections:
                rows += bench_model(name, pairs[name], args, threads)
                write_record(out, args, rows)     # a run cut short keeps what it measured
            if "op" in args.sections:
                rows += bench_ops(name, pairs[name], args, threads)
                write_record(out, args, rows)
    print_table(rows)
    print(f"wrote {out}")
    return 0


def write_record(out: Path, args, rows: List[dict]) -> None:
    import transformers
    import myfla
    record = {
        "benchmark": "bench_clients",
        "what": f"transformers' Qwen3-Next / Kimi Linear: {args.served} (served as fla) vs transformers' torch fallback",
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "dtype": "float32",
        "device": "cpu" if DEVICE.type == "cpu" else torch.cuda.get_device_name(0),
        "served": args.served,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "myfla": myfla.__version__,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "loadavg_after": os.getloadavg(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "results": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
