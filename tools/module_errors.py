"""Errors of the ported module functions against fp64 oracles (torch's own norms / activations and
fp64 autograd; chunk_gla against its fp64 evaluation, which the tests pin to the fp64 recurrence).

Prints the RMS error ratio rms(x - ref) / rms(ref) of the output and the worst gradient. Accuracy
only (no timing). Usage, from the repository root: PYTHONPATH=. python tools/module_errors.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from myfla.modules import activations as act
from myfla.modules import fused_norm_gate as fng
from myfla.modules import layernorm as ln
from myfla.ops.gla import chunk_gla
from tests.numerics import rms_ratio

F64 = torch.float64


def leaf(t, dtype=None):
    return t.detach().clone().to(dtype or t.dtype).requires_grad_()


def compare(name, fn, ref, inputs, cot):
    leaves = [leaf(t) for t in inputs]
    out = fn(*leaves)
    grads = torch.autograd.grad(out, leaves, cot)
    l64 = [leaf(t, F64) for t in inputs]
    out64 = ref(*l64)
    grads64 = torch.autograd.grad(out64, l64, cot.double())
    print(f"{name:48s} out {rms_ratio(out64, out):.1e}   grads (worst) "
          f"{max(rms_ratio(a, b) for a, b in zip(grads64, grads)):.1e}")


def main() -> None:
    torch.manual_seed(0)
    x, w, b = torch.randn(4, 512, 1024), torch.randn(1024), torch.randn(1024)
    dy = torch.randn_like(x)
    compare("layer_norm [4, 512, 1024]", lambda x, w, b: ln.layer_norm(x, w, b),
            lambda x, w, b: F.layer_norm(x, (1024,), w, b, 1e-5), [x, w, b], dy)
    compare("group_norm G=4", lambda x, w, b: ln.group_norm(x, w, b, num_groups=4),
            lambda x, w, b: F.group_norm(x.reshape(-1, 1024), 4, w, b, 1e-5).reshape(x.shape), [x, w, b], dy)
    lw, lb, g = torch.randn(256, 1024) * 0.05, torch.randn(256), torch.randn_like(x)
    do = torch.randn(4, 512, 256)

    def rms(t, w, eps):
        return t * torch.rsqrt(t.square().mean(-1, keepdim=True) + eps) * w

    compare("rms_norm_linear 1024 -> 256", lambda x, w, lw, lb: ln.rms_norm_linear(x, w, None, lw, lb),
            lambda x, w, lw, lb: F.linear(rms(x, w, 1e-5), lw, lb), [x, w, lw, lb], do)
    compare("rms_norm_swish_gate_linear 1024 -> 256",
            lambda x, g, w, lw: fng.rms_norm_swish_gate_linear(x, g, w, None, lw, None),
            lambda x, g, w, lw: F.linear(rms(x, w, 1e-6) * F.silu(g), lw), [x, g, w, lw], do)
    for dtype in (torch.float32, torch.bfloat16):
        a, c = (torch.randn(8, 4096) * 3).to(dtype), torch.randn(8, 4096).to(dtype)
        compare(f"swiglu {str(dtype)[6:]} [8, 4096]", act.swiglu, lambda a, c: F.silu(a) * c, [a, c],
                torch.randn(8, 4096).to(dtype))

    B, T, H, K, V = 2, 1000, 4, 64, 64
    ins = [torch.randn(B, T, H, K), torch.randn(B, T, H, K), torch.randn(B, T, H, V),
           F.logsigmoid(torch.randn(B, T, H, K)), torch.randn(B, H, K, V)]

    def gla(q, k, v, g, h0):
        o, ht = chunk_gla(q, k, v, g, initial_state=h0, output_final_state=True)
        return torch.cat([o.flatten(), ht.flatten()])

    compare("chunk_gla B2 T1000 H4 K=V=64 (o and ht)", gla, gla, ins, torch.randn(B * T * H * V + B * H * K * V))


if __name__ == "__main__":
    main()
