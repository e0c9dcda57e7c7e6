"""Record what an implementation (real fla 0.4.0 on a GPU, or myfla) does with the bad and empty
inputs of issue 15, item 10, so that the port's choices can be checked against fla's behaviour.

Each probe runs in its own try block and its outcome (exception type and message, or the shapes,
dtypes and finiteness of the outputs, and the warnings raised) is written to a JSON file after every
probe, so a timeout keeps what was done. The cu_seqlens ends of 2^31 and more are not probed: fla
would read far past the input on the device.

On the GPU machine (fla wheels in .whl/, see /work/shared/GPU.md):

    python3 -m pip install -q --no-index --no-deps --target /tmp/fla .whl/*.whl
    PYTHONPATH=/tmp/fla:$PWD python3 tools/probe_bad_input.py --impl fla --out $OUT/probe_fla.json

Here (CPU): python tools/probe_bad_input.py --impl myfla --device cpu --out /tmp/probe_myfla.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import traceback
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def describe(result):
    """Shapes, dtypes and finiteness of the tensors in ``result`` (nested tuples allowed)."""
    if isinstance(result, torch.Tensor):
        finite = bool(torch.isfinite(result.float()).all()) if result.is_floating_point() else None
        return {"shape": list(result.shape), "dtype": str(result.dtype), "finite": finite,
                "all_zero": bool((result == 0).all()) if result.numel() else None}
    if isinstance(result, (tuple, list)):
        return [describe(r) for r in result]
    if isinstance(result, dict):
        return {k: describe(v) for k, v in result.items()}
    return repr(result)[:80]


class Cache:
    """The three methods fla's layers use (fla 0.4.0's Cache needs transformers < 5, GPU.md)."""

    def __init__(self):
        self.states = []

    def __len__(self):
        return len(self.states)

    def __getitem__(self, i):
        return self.states[i]

    def update(self, recurrent_state=None, conv_state=None, layer_idx=0, offset=1, **_):
        state = {"recurrent_state": recurrent_state, "conv_state": conv_state}
        if len(self.states) <= layer_idx:
            self.states.append(state)
        else:
            self.states[layer_idx].update(state)
        return state


def probes(impl: str, device: torch.device):
    ops_kda = importlib.import_module(f"{impl}.ops.kda")
    gate = importlib.import_module(f"{impl}.ops.kda.gate")
    ops_gdn = importlib.import_module(f"{impl}.ops.gated_delta_rule")
    modules = importlib.import_module(f"{impl}.modules")
    layers = importlib.import_module(f"{impl}.layers")
    H, K, V = 2, 64, 64

    def inputs(B, T, dtype=torch.float32):
        q = torch.randn(B, T, H, K, device=device).to(dtype)
        k = F.normalize(torch.randn(B, T, H, K, device=device), dim=-1).to(dtype)
        v = torch.randn(B, T, H, V, device=device).to(dtype)
        g = F.logsigmoid(torch.randn(B, T, H, K, device=device))
        beta = torch.rand(B, T, H, device=device).sigmoid()
        return q, k, v, g, beta

    def chunk_kda(B=1, T=10, **kw):
        return ops_kda.chunk_kda(*inputs(B, T), **kw)

    def recurrent_kda(B=1, T=10, **kw):
        return ops_kda.fused_recurrent_kda(*inputs(B, T), **kw)

    def chunk_gdn(B=1, T=10, **kw):
        q, k, v, g, beta = inputs(B, T)
        return ops_gdn.chunk_gated_delta_rule(q, k, v, g[..., 0], beta, **kw)

    def recurrent_gdn(B=1, T=10, **kw):
        q, k, v, g, beta = inputs(B, T)
        return ops_gdn.fused_recurrent_gated_delta_rule(q, k, v, g[..., 0], beta=beta, **kw)

    def layer(kind, T, **kw):
        cls = layers.KimiDeltaAttention if kind == "kda" else layers.GatedDeltaNet
        m = cls(hidden_size=256, head_dim=64, num_heads=4, layer_idx=0).to(device).eval()
        x = torch.randn(kw.pop("B", 2), T, 256, device=device)
        with torch.no_grad():
            return m(x, **kw)

    def conv(B, T, cache=None, backend="triton", **kw):
        c = modules.ShortConvolution(64, 4, backend=backend).to(device)
        with torch.no_grad():
            return c(torch.randn(B, T, 64, device=device), cache=cache, **kw)

    cu = lambda *v: torch.tensor(v, device=device)                                  # noqa: E731

    def passes_state(op, initial_state, **kw):
        """The op's outputs, and whether the final state of every empty sequence is its initial one."""
        o, ht = op(initial_state=initial_state, output_final_state=True, **kw)
        cu_ = kw.get("cu_seqlens")
        empty = range(initial_state.shape[0]) if cu_ is None else \
            [n for n in range(len(cu_) - 1) if int(cu_[n]) == int(cu_[n + 1])]
        if cu_ is None and kw.get("T", 10) > 0:
            empty = []
        same = all(torch.equal(ht[n].float(), initial_state[n].float()) for n in empty)
        return {"o": o, "final_state": ht, "empty_sequences_keep_initial_state": same}
    h0 = lambda n: torch.randn(n, H, K, V, device=device)                           # noqa: E731
    out = {}
    for kind in ("kda", "gdn"):
        for T in (10, 100):
            out[f"{kind}-layer-all-padding-T{T}"] = lambda kind=kind, T=T: layer(
                kind, T, attention_mask=torch.zeros(2, T, dtype=torch.long, device=device))
            out[f"{kind}-layer-all-padding-cache-T{T}"] = lambda kind=kind, T=T: layer(
                kind, T, attention_mask=torch.zeros(2, T, dtype=torch.long, device=device),
                past_key_values=Cache(), use_cache=True)[2][0]
        out[f"{kind}-layer-cu_seqlens-batch-2"] = lambda kind=kind: layer(kind, 10, cu_seqlens=cu(0, 4, 10))
        out[f"{kind}-layer-short-mask"] = lambda kind=kind: layer(
            kind, 10, attention_mask=torch.ones(2, 6, dtype=torch.long, device=device))
    for name, op in (("chunk_kda", chunk_kda), ("fused_recurrent_kda", recurrent_kda),
                     ("chunk_gated_delta_rule", chunk_gdn), ("fused_recurrent_gated_delta_rule", recurrent_gdn)):
        for B, T in ((1, 0), (2, 0), (0, 5)):
            out[f"{name}-B{B}-T{T}-h0"] = lambda op=op, B=B, T=T: passes_state(op, h0(B), B=B, T=T)
        out[f"{name}-empty-sequences"] = lambda op=op: passes_state(op, h0(3), T=10, cu_seqlens=cu(0, 0, 10, 10))
        out[f"{name}-2d-cu_seqlens"] = lambda op=op: op(cu_seqlens=cu(0, 4, 10)[None], output_final_state=True)
        out[f"{name}-float-cu_seqlens"] = lambda op=op: op(cu_seqlens=cu(0., 4., 10.), output_final_state=True)
        out[f"{name}-cu_seqlens-short-of-T"] = lambda op=op: op(cu_seqlens=cu(0, 4, 8), output_final_state=True)
        out[f"{name}-4-tokens-2-heads"] = lambda op=op: op(T=4)          # T >= H: no warning expected
    # head-first [1, 2 heads, 4 tokens, K] where [B, T, H, K] is expected: fla 0.4.0's chunk_kda has no warning
    out["chunk_kda-head-first"] = lambda: ops_kda.chunk_kda(*(t.transpose(1, 2) for t in inputs(1, 4)))
    out["chunk_kda-int64-qkv"] = lambda: ops_kda.chunk_kda(*(t.round().long() for t in inputs(1, 10)[:3]),
                                                           *inputs(1, 10)[3:])
    out["fused_recurrent_kda-int64-qkv"] = lambda: ops_kda.fused_recurrent_kda(
        *(t.round().long() for t in inputs(1, 10)[:3]), *inputs(1, 10)[3:])
    out["fused_kda_gate-beta-0"] = lambda: gate.fused_kda_gate(torch.randn(2, 3, H * K, device=device),
                                                               torch.randn(H, device=device), K, beta=0.)
    for B, T in ((1, 0), (2, 0)):
        out[f"short-conv-B{B}-T{T}"] = lambda B=B, T=T: conv(B, T, cache=torch.randn(B, 64, 4, device=device),
                                                              output_final_state=True)
    out["short-conv-cuda-cache-W-1"] = lambda: conv(2, 8, cache=torch.randn(2, 64, 3, device=device),
                                                    backend="cuda", output_final_state=True)
    out["short-conv-cu_seqlens-batch-2"] = lambda: conv(2, 10, cu_seqlens=cu(0, 4, 10))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", choices=["fla", "myfla"], default="fla")
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.impl == "fla":
        from portaudit.numerics.record import limit_triton_autotune
        limit_triton_autotune()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    results = {"impl": args.impl, "device": str(device), "torch": torch.__version__, "probes": {}}
    for name, probe in probes(args.impl, device).items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                outcome = {"returned": describe(probe())}
                if device.type == "cuda":
                    torch.cuda.synchronize()
            except Exception as e:                          # what the implementation does is the datum
                outcome = {"raised": type(e).__name__, "message": str(e)[:300],
                           "where": traceback.extract_tb(e.__traceback__)[-1].filename.split("/")[-1]}
        outcome["warnings"] = sorted({str(w.message)[:160] for w in caught})
        results["probes"][name] = outcome
        print(name, json.dumps(outcome)[:200], flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
