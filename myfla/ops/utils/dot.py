"""Matrix products with fla's ``tl.dot`` precision (port-only helper; fla has no counterpart).

fla's kernels take the operands of a dot in the dtype they were loaded or cast to (``b_h.to(b_k.dtype)``,
``b_A.to(b_v.dtype)``, a bf16 input as it is) and accumulate in fp32. For bf16/fp16 operands that is
what tensor cores and CPU bf16 units do; torch's plain bf16 matmul would instead round its *result*
to bf16. Here:

- ``operand(x, dtype)`` rounds ``x`` to ``dtype`` where fla's kernel does, and keeps it in the dtype
  the dots of this device take (``operand_dtype``);
- ``dot(a, b)`` multiplies two such operands with an fp32 result (fp64 for fp64 operands).

Where torch has native low-precision products with an fp32 result (``torch.bmm(..., out_dtype=)``
on CUDA, torch >= 2.8, probed once per device), operands stay in bf16/fp16 and the products run on
the matrix units. Elsewhere (CPU, older torch) operands are kept in fp32 holding the rounded values:
an fp32 product of bf16/fp16 values is exact and accumulates in fp32, so both paths compute the same
function (up to summation order), the fallback at fp32 speed. fp32 and fp64 operands multiply as
they are (TF32 only if the caller enabled it in torch).
"""

from __future__ import annotations

import os
from typing import Dict, Optional

import torch

from myfla.ops.utils.workspace import out_buffer

LOW_PRECISION = (torch.float16, torch.bfloat16)

# Tests set this to emulate the native path's dtypes on CPU (operands kept in bf16/fp16, products
# computed by upcasting); None means: probe the device.
_force_native: Optional[bool] = None
_native: Dict[tuple, bool] = {}
_native_add: Dict[tuple, bool] = {}


def _probe(device: torch.device) -> bool:
    """Whether ``torch.bmm(a, b, out_dtype=torch.float32)`` runs on ``device`` for bf16 operands and
    agrees with the fp32 product of the same values."""
    if device.type != 'cuda' or os.environ.get('MYFLA_NATIVE_LOW_PRECISION_DOTS', '1') == '0':
        return False
    try:
        gen = torch.Generator(device='cpu').manual_seed(0)
        a = torch.randn(2, 16, 32, generator=gen).to(device=device, dtype=torch.bfloat16)
        b = torch.randn(2, 32, 16, generator=gen).to(device=device, dtype=torch.bfloat16)
        out = torch.bmm(a, b, out_dtype=torch.float32)
        ref = torch.bmm(a.float(), b.float())
        return out.dtype == torch.float32 and bool(torch.allclose(out, ref, rtol=1e-5, atol=1e-5))
    except (TypeError, RuntimeError, NotImplementedError):
        return False


def _probe_add(device: torch.device) -> bool:
    """Whether ``torch.baddbmm(c, a, b, out_dtype=torch.float32, alpha=-1)`` with an fp32 ``c`` runs,
    also into an ``out=`` slice, and agrees with ``c - a @ b``."""
    try:
        gen = torch.Generator(device='cpu').manual_seed(1)
        a = torch.randn(2, 16, 32, generator=gen).to(device=device, dtype=torch.bfloat16)
        b = torch.randn(2, 32, 16, generator=gen).to(device=device, dtype=torch.bfloat16)
        c = torch.randn(2, 16, 16, generator=gen).to(device=device)
        ref = c - torch.bmm(a.float(), b.float())
        out = torch.baddbmm(c, a, b, out_dtype=torch.float32, alpha=-1)
        buf = torch.zeros(3, 2, 16, 16, device=device)
        torch.baddbmm(c, a, b, out_dtype=torch.float32, alpha=-1, out=buf[1])
        return (out.dtype == torch.float32 and bool(torch.allclose(out, ref, rtol=1e-5, atol=1e-5))
                and bool(torch.allclose(buf[1], ref, rtol=1e-5, atol=1e-5)))
    except (TypeError, RuntimeError, NotImplementedError):
        return False


def _key(device: torch.device) -> tuple:
    return (device.type, device.index if device.index is not None else torch.cuda.current_device()
            if device.type == 'cuda' else None)


def native_low_precision_dots(device) -> bool:
    """Whether bf16/fp16 operands are multiplied natively with an fp32 result on ``device``."""
    if _force_native is not None:
        return _force_native
    device = torch.device(device)
    key = _key(device)
    if key not in _native:
        _native[key] = _probe(device)
    return _native[key]


def operand_dtype(dtype: torch.dtype, device) -> torch.dtype:
    """The dtype that dot operands of ``dtype`` are kept in on ``device``: ``dtype`` itself, except
    bf16/fp16 without native products (then fp32, holding the rounded values)."""
    if dtype in LOW_PRECISION and not native_low_precision_dots(device):
        return torch.float32
    return dtype


def operand(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` rounded to ``dtype`` (a kernel's cast before ``tl.dot``, or a tensor fla stores in
    ``dtype``), kept in ``operand_dtype(dtype)``; ``x`` itself when it already is."""
    keep = operand_dtype(dtype, x.device)
    if keep == dtype:
        return x if x.dtype == dtype else x.to(dtype)
    # bf16/fp16 without native products: round, then hold the rounded value in fp32
    return x.to(dtype).to(keep)


def _broadcast_lead(a: torch.Size, b: torch.Size) -> tuple:
    """``torch.broadcast_shapes(a, b)`` for two concrete shapes, in plain Python: torch's own goes
    through its symbolic-shape checks (about 30 us a call on this project's 2-core machine, against
    1 us here), and ``dot`` is called some hundred times per chunked op call."""
    if a == b:
        return tuple(a)
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + tuple(a), (1,) * (n - len(b)) + tuple(b)
    lead = []
    for x, y in zip(a, b):
        if x != y and x != 1 and y != 1:
            raise RuntimeError(f"dot: leading dims {tuple(a)} and {tuple(b)} do not broadcast")
        lead.append(y if x == 1 else x)
    return tuple(lead)


def _as_batched(x: torch.Tensor, lead) -> torch.Tensor:
    return x.expand(*lead, *x.shape[-2:]).reshape(-1, *x.shape[-2:])


def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` (batched over leading dims, broadcast as ``torch.matmul``) with fla's dot precision:
    an fp32 result accumulated in fp32 for bf16/fp16 operands, the operands' dtype otherwise."""
    if b.dtype != a.dtype:
        # mixed operands meet in the wider dtype
        wide = torch.promote_types(a.dtype, b.dtype)
        a, b = a.to(wide), b.to(wide)
    if a.dtype in LOW_PRECISION and (not native_low_precision_dots(a.device) or a.device.type != 'cuda'):
        a, b = a.float(), b.float()
    if a.dtype not in LOW_PRECISION:
        # large CPU results come from the workspace pool (a fresh one page-faults in every call)
        shape = _broadcast_lead(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1])
        out = out_buffer(shape, a.dtype, a.device) if a.dim() >= 3 and b.dim() >= 3 else None
        return torch.matmul(a, b) if out is None else torch.matmul(a, b, out=out)
    lead = _broadcast_lead(a.shape[:-2], b.shape[:-2])
    out = torch.bmm(_as_batched(a, lead), _as_batched(b, lead), out_dtype=torch.float32)
    return out.view(*lead, *out.shape[-2:])


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, *x.shape[-2:]) if x.dim() != 3 else x


def dot_add(c: torch.Tensor, a: torch.Tensor, b: torch.Tensor, alpha: float = 1.0,
            out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``c + alpha * (a @ b)`` with ``dot``'s precision, in ``c``'s dtype (fp32 or fp64); ``a``, ``b``,
    ``c`` have the same leading dims (no broadcasting). Written into ``out`` when given (``out`` may be
    ``c``; then it must be contiguous or 3-D, as ``baddbmm_`` writes it in place)."""
    shape = c.shape
    if b.dtype != a.dtype:
        wide = torch.promote_types(a.dtype, b.dtype)
        a, b = a.to(wide), b.to(wide)
    if out is not None and out.dim() != 3 and not out.is_contiguous():
        raise ValueError("dot_add: a non-3-D out must be contiguous")
    a3, b3, c3 = _flat(a), _flat(b), _flat(c)
    o3 = _flat(out) if out is not None else None
    if a.dtype not in LOW_PRECISION or not native_low_precision_dots(a.device) or a.device.type != 'cuda':
        if a.dtype in LOW_PRECISION:
            a3, b3 = a3.float(), b3.float()
        if o3 is None:
            res = torch.baddbmm(c3, a3, b3, alpha=alpha)
        elif out is c:
            res = o3.baddbmm_(a3, b3, alpha=alpha)
        else:
            res = torch.baddbmm(c3, a3, b3, alpha=alpha, out=o3)
        return res.view(shape) if out is None else out
    key = _key(a.device)
    if key not in _native_add:
        _native_add[key] = _probe_add(a.device)
    if _native_add[key] and out is not c:
        if o3 is None:
            return torch.baddbmm(c3, a3, b3, out_dtype=torch.float32, alpha=alpha).view(shape)
        torch.baddbmm(c3, a3, b3, out_dtype=torch.float32, alpha=alpha, out=o3)
        return out
    prod = torch.bmm(a3, b3, out_dtype=torch.float32)
    if o3 is None:
        return torch.add(c3, prod, alpha=alpha).view(shape)
    torch.add(c3, prod, alpha=alpha, out=o3)
    return out


def rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a * b).sum(-1)`` in the wider of the two dtypes (one fused op when the dtypes agree)."""
    if a.dtype == b.dtype:
        return torch.linalg.vecdot(a, b)
    return (a * b).sum(-1)
