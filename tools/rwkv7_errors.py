"""Errors of myfla's RWKV-7 closure against fp64 oracles built from fla 0.4.0's own torch code
(``dplr_recurrence`` of ``fla/ops/generalized_delta_rule/dplr/naive.py`` and ``fla/layers/rwkv7.py``
executed on fla's references, loaded by file path; gradients by fp64 autograd through them).

Prints the RMS error ratio rms(x - ref) / rms(ref) of the outputs and of the worst gradient, for
fp32 and bf16 inputs (the oracle runs on the unrounded inputs, so the bf16 errors include the
rounding of the inputs). Accuracy only (no timing). Usage, from the repository root:

    PYTHONPATH=. python tools/rwkv7_errors.py
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.nn.functional as F

from myfla.layers.rwkv7 import RWKV7Attention
from myfla.ops.generalized_delta_rule import chunk_dplr_delta_rule, fused_recurrent_dplr_delta_rule
from myfla.ops.rwkv7 import chunk_rwkv7
from portaudit.numerics.fla040.reference_rwkv7 import RWKV7Reference
from portaudit.static.upstream import resolve_upstream
from tests.numerics import rms_ratio

F64 = torch.float64


def fla040_root():
    local = os.environ.get("PORTAUDIT_FLA040")
    if local:
        return resolve_upstream(upstream_path=local, package="fla")
    return resolve_upstream(["fla-core==0.4.0", "flash-linear-attention==0.4.0"], package="fla")


def rwkv7_inputs(B, T, H, K, seed=0):
    """What RWKV7Attention feeds the op (log decay >= -exp(-1/2), a = -kk, b = kk * sigmoid)."""
    gen = torch.Generator().manual_seed(seed)
    r, k, v = (torch.randn(B, T, H, K, generator=gen) for _ in range(3))
    w = -0.6065306597126334 * torch.randn(B, T, H, K, generator=gen).sigmoid()
    kk = F.normalize(torch.randn(B, T, H, K, generator=gen), dim=-1)
    b = kk * torch.randn(B, T, H, K, generator=gen).sigmoid()
    h0 = torch.randn(B, H, K, K, generator=gen)
    return [r, w, k, v, -kk, b, h0]


def leaves(xs, dtype):
    return [x.detach().clone().to(dtype).requires_grad_() for x in xs]


def op_errors(name, fn, ref, xs, dtype):
    """Output, final state and worst input gradient of ``fn`` in ``dtype`` against ``ref`` in fp64."""
    mine, oracle = leaves(xs, dtype), leaves(xs, F64)
    o, ht = fn(*mine)
    o_ref, ht_ref = ref(*oracle)
    gen = torch.Generator().manual_seed(9)
    do, dht = torch.randn(o.shape, generator=gen), torch.randn(ht.shape, generator=gen)
    grads = torch.autograd.grad((o.float() * do).sum() + (ht.float() * dht).sum(), mine)
    grads_ref = torch.autograd.grad((o_ref * do.double()).sum() + (ht_ref * dht.double()).sum(), oracle)
    worst = max(rms_ratio(g_ref, g) for g_ref, g in zip(grads_ref, grads))
    print(f"{name:56s} {str(dtype)[6:]:9s} o {rms_ratio(o_ref, o):.1e}  final state "
          f"{rms_ratio(ht_ref, ht):.1e}  grads (worst) {worst:.1e}")


def main() -> None:
    warnings.simplefilter("ignore")
    ref = RWKV7Reference(fla040_root(), fp64=True)
    xs = rwkv7_inputs(2, 300, 2, 32)

    def ours(r, w, k, v, a, b, h0):
        return chunk_rwkv7(r, w, k, v, a, b, scale=1.0, initial_state=h0, output_final_state=True)

    def dplr(r, w, k, v, a, b, h0):
        return chunk_dplr_delta_rule(r, k, v, a, b, w, scale=1.0, initial_state=h0, output_final_state=True)

    def oracle(r, w, k, v, a, b, h0):
        return ref.chunk_dplr_delta_rule(r, k, v, a, b, w, scale=1.0, initial_state=h0, output_final_state=True)

    for dtype in (torch.float32, torch.bfloat16):
        op_errors("chunk_rwkv7 (B=2 T=300 H=2 K=V=32)", ours, oracle, xs, dtype)
        op_errors("chunk_dplr_delta_rule (same inputs)", dplr, oracle, xs, dtype)
    with torch.no_grad():
        mine = [x.float() for x in xs]
        o, ht = fused_recurrent_dplr_delta_rule(mine[0], mine[2], mine[3], mine[4], mine[5], mine[1], scale=1.0,
                                                initial_state=mine[6], output_final_state=True)
        o_ref, ht_ref = oracle(*[x.double() for x in xs])
    print(f"{'fused_recurrent_dplr_delta_rule (forward only, as fla)':56s} float32   o "
          f"{rms_ratio(o_ref, o):.1e}  final state {rms_ratio(ht_ref, ht):.1e}")

    # the layer, against fla's layer code on fp64 references, with random parameters
    torch.manual_seed(0)
    layer = RWKV7Attention(hidden_size=64, head_dim=16, layer_idx=1, num_hidden_layers=4)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for pname, p in layer.named_parameters():
            scale = 0.3 if pname.startswith(("x_", "k_")) else 0.5 / max(1, p.shape[-1]) ** 0.5
            p.copy_(torch.randn(p.shape, generator=gen) * scale + (0.5 if pname.startswith("x_") else 0.0))
    fla_layer = ref.layer_class()(hidden_size=64, head_dim=16, layer_idx=1, num_hidden_layers=4)
    fla_layer.load_state_dict(layer.state_dict())
    fla_layer.double()
    x = torch.randn(2, 200, 64, generator=gen)
    vf = torch.randn(2, 200, 64, generator=gen)
    x_m, vf_m = x.clone().requires_grad_(), vf.clone().requires_grad_()
    x_r, vf_r = x.double().requires_grad_(), vf.double().requires_grad_()
    o = layer(x_m, v_first=vf_m)[0]
    o_ref = fla_layer(x_r, v_first=vf_r)[0]
    go = torch.randn(o.shape, generator=gen)
    (o * go).sum().backward()
    (o_ref * go.double()).sum().backward()
    worst = max([rms_ratio(x_r.grad, x_m.grad), rms_ratio(vf_r.grad, vf_m.grad)]
                + [rms_ratio(p_r.grad, p.grad) for p, p_r in zip(layer.parameters(), fla_layer.parameters())])
    print(f"{'RWKV7Attention (hidden 64, 4 heads, T=200, chunk)':56s} float32   o "
          f"{rms_ratio(o_ref, o):.1e}  grads (worst of x, v_first, params) {worst:.1e}")


if __name__ == "__main__":
    main()
