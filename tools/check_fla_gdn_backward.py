"""Is fla's ``chunk_gated_delta_rule`` backward right on this GPU? (fla issue #640)

fla issue #640: on Hopper GPUs with Triton 3.4.0 to 3.7.0 the gated ``chunk_bwd_dqkwg`` kernel can
be miscompiled (``dk``, and through it ``dg`` and ``dbeta``, wrong); fla 0.6.0 refuses that backward
there, fla 0.4.0 (which this project's golden fixtures come from) runs it. This script runs fla's op
forward and backward at several shapes and dtypes on the GPU, next to myfla on the same GPU, and
compares both against an fp64 per-token recurrence written here with autograd (independent of both):
the RMS of the difference over the RMS of the reference, per output and gradient (fla's test metric).
A correct kernel sits at its precision's level (fp32 through TF32 dots about 1.5e-3, bf16 about 5e-3);
a miscompiled ``chunk_bwd_dqkwg`` shows up as ``dk`` / ``dg`` / ``dbeta`` ratios far above ``dq`` / ``dv``.

    python tools/check_fla_gdn_backward.py --autotune limited --out fla640_limited.json
    python tools/check_fla_gdn_backward.py --autotune full --shapes 3 --out fla640_full.json

``--autotune limited`` keeps the two autotune configs the golden recorder keeps
(``portaudit.numerics.record.limit_triton_autotune``); ``full`` lets fla search all of them (minutes
of compilation). fla must be importable (``PYTHONPATH``, see /work/shared/GPU.md); runs on CUDA only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = [(1, 512, 4, 64, 64), (2, 256, 4, 128, 128), (1, 512, 2, 100, 100), (1, 320, 4, 128, 256),
          (1, 512, 8, 256, 128)]          # (B, T, H, K, V); K = 100 is the reproduction
NAMES = ('o', 'dq', 'dk', 'dv', 'dg', 'dbeta')


def naive(q, k, v, g, beta, scale):
    """The gated delta rule token by token (the state ``S`` ``[B, H, K, V]``)."""
    import torch
    B, T, H, K = q.shape
    S = q.new_zeros(B, H, K, v.shape[-1])
    outs = []
    for t in range(T):
        S = S * g[:, t].exp()[..., None, None]
        kt = k[:, t]
        vn = beta[:, t][..., None] * (v[:, t] - torch.einsum('bhkv,bhk->bhv', S, kt))
        S = S + kt[..., None] * vn[..., None, :]
        outs.append(torch.einsum('bhkv,bhk->bhv', S, q[:, t] * scale))
    return torch.stack(outs, 1)


def make_inputs(B: int, T: int, H: int, K: int, V: int, seed: int = 0):
    """CPU fp32 ``(q, k, v, g, beta, do)``: L2-normalised keys (raw ones make the delta rule
    explode), log-sigmoid gates near 0, beta in (0.5, 0.73)."""
    import torch
    import torch.nn.functional as F
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=gen)
    k = F.normalize(torch.randn(B, T, H, K, generator=gen), dim=-1)
    v = torch.randn(B, T, H, V, generator=gen)
    g = F.logsigmoid(torch.randn(B, T, H, generator=gen) + 2.0)
    beta = torch.rand(B, T, H, generator=gen).sigmoid()
    do = torch.randn(B, T, H, V, generator=gen)
    return q, k, v, g, beta, do


def ratio(x, ref) -> float:
    x, ref = x.double(), ref.double()
    return ((x - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt().clamp_min(1e-30)).item()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--autotune", choices=["limited", "full"], default="limited")
    ap.add_argument("--shapes", type=int, default=len(SHAPES), help="how many of the shapes to run")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.autotune == "limited":
        from portaudit.numerics.record import limit_triton_autotune
        limit_triton_autotune()
    import torch
    if not torch.cuda.is_available():
        print("check_fla_gdn_backward: needs a CUDA device", file=sys.stderr)
        return 2
    import triton
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule as fla_gdn
    from myfla.ops.gated_delta_rule import chunk_gated_delta_rule as myfla_gdn
    dev = torch.device("cuda")
    rows = []
    for B, T, H, K, V in SHAPES[:args.shapes]:
        for dtype in (torch.bfloat16, torch.float32):
            q, k, v, g, beta, do = make_inputs(B, T, H, K, V)
            scale = K ** -0.5
            xs64 = [x.to(dev, torch.float64).requires_grad_() for x in (q, k, v, g, beta)]
            o64 = naive(*xs64, scale)
            o64.backward(do.to(dev, torch.float64))
            ref = [o64.detach()] + [x.grad for x in xs64]
            row = {"B": B, "T": T, "H": H, "K": K, "V": V, "dtype": str(dtype).split(".")[-1],
                   "autotune": args.autotune, "gpu": torch.cuda.get_device_name(), "triton": triton.__version__}
            for name, fn in (("fla", fla_gdn), ("myfla", myfla_gdn)):
                # q, k, v in the dtype under test; the gates in fp32 for both, as the layers pass them
                xs = [x.to(dev, dtype).requires_grad_() for x in (q, k, v)] + \
                     [x.to(dev, torch.float32).requires_grad_() for x in (g, beta)]
                try:
                    start = time.time()
                    o, _ = fn(*xs, scale=scale)
                    o.backward(do.to(dev, dtype))
                    torch.cuda.synchronize()
                    row[name] = dict(zip(NAMES, (ratio(a, r) for a, r in zip([o.detach()] + [x.grad for x in xs], ref))))
                    row[name + "_seconds"] = round(time.time() - start, 1)
                except Exception as err:          # recorded, not raised: the other rows still run
                    row[name] = f"{type(err).__name__}: {str(err)[:300]}"
            rows.append(row)
            print(json.dumps(row), flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
