"""Inputs and calls of the chunked ops shared by the benchmark scripts (stage_profile, bench_ab).

Imports myfla only inside the functions and never touches ``sys.path``, so that bench_ab's child
processes, whose ``sys.path`` starts with another version's tree, time that version.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def make_call(op: str, B: int, T: int, H: int, K: int, V: int):
    """Inputs that require grad and a call of the op with them (returns ``(o, final_state)``)."""
    gen = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=gen)
    if op == 'rwkv7':
        from myfla.ops.rwkv7 import chunk_rwkv7
        r, v = randn(B, T, H, K), randn(B, T, H, V)
        k = F.normalize(randn(B, T, H, K), dim=-1)
        w = -torch.exp(randn(B, T, H, K) * 0.5 - 2)
        a, b = -k, k * torch.sigmoid(randn(B, T, H, K))
        xs = [x.requires_grad_() for x in (r, w, k, v, a, b)]
        return xs, lambda: chunk_rwkv7(*xs, scale=K ** -0.5, output_final_state=True)
    q, k = F.normalize(randn(B, T, H, K), dim=-1), F.normalize(randn(B, T, H, K), dim=-1)
    v, beta = randn(B, T, H, V), torch.rand(B, T, H, generator=gen)
    if op == 'gdn':
        from myfla.ops.gated_delta_rule import chunk_gated_delta_rule as fn
        g = F.logsigmoid(randn(B, T, H))
    else:
        from myfla.ops.kda import chunk_kda as fn
        g = F.logsigmoid(randn(B, T, H, K)) / 16
    xs = [x.requires_grad_() for x in (q, k, v, g, beta)]
    return xs, lambda: fn(*xs, scale=K ** -0.5, output_final_state=True)


def fwd_bwd(inputs, call) -> None:
    """One forward+backward of ``call`` with unit output gradients; the inputs' gradients are dropped
    first (as a training step's ``zero_grad``), so autograd does not accumulate into the last call's."""
    for x in inputs:
        x.grad = None
    o, ht = call()
    torch.autograd.backward((o, ht), (torch.ones_like(o), torch.ones_like(ht)))
