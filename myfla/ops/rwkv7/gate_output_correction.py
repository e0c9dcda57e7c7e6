"""RWKV-7's output correction and gate, as ``fla.ops.rwkv7.gate_output_correction``:
``(o + ((r * k * r_k).sum(-1, keepdim=True) * v).view_as(o)) * g`` per head, computed in fp32, and
its backward (``grad_r_k`` summed over batch and time in fp32).

fla's kernels walk 65536-token windows and index ``v`` and ``o`` with the key head size; the port
evaluates the formula of fla's ``gate_output_correction_ref`` over the whole tensors (see the
manifest deviations for the two cases where the kernels' indexing differs from that formula).
"""

from __future__ import annotations

import torch

from myfla.utils import autocast_custom_bwd, autocast_custom_fwd, input_guard


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def gate_output_correction_ref(
    o: torch.Tensor,
    r: torch.Tensor,
    k: torch.Tensor,
    r_k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
):
    """fla's torch reference: ``(o + ((r * k * r_k).sum(-1, keepdim=True) * v).view(o.shape)) * g`` with
    ``o``/``g`` ``[B, T, H*D]``, ``r``/``k``/``v`` ``[B, T, H, D]``, ``r_k`` ``[H, D]``.

    Source: fla/ops/rwkv7/gate_output_correction.py:L10-L29 (fla 0.4.0)
    """
    correction_term = ((r * k * r_k.unsqueeze(0).unsqueeze(0)).sum(-1, keepdim=True) * v).view(o.shape)
    return (o + correction_term) * g


def gate_output_correction_backward_ref(grad_output, o, r, k, r_k, v, g):
    """fla's torch reference of the backward: ``(grad_o, grad_r, grad_k, grad_r_k, grad_v, grad_g)``
    (written for equal key and value head sizes, as in fla).

    Source: fla/ops/rwkv7/gate_output_correction.py:L32-L56 (fla 0.4.0)
    """
    B, T, HD = o.shape
    H, D = r.shape[-2], r.shape[-1]
    r_k_b = r_k.unsqueeze(0).unsqueeze(0)
    correction_scalar = (r * k * r_k_b).sum(-1, keepdim=True)
    gated_input = o + (correction_scalar * v).view(B, T, HD)
    grad_g = grad_output * gated_input
    grad_gated_input = grad_output * g
    grad_correction = grad_gated_input.view(B, T, H, D)
    grad_v = grad_correction * correction_scalar
    grad_correction_scalar = (grad_correction * v).sum(-1, keepdim=True).expand_as(r)
    grad_r = grad_correction_scalar * k * r_k_b
    grad_k = grad_correction_scalar * r * r_k_b
    grad_r_k = (grad_correction_scalar * r * k).sum(dim=(0, 1))
    return grad_gated_input, grad_r, grad_k, grad_r_k, grad_v, grad_g


def gate_output_correction_backward_triton(grad_output, o, r, k, r_k, v, g):
    """``(grad_o, grad_r, grad_k, grad_r_k, grad_v, grad_g)`` in the inputs' dtypes.

    Source: fla/ops/rwkv7/gate_output_correction.py:L179-L208 (fla 0.4.0)
    Source: fla/ops/rwkv7/gate_output_correction.py:L110-L176 (fla 0.4.0)
    """
    B, T, _ = o.shape
    H = r.shape[-2]
    dtype = _compute_dtype(grad_output, o, r, k, r_k, v, g)
    go, oc, rc, kc, rkc, vc, gc = (x.to(dtype) for x in (grad_output, o, r, k, r_k, v, g))
    corr = (rc * kc * rkc).sum(-1, keepdim=True)                          # [B, T, H, 1]
    gated_input = oc + (corr * vc).reshape(B, T, -1)
    grad_g = go * gated_input
    grad_gate = go * gc
    grad_v = grad_gate.view(B, T, H, -1) * corr
    grad_corr = (grad_gate.view(B, T, H, -1) * vc).sum(-1, keepdim=True)  # [B, T, H, 1]
    grad_r = grad_corr * kc * rkc
    grad_k = grad_corr * rc * rkc
    grad_r_k = (grad_corr * rc * kc).sum(dim=(0, 1))                       # fp32 intermediate, as fla
    return (grad_gate.to(o.dtype), grad_r.to(r.dtype), grad_k.to(k.dtype), grad_r_k.type_as(r_k),
            grad_v.to(v.dtype), grad_g.to(g.dtype))


class GateOutputCorrection(torch.autograd.Function):
    """Autograd function of ``gate_output_correction``.

    Source: fla/ops/rwkv7/gate_output_correction.py:L211-L243 (fla 0.4.0)
    Source: fla/ops/rwkv7/gate_output_correction.py:L59-L107 (fla 0.4.0)
    """

    @staticmethod
    @autocast_custom_fwd
    @input_guard
    def forward(ctx, o, r, k, r_k, v, g):
        assert r_k.dim() == 2 and r_k.shape[0] == r.shape[-2] and r_k.shape[1] == r.shape[-1]
        B, T, _ = o.shape
        dtype = _compute_dtype(o, r, k, r_k, v, g)
        corr = (r.to(dtype) * k.to(dtype) * r_k.to(dtype)).sum(-1, keepdim=True)
        output = (o.to(dtype) + (corr * v.to(dtype)).reshape(B, T, -1)) * g.to(dtype)
        ctx.save_for_backward(o, r, k, r_k, v, g)
        return output.to(o.dtype)

    @staticmethod
    @autocast_custom_bwd
    @input_guard
    def backward(ctx, grad_output):
        o, r, k, r_k, v, g = ctx.saved_tensors
        return gate_output_correction_backward_triton(grad_output, o, r, k, r_k, v, g)


# Source: fla/ops/rwkv7/gate_output_correction.py:L246-L246 (fla 0.4.0)
gate_output_correction = GateOutputCorrection.apply
