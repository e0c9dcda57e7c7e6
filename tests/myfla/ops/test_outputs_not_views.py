"""The ops' outputs are tensors of their own, as fla's are (fla allocates them with torch.empty):
under autograd a caller may change them in place (a cache scaling a state, a residual added into
an output), which autograd forbids for a custom Function's view outputs. The port's outputs often
live in larger buffers (the CPU buffer pool, a padded chunk grid, a flat step output), so its
Functions return them through ``myfla.ops.utils.workspace.standalone``; gradients after an in-place
change must be what the change implies."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from myfla.ops.gated_delta_rule import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule
from myfla.ops.generalized_delta_rule.dplr import chunk_dplr_delta_rule, fused_recurrent_dplr_delta_rule
from myfla.ops.gla import chunk_gla
from myfla.ops.kda import chunk_kda, fused_recurrent_kda
from myfla.ops.utils import workspace


def _inputs(T: int, K: int = 128, H: int = 4):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, T, H, K, generator=gen)
    k = F.normalize(torch.randn(1, T, H, K, generator=gen), dim=-1)
    v = torch.randn(1, T, H, K, generator=gen)
    g = F.logsigmoid(torch.randn(1, T, H, K, generator=gen) + 2.0)
    beta = torch.rand(1, T, H, generator=gen)
    h0 = 0.1 * torch.randn(1, H, K, K, generator=gen)   # 256 KiB: the pool hands out such states
    return q, k, v, g, beta, h0


def _call(op: str, xs):
    q, k, v, g, beta, h0 = xs
    kw = dict(initial_state=h0, output_final_state=True)
    if op == 'chunk_gated_delta_rule':
        return chunk_gated_delta_rule(q, k, v, g.mean(-1), beta, **kw)
    if op == 'chunk_kda':
        return chunk_kda(q, k, v, g, beta, **kw)
    if op == 'fused_recurrent_gated_delta_rule':
        return fused_recurrent_gated_delta_rule(q, k, v, g=g.mean(-1), beta=beta, **kw)
    if op == 'fused_recurrent_kda':
        return fused_recurrent_kda(q, k, v, g, beta=beta, **kw)
    if op == 'chunk_dplr_delta_rule':
        return chunk_dplr_delta_rule(q, k, v, -k, 0.5 * k, g, **kw)
    if op == 'fused_recurrent_dplr_delta_rule':
        return fused_recurrent_dplr_delta_rule(q, k, v, -k, 0.5 * k, g, **kw)
    return chunk_gla(q, k, v, g, **kw)


CASES = [('chunk_gated_delta_rule', 100), ('chunk_kda', 100), ('fused_recurrent_gated_delta_rule', 1),
         ('fused_recurrent_kda', 1), ('chunk_dplr_delta_rule', 100), ('fused_recurrent_dplr_delta_rule', 1),
         ('chunk_gla', 100)]


@pytest.mark.parametrize('op,T', CASES, ids=[c[0] for c in CASES])
def test_outputs_are_not_views_and_take_in_place_changes(op, T):
    workspace.release()
    xs = _inputs(T)
    leaves = [x.clone().requires_grad_() for x in xs[:3]]
    o, state = _call(op, (*leaves, *xs[3:]))
    assert o.requires_grad
    assert not o._is_view() and not state._is_view()
    kept = state.detach().clone()
    o.mul_(2.0)                                           # raised "... is a view ... modified inplace" before
    state.mul_(0.5)
    assert torch.equal(state, kept * 0.5)
    if not op.startswith('chunk'):
        return                                            # the fused recurrent ops have no backward (as in fla)
    # gradients: o changed in place by 2 gives twice the gradients of the unchanged output
    o.sum().backward()
    ref_leaves = [x.clone().requires_grad_() for x in xs[:3]]
    o_ref, _ = _call(op, (*ref_leaves, *xs[3:]))
    (2.0 * o_ref).sum().backward()
    for got, ref in zip((x.grad for x in leaves), (x.grad for x in ref_leaves)):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
