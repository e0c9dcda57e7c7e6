"""RWKV-7's token-shift mixing of the six branch inputs, as ``fla.ops.rwkv7.fused_addcmul``:
``x_i = hidden_states + delta * mu_i`` for ``i`` in ``r, w, k, v, a`` (and ``g``), with the
backward ``dh = sum_i dx_i``, ``ddelta = sum_i dx_i * mu_i`` and ``dmu_i = sum_{B,T} dx_i * delta``.

fla launches one Triton kernel over ``[B, T]`` blocks (in 65536-token windows); here each pass is
one broadcast op over all branches at once.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Optional

import torch

from myfla._torch_compat import Version   # packaging's, else the same order without packaging
from myfla.utils import check_pytorch_version, device, input_guard, is_amd

logger = logging.getLogger(__name__)

if not check_pytorch_version('2.4'):
    logger.warning('PyTorch < 2.4 detected - computations may be slower due to lack of optimizations')


def identity_decorator(fn):
    """Source: fla/ops/rwkv7/fused_addcmul.py:L21-L22 (fla 0.4.0)"""
    return fn


# Source: fla/ops/rwkv7/fused_addcmul.py:L25-L25 (fla 0.4.0)
current_python_version = Version(f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}")
# Source: fla/ops/rwkv7/fused_addcmul.py:L26-L26 (fla 0.4.0)
min_torch_compile_version = Version("3.11")
# Source: fla/ops/rwkv7/fused_addcmul.py:L27-L27 (fla 0.4.0)
fla_use_compile = os.getenv('FLA_USE_COMPILE', '1').lower() in ('1', 'true', 'yes')

# fla compiles addcmul_bwd2 with torch.compile wherever Python allows it. The port compiles it only
# for CUDA tensors (``addcmul_bwd2``): on CPU, Inductor builds C++ for every new input shape (about
# 15 s for the first call, 5 s per new shape, measured on this project's machine) to fuse a six-line
# reduction that eager torch evaluates in microseconds, with the same numbers.
if (current_python_version >= min_torch_compile_version and fla_use_compile and hasattr(torch, 'compile')
        and device == 'cuda'):
    # Source: fla/ops/rwkv7/fused_addcmul.py:L30-L33 (fla 0.4.0)
    torch_compile = torch.compile(fullgraph=True)
else:
    if current_python_version < min_torch_compile_version:
        logger.warning('torch.compile is not available in Python 3.10, using identity decorator instead')
    torch_compile = identity_decorator

# Warp counts of fla's autotuner (kept for API parity; unused by torch code).
# Source: fla/ops/rwkv7/fused_addcmul.py:L35-L35 (fla 0.4.0)
NUM_WARPS_AUTOTUNE = [2, 4, 8, 16] if is_amd else [2, 4, 8, 16, 32]


def _mixing_weights(x_r, x_w, x_k, x_v, x_a, x_g):
    """The branch weights ``[n, 1, 1, D]`` (``x_g`` last when given)."""
    mus = [x_r, x_w, x_k, x_v, x_a] + ([x_g] if x_g is not None else [])
    return torch.stack([m.reshape(1, 1, -1) for m in mus], 0)


def addcmul_bwd1(d_xr, d_xw, d_xk, d_xv, d_xa, d_xg,
                 x_r, x_w, x_k, x_v, x_a, x_g, hidden_states, delta, use_xg, inplace=True):
    """``(d_hidden, d_delta)``: ``sum_i dx_i`` and ``sum_i dx_i * mu_i``; with ``inplace`` the first is
    written into ``hidden_states``'s memory (as fla's kernel does) and returned.

    Source: fla/ops/rwkv7/fused_addcmul.py:L170-L201 (fla 0.4.0)
    Source: fla/ops/rwkv7/fused_addcmul.py:L98-L167 (fla 0.4.0)
    """
    B, T, D = hidden_states.size()
    grads = [d_xr, d_xw, d_xk, d_xv, d_xa] + ([d_xg] if use_xg else [])
    mus = [x_r, x_w, x_k, x_v, x_a] + ([x_g] if use_xg else [])
    # fp16 inputs accumulate in fp16 in the kernel (DTYPE), everything else in fp32
    dtype = hidden_states.dtype if hidden_states.dtype == torch.float16 else \
        torch.promote_types(hidden_states.dtype, torch.float32)
    g_hidden = grads[0].to(dtype)
    g_delta = grads[0].to(dtype) * mus[0].reshape(-1).to(dtype)
    for dx, mu in zip(grads[1:], mus[1:]):
        g_hidden = g_hidden + dx.to(dtype)
        g_delta = g_delta.addcmul(dx.to(dtype), mu.reshape(-1).to(dtype))
    if inplace:
        # fla's kernel stores into the input buffer; write through .data as a kernel store would
        hidden_states.data.copy_(g_hidden)
        g_hiddn = hidden_states
    else:
        g_hiddn = g_hidden.to(hidden_states.dtype)
    return g_hiddn, g_delta.to(delta.dtype)


def _addcmul_bwd2_eager(d_oxr, d_xw, d_xk, d_xv, d_xa, d_xg, delta, use_xg: bool):
    """``addcmul_bwd2``'s sums in torch ops. The products are taken in the accumulation dtype, as the
    code Inductor generates for fla's compiled function takes them (bf16 / fp16 inputs loaded into
    fp32 registers), not rounded to the inputs' dtype first as eager torch would round them."""
    acc = torch.promote_types(delta.dtype, torch.float32)
    delta = delta.to(acc)
    g_xr = (d_oxr.to(acc) * delta).sum(dim=(0, 1), keepdim=True)
    g_xw = (d_xw.to(acc) * delta).sum(dim=(0, 1), keepdim=True)
    g_xk = (d_xk.to(acc) * delta).sum(dim=(0, 1), keepdim=True)
    g_xv = (d_xv.to(acc) * delta).sum(dim=(0, 1), keepdim=True)
    g_xa = (d_xa.to(acc) * delta).sum(dim=(0, 1), keepdim=True)
    g_xg = (d_xg.to(acc) * delta).sum(dim=(0, 1), keepdim=True) if use_xg else None
    return g_xr, g_xw, g_xk, g_xv, g_xa, g_xg


# fla's compiled function (the eager one itself where torch_compile is the identity); the devices
# whose tensors it is given; and whether a compilation has failed, after which every call runs eagerly
_addcmul_bwd2_compiled = torch_compile(_addcmul_bwd2_eager)
COMPILED_DEVICES = ('cuda',)
_compile_failed = [False]


def addcmul_bwd2(d_oxr, d_xw, d_xk, d_xv, d_xa, d_xg, delta, use_xg: bool):
    """``dmu_i = sum_{B,T} dx_i * delta`` in fp32 (fp64 for fp64 inputs), ``[1, 1, D]`` each.

    Compiled for CUDA tensors as fla compiles it (``torch.compile(fullgraph=True)``). Where the
    compilation fails, the call and every later one run eagerly, with one warning: fla's call raises
    instead, e.g. torch's ``FailOnRecompileLimitHit`` once one process has met the function with
    more than dynamo's recompile limit (8) of dtype, device and gradient-mode combinations, or a GPU
    machine without a working Triton, which Inductor needs for CUDA code (see the manifest deviation).

    Source: fla/ops/rwkv7/fused_addcmul.py:L204-L212 (fla 0.4.0)
    """
    args = (d_oxr, d_xw, d_xk, d_xv, d_xa, d_xg, delta, use_xg)
    if (_addcmul_bwd2_compiled is not _addcmul_bwd2_eager and delta.device.type in COMPILED_DEVICES
            and not _compile_failed[0]):
        try:
            return _addcmul_bwd2_compiled(*args)
        except Exception as err:                   # noqa: BLE001 - see below
            # an error of the inputs' own raises again here, and compilation stays on
            sums = _addcmul_bwd2_eager(*args)
            _compile_failed[0] = True
            cause = str(err).strip().splitlines()[0] if str(err).strip() else ''
            warnings.warn(f"myfla: torch.compile of RWKV-7's addcmul_bwd2 failed ({type(err).__name__}: {cause}); "
                          f"it runs eagerly from now on (the same sums)",
                          RuntimeWarning, stacklevel=2)
            return sums
    return _addcmul_bwd2_eager(*args)


class Rwkv7FusedAddcmul(torch.autograd.Function):
    """Autograd function of ``fused_addcmul_rwkv7``.

    Source: fla/ops/rwkv7/fused_addcmul.py:L215-L266 (fla 0.4.0)
    Source: fla/ops/rwkv7/fused_addcmul.py:L38-L95 (fla 0.4.0)
    """

    @staticmethod
    @input_guard
    def forward(
        ctx, hidden_states, delta,
        x_r, x_w, x_k, x_v, x_a, x_g,
    ):
        use_xg = x_g is not None
        mus = _mixing_weights(x_r, x_w, x_k, x_v, x_a, x_g)
        # one multiply-add over all branches in the operands' common precision, rounded once to the
        # hidden states' dtype (the kernel's fma on loaded values, then its store)
        dtype = torch.promote_types(torch.promote_types(hidden_states.dtype, delta.dtype), mus.dtype)
        out = torch.addcmul(hidden_states.unsqueeze(0).to(dtype), delta.unsqueeze(0).to(dtype), mus.to(dtype))
        outs = out.to(hidden_states.dtype).unbind(0)
        ctx.save_for_backward(hidden_states, delta,
                              x_r, x_w, x_k, x_v, x_a, x_g)
        ctx.use_xg = use_xg
        return (*outs[:5], outs[5] if use_xg else None)

    @staticmethod
    @input_guard
    def backward(ctx, dxr,
                 dxw, dxk, dxv, dxa, dxg):
        hidden_states, delta, x_r, x_w, x_k, x_v, x_a, x_g = ctx.saved_tensors

        # fla lets addcmul_bwd1 overwrite the saved hidden_states (the caller's tensor) with the
        # gradient; the port keeps the caller's tensor intact (see the manifest deviation)
        d_hiddn, d_xx = addcmul_bwd1(dxr, dxw, dxk, dxv, dxa, dxg, x_r, x_w, x_k, x_v, x_a, x_g,
                                     hidden_states, delta, ctx.use_xg, inplace=False)

        d_ixr, d_ixw, d_ixk, d_ixv, d_ixa, d_ixg = addcmul_bwd2(dxr, dxw, dxk, dxv, dxa, dxg, delta, ctx.use_xg)

        return d_hiddn, d_xx, d_ixr, d_ixw, d_ixk, d_ixv, d_ixa, d_ixg


def fused_addcmul_rwkv7(
    hidden_states: torch.Tensor,
    delta: torch.Tensor,
    xr: torch.Tensor,
    xw: torch.Tensor,
    xk: torch.Tensor,
    xv: torch.Tensor,
    xa: torch.Tensor,
    xg: Optional[torch.Tensor] = None
):
    """``(xr, xw, xk, xv, xa, xg)`` mixes of ``hidden_states`` ``[B, T, D]`` and its token shift
    ``delta`` (``xg`` None without its weight); a single token goes through ``torch_addcmul_rwkv7``.

    Source: fla/ops/rwkv7/fused_addcmul.py:L269-L282 (fla 0.4.0)
    """
    if hidden_states.shape[1] == 1:
        # Special case for decode
        return torch_addcmul_rwkv7(hidden_states, delta, xr, xw, xk, xv, xa, xg)
    return Rwkv7FusedAddcmul.apply(hidden_states, delta, xr, xw, xk, xv, xa, xg)


def torch_addcmul_rwkv7(hidden_states, delta, xr, xw, xk, xv, xa, xg=None):
    """fla's torch reference (the decode path of ``fused_addcmul_rwkv7``).

    Source: fla/ops/rwkv7/fused_addcmul.py:L285-L295 (fla 0.4.0)
    """
    oxr = torch.addcmul(hidden_states, delta, xr)
    oxw = torch.addcmul(hidden_states, delta, xw)
    oxk = torch.addcmul(hidden_states, delta, xk)
    oxv = torch.addcmul(hidden_states, delta, xv)
    oxa = torch.addcmul(hidden_states, delta, xa)
    if xg is not None:
        oxg = torch.addcmul(hidden_states, delta, xg)
        return oxr, oxw, oxk, oxv, oxa, oxg
    else:
        return oxr, oxw, oxk, oxv, oxa, None
