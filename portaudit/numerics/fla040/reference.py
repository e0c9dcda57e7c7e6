"""A CPU reference implementation of the fla 0.4.0 API surface that the numeric checks use.

The delta-rule ops run fla's own oracle ``naive_recurrent_kda`` and the gate runs fla's
``kda_gate_ref``, both executed from the fetched upstream tree by file path. Modules that fla
ships no torch reference for (short convolution and causal_conv1d, gated RMSNorm, RMSNorm, l2norm, chunk-local
cumsum, solve_tril) are written here from their defining formulas. The two layers are fla's own
layer code (``fla/layers/kda.py``, ``fla/layers/gated_deltanet.py``) executed with these
references standing in for the Triton-backed ops, so layer glue (padding, GVA, caches) is
upstream's. RWKV-7's closure (the DPLR delta rule, its ops and layer) comes from
:mod:`.reference_rwkv7`. The reference is slow (token loops) and meant for small shapes.
"""

from __future__ import annotations

import contextlib
import sys
import types
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from portaudit.numerics.impl import MappingImplementation, factory
from portaudit.numerics.fla040.reference_rwkv7 import rwkv7_reference
from portaudit.numerics.fla040.varlen import check_varlen
from portaudit.numerics.upstream_code import load_function, load_module

L2_EPS = 1e-6


def _up(x: torch.Tensor) -> torch.Tensor:
    """fp32 compute for fp32/half inputs; fp64 inputs stay fp64 (the oracle mode)."""
    return x if x.dtype == torch.float64 else x.float()


class _Fp64Torch(types.ModuleType):
    """``torch`` as seen by an upstream oracle, with ``torch.float`` meaning float64."""

    def __getattr__(self, name):
        return getattr(torch, name)


def fp64_oracle(fn):
    """Run an upstream oracle that hard-codes ``.to(torch.float)`` in float64 instead."""
    proxy = _Fp64Torch("torch")
    proxy.float = torch.float64
    fn.__globals__["torch"] = proxy
    return fn


def l2n(x: torch.Tensor, eps: float = L2_EPS) -> torch.Tensor:
    """fla's l2norm: ``x / sqrt(sum(x^2) + eps)`` in fp32 (not F.normalize)."""
    x = _up(x)
    return x * torch.rsqrt(x.square().sum(-1, keepdim=True) + eps)


class ReferenceOps:
    """The delta-rule family and the gate, driven by fla's naive oracles."""

    def __init__(self, root: Path, fp64: bool = False):
        self.root = Path(root)
        self.fp64 = fp64
        fns = load_function(self.root, "fla/ops/kda/naive.py", ["naive_recurrent_kda", "naive_chunk_kda"])
        self.kda_gate_ref = load_function(self.root, "fla/ops/kda/gate.py", "kda_gate_ref")
        if fp64:  # each load_function call has its own globals, so patching them is local
            fp64_oracle(fns["naive_recurrent_kda"])
            fp64_oracle(self.kda_gate_ref)
        self.naive_recurrent_kda = fns["naive_recurrent_kda"]
        self.naive_chunk_kda = fns["naive_chunk_kda"]

    # -- generic delta rule with a per-key log gate, fla's layout [B, T, H, K] ------------------
    def delta_rule(self, q, k, v, gk, beta, scale, initial_state, output_final_state, cu_seqlens,
                   out_dtype):
        if cu_seqlens is None:
            o, ht = self.naive_recurrent_kda(q, k, v, gk, beta, scale=scale, initial_state=initial_state,
                                             output_final_state=output_final_state)
            return o.to(out_dtype), ht
        bounds = [int(x) for x in cu_seqlens.tolist()]
        outs, states = [], []
        for i, (bos, eos) in enumerate(zip(bounds[:-1], bounds[1:])):
            h0 = initial_state[i:i + 1] if initial_state is not None else None
            o_i, h_i = self.naive_recurrent_kda(
                q[:, bos:eos], k[:, bos:eos], v[:, bos:eos], gk[:, bos:eos], beta[:, bos:eos],
                scale=scale, initial_state=h0, output_final_state=True)
            outs.append(o_i)
            states.append(h_i)
        o = torch.cat(outs, 1).to(out_dtype)
        return o, (torch.cat(states, 0) if output_final_state else None)

    def chunk_kda(self, q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                  use_qk_l2norm_in_kernel=False, cu_seqlens=None, **kwargs):
        check_varlen(q, initial_state, cu_seqlens)
        if scale is None:
            scale = k.shape[-1] ** -0.5
        dtype = q.dtype
        if use_qk_l2norm_in_kernel:
            q, k = l2n(q), l2n(k)
        return self.delta_rule(q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens, dtype)

    def fused_recurrent_kda(self, q, k, v, g, beta=None, scale=None, initial_state=None,
                            output_final_state=False, use_qk_l2norm_in_kernel=False, cu_seqlens=None,
                            **kwargs):
        return self.fused_recurrent_gated_delta_rule(
            q, k, v, gk=g, beta=beta, scale=scale, initial_state=initial_state,
            output_final_state=output_final_state, use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
            cu_seqlens=cu_seqlens)

    def chunk_gated_delta_rule(self, q, k, v, g, beta, scale=None, initial_state=None,
                               output_final_state=False, use_qk_l2norm_in_kernel=False, cu_seqlens=None,
                               **kwargs):
        check_varlen(q, initial_state, cu_seqlens)
        if scale is None:
            scale = k.shape[-1] ** -0.5
        dtype = q.dtype
        if use_qk_l2norm_in_kernel:
            q, k = l2n(q), l2n(k)
        gk = _up(g).unsqueeze(-1).expand(*g.shape, k.shape[-1])
        return self.delta_rule(q, k, v, gk, beta, scale, initial_state, output_final_state, cu_seqlens, dtype)

    def fused_recurrent_gated_delta_rule(self, q, k, v, g=None, gk=None, gv=None, beta=None, scale=None,
                                         initial_state=None, output_final_state=False,
                                         use_qk_l2norm_in_kernel=False, cu_seqlens=None):
        check_varlen(q, initial_state, cu_seqlens)
        if gv is not None:
            raise ValueError("the reference delta rule takes log gates over keys (g, gk), not values (gv)")
        if scale is None:
            scale = k.shape[-1] ** -0.5
        dtype = q.dtype
        B, T, H, K = k.shape
        HV = v.shape[2]
        if use_qk_l2norm_in_kernel:
            q, k = l2n(q), l2n(k)
        if HV != H:  # GVA: value head j reads query/key head j // (HV // H)
            q, k = (x.repeat_interleave(HV // H, dim=2) for x in (q, k))
        ct = torch.float64 if q.dtype == torch.float64 else torch.float
        if beta is None:
            beta = torch.ones(B, T, HV, dtype=ct, device=q.device)
        log_gate = torch.zeros(B, T, HV, K, dtype=ct, device=q.device)
        if g is not None:
            log_gate = log_gate + _up(g).unsqueeze(-1)
        if gk is not None:
            log_gate = log_gate + _up(gk)
        return self.delta_rule(q, k, v, log_gate, beta, scale, initial_state, output_final_state, cu_seqlens,
                               dtype)

    def fused_kda_gate(self, g, A, head_k_dim, g_bias=None, beta=1.0, threshold=20.0):
        return self.kda_gate_ref(g, A, head_k_dim, g_bias=g_bias, beta=beta, threshold=threshold)


# -- modules written from their formulas -------------------------------------------------------

def _act(y: torch.Tensor, activation: Optional[str]) -> torch.Tensor:
    return F.silu(y) if activation in ("silu", "swish") else y


def causal_conv1d(x, weight=None, bias=None, residual=None, initial_state=None, output_final_state=False,
                  activation=None, backend='triton', cu_seqlens=None, **kwargs):
    """fla's ``causal_conv1d`` from its formula: ``x [B, T, D]``, ``weight [D, W]``, the state ``[N, D, W]``
    holds the last ``W`` inputs (a given initial state is read from its last ``W-1`` columns);
    returns ``(y, final_state or None)``."""
    B, T, D = x.shape
    W = weight.shape[-1]
    w = _up(weight)
    if cu_seqlens is None:
        seqs = list(x.unbind(0))
    else:
        b = [int(t) for t in cu_seqlens.tolist()]
        seqs = [x[0, s:e] for s, e in zip(b[:-1], b[1:])]
    ys, finals = [], []
    for i, xs in enumerate(seqs):
        init = _up(initial_state[i]) if initial_state is not None else _up(x.new_zeros(D, W))
        ext = torch.cat([init.transpose(0, 1), _up(xs)], 0)              # [W + L, D]
        win = ext.unfold(0, W, 1)[1:]                                      # [L, D, W]
        y = (win * w).sum(-1)
        if bias is not None:
            y = y + _up(bias)
        ys.append(_act(y, activation))
        finals.append(ext[-W:].transpose(0, 1))
    y = torch.stack(ys, 0) if cu_seqlens is None else torch.cat(ys, 0).unsqueeze(0)
    if residual is not None:
        y = y + _up(residual)
    final = torch.stack(finals, 0).to(x.dtype) if output_final_state else None
    return y.to(x.dtype), final


class ShortConvolution(nn.Conv1d):
    """Depthwise causal conv with fla's cache convention: the cache is ``[N, D, W]`` and holds
    the last ``W`` inputs (prefill reads only its last ``W-1`` columns)."""

    def __init__(self, hidden_size, kernel_size, bias=False, activation='silu', backend='triton',
                 device=None, dtype=None, **kwargs):
        super().__init__(hidden_size, hidden_size, kernel_size, groups=hidden_size, bias=bias,
                         padding=kernel_size - 1, device=device, dtype=dtype)
        self.hidden_size = hidden_size
        self.activation = activation
        self.backend = backend

    def forward(self, x, residual=None, mask=None, cache=None, output_final_state=False, cu_seqlens=None,
                **kwargs):
        B, T, D = x.shape
        N = B if cu_seqlens is None else len(cu_seqlens) - 1
        if mask is not None:
            x = x.mul_(mask.unsqueeze(-1))
        if B * T == N:
            return self.step(x, residual, cache, output_final_state=output_final_state, cu_seqlens=cu_seqlens)
        return causal_conv1d(x, self.weight[:, 0, :], self.bias, residual=residual, initial_state=cache,
                             output_final_state=output_final_state, activation=self.activation,
                             cu_seqlens=cu_seqlens)

    def step(self, x, residual, cache, output_final_state=False, cu_seqlens=None):
        B, _, D = x.shape
        W = self.kernel_size[0]
        N = B if cu_seqlens is None else len(cu_seqlens) - 1
        if output_final_state and cache is None:
            cache = x.new_zeros(N, D, W)
        xs = x.squeeze(0) if cu_seqlens is not None else x.squeeze(1)        # [N, D]
        window = torch.cat([cache[..., 1:].to(xs), xs.unsqueeze(-1)], -1)   # [N, D, W]
        with torch.no_grad():
            cache.copy_(window)
        y = (_up(window) * _up(self.weight[:, 0, :])).sum(-1)
        if self.bias is not None:
            y = y + _up(self.bias)
        y = _act(y, self.activation).to(x.dtype).view(x.shape)
        if residual is not None:
            y = y + residual
        return y, cache


def _norm_forward(x, weight, bias, eps, residual, prenorm, residual_in_fp32, gate=None, activation=None):
    shape, dtype = x.shape, x.dtype
    xf = _up(x)
    if residual is not None:
        xf = xf + _up(residual)
    res_dtype = residual.dtype if residual is not None else (torch.float if residual_in_fp32 else dtype)
    y = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * _up(weight)
    if bias is not None:
        y = y + _up(bias)
    if gate is not None:
        gf = _up(gate)
        y = y * torch.sigmoid(gf) if activation == "sigmoid" else y * gf * torch.sigmoid(gf)
    y = y.to(dtype).reshape(shape)
    return (y, xf.to(res_dtype)) if prenorm else y


class FusedRMSNormGated(nn.Module):
    """``rms_norm(x [+ residual]) * weight * act(g)``, act = swish/silu (g*sigmoid(g)) or sigmoid."""

    def __init__(self, hidden_size, elementwise_affine=True, eps=1e-5, activation='swish', device=None,
                 dtype=None):
        super().__init__()
        if activation not in ['swish', 'silu', 'sigmoid']:
            raise ValueError(f"Unsupported activation: {activation}")
        self.hidden_size, self.eps, self.activation = hidden_size, eps, activation
        self.elementwise_affine = elementwise_affine
        if elementwise_affine:
            self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)
        self.register_parameter("bias", None)

    def forward(self, x, g, residual=None, prenorm=False, residual_in_fp32=False):
        return _norm_forward(x, self.weight, self.bias, self.eps, residual, prenorm, residual_in_fp32,
                             gate=g, activation=self.activation)


class RMSNorm(nn.Module):
    """``rms_norm(x [+ residual]) * weight [+ bias]``."""

    def __init__(self, hidden_size, elementwise_affine=True, bias=False, eps=1e-5):
        super().__init__()
        self.hidden_size, self.eps, self.elementwise_affine = hidden_size, eps, elementwise_affine
        self.register_parameter("weight", None)
        self.register_parameter("bias", None)
        if elementwise_affine:
            self.weight = nn.Parameter(torch.ones(hidden_size))
            if bias:
                self.bias = nn.Parameter(torch.zeros(hidden_size))

    def forward(self, x, residual=None, prenorm=False, residual_in_fp32=False):
        return _norm_forward(x, self.weight, self.bias, self.eps, residual, prenorm, residual_in_fp32)


def l2norm_fwd(x, eps=1e-6, output_dtype=None):
    xf = _up(x)
    rstd = torch.rsqrt(xf.square().sum(-1) + eps)
    y = (xf * rstd.unsqueeze(-1)).to(output_dtype or x.dtype)
    return y, rstd


def l2norm_bwd(y, rstd, dy, eps=1e-6):
    yf, dyf = _up(y), _up(dy)
    dx = _up(rstd).unsqueeze(-1) * (dyf - yf * (dyf * yf).sum(-1, keepdim=True))
    return dx.to(y.dtype)


def _sequence_bounds(B: int, T: int, cu_seqlens) -> list[tuple[int, int, int]]:
    """(batch row, start, end) of every sequence."""
    if cu_seqlens is None:
        return [(b, 0, T) for b in range(B)]
    c = [int(t) for t in cu_seqlens.tolist()]
    return [(0, s, e) for s, e in zip(c[:-1], c[1:])]


def chunk_local_cumsum(g, chunk_size, reverse=False, scale=None, cu_seqlens=None, head_first=False,
                       output_dtype=torch.float, **kwargs):
    if g.dim() not in (3, 4):
        raise ValueError(f"Unsupported input shape {g.shape}, which should be (B, T, H, D) if "
                         f"`head_first=False` or (B, H, T, D) otherwise")
    x = g.transpose(1, 2) if head_first else g
    out = torch.zeros_like(x, dtype=_up(x).dtype)
    B, T = x.shape[:2]
    for b, s, e in _sequence_bounds(B, T, cu_seqlens):
        for c0 in range(s, e, chunk_size):
            c1 = min(c0 + chunk_size, e)
            seg = _up(x[b, c0:c1])
            cs = seg.flip(0).cumsum(0).flip(0) if reverse else seg.cumsum(0)
            out[b, c0:c1] = cs * scale if scale is not None else cs
    out = out.transpose(1, 2) if head_first else out
    return out.to(output_dtype or g.dtype)


def solve_tril(A, cu_seqlens=None, output_dtype=torch.float):
    """(I + A)^-1 per chunk of ``BT`` rows (chunks restart at each sequence start)."""
    B, T, H, BT = A.shape
    ct = _up(A).dtype
    out = torch.zeros_like(A, dtype=ct)
    for b, s, e in _sequence_bounds(B, T, cu_seqlens):
        for c0 in range(s, e, BT):
            n = min(BT, e - c0)
            blk = _up(A[b, c0:c0 + n, :, :n]).permute(1, 0, 2)                    # [H, n, n]
            eye = torch.eye(n, dtype=ct, device=A.device).expand(H, n, n)
            inv = torch.linalg.solve_triangular(eye + blk.tril(-1), eye, upper=False)
            out[b, c0:c0 + n, :, :n] = inv.permute(1, 0, 2)
    return out.to(output_dtype or A.dtype)


# -- fla's own layer code, run on the references ------------------------------------------------

def get_unpad_data(attention_mask):
    lens = attention_mask.sum(-1, dtype=torch.int32)
    indices = torch.nonzero(attention_mask.flatten(), as_tuple=False).flatten()
    cu = F.pad(lens.cumsum(0, dtype=torch.int32), (1, 0))
    return indices, cu, int(lens.max().item())


def index_first_axis(x, indices):
    return x[indices]


def pad_input(hidden_states, indices, batch_size, seq_len):
    out = hidden_states.new_zeros(batch_size * seq_len, *hidden_states.shape[1:])
    out = out.index_put((indices,), hidden_states)
    return out.view(batch_size, seq_len, *hidden_states.shape[1:])


@contextlib.contextmanager
def _fake_fla(ops: ReferenceOps):
    """Temporarily expose the references under the module names fla's layer files import."""
    def mod(name, **attrs):
        m = types.ModuleType(name)
        m.__path__ = []  # a package, so submodules resolve
        m.__dict__.update(attrs)
        return m

    fakes = {
        "fla": mod("fla"),
        "fla.layers": mod("fla.layers"),
        "fla.layers.utils": mod("fla.layers.utils", get_unpad_data=get_unpad_data,
                                index_first_axis=index_first_axis, pad_input=pad_input),
        "fla.modules": mod("fla.modules", FusedRMSNormGated=FusedRMSNormGated, RMSNorm=RMSNorm,
                           ShortConvolution=ShortConvolution),
        "fla.ops": mod("fla.ops"),
        "fla.ops.kda": mod("fla.ops.kda", chunk_kda=ops.chunk_kda, fused_recurrent_kda=ops.fused_recurrent_kda),
        "fla.ops.kda.gate": mod("fla.ops.kda.gate", fused_kda_gate=ops.fused_kda_gate),
        "fla.ops.gated_delta_rule": mod("fla.ops.gated_delta_rule",
                                        chunk_gated_delta_rule=ops.chunk_gated_delta_rule,
                                        fused_recurrent_gated_delta_rule=ops.fused_recurrent_gated_delta_rule),
    }
    saved = {k: sys.modules.get(k) for k in fakes}
    sys.modules.update(fakes)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def load_reference_layer(ops: ReferenceOps, relpath: str, class_name: str):
    with _fake_fla(ops):
        module = load_module(ops.root, relpath, name="_upstream_ref_layer_" + class_name)
    return getattr(module, class_name)


def reference_implementation(root: Path, fp64: bool = False) -> MappingImplementation:
    """The reference behind fla's API paths; ``fp64=True`` makes the oracles compute in float64."""
    ops = ReferenceOps(root, fp64=fp64)
    table = {
        "fla.ops.kda.chunk.chunk_kda": ops.chunk_kda,
        "fla.ops.kda.fused_recurrent.fused_recurrent_kda": ops.fused_recurrent_kda,
        "fla.ops.kda.gate.fused_kda_gate": ops.fused_kda_gate,
        "fla.ops.gated_delta_rule.chunk.chunk_gated_delta_rule": ops.chunk_gated_delta_rule,
        "fla.ops.gated_delta_rule.fused_recurrent.fused_recurrent_gated_delta_rule":
            ops.fused_recurrent_gated_delta_rule,
        "fla.modules.convolution.ShortConvolution": ShortConvolution,
        "fla.modules.convolution.causal_conv1d": causal_conv1d,
        "fla.modules.fused_norm_gate.FusedRMSNormGated": FusedRMSNormGated,
        "fla.modules.layernorm.RMSNorm": RMSNorm,
        "fla.modules.l2norm.l2norm_fwd": l2norm_fwd,
        "fla.modules.l2norm.l2norm_bwd": l2norm_bwd,
        "fla.ops.utils.cumsum.chunk_local_cumsum": chunk_local_cumsum,
        "fla.ops.utils.solve_tril.solve_tril": solve_tril,
        "fla.layers.kda.KimiDeltaAttention":
            factory(lambda: load_reference_layer(ops, "fla/layers/kda.py", "KimiDeltaAttention")),
        "fla.layers.gated_deltanet.GatedDeltaNet":
            factory(lambda: load_reference_layer(ops, "fla/layers/gated_deltanet.py", "GatedDeltaNet")),
    }
    # RWKV-7's closure: fla's DPLR naive code, RWKV-7 op references and layer code
    table.update(rwkv7_reference(root, fp64=fp64).table())
    impl = MappingImplementation("ref64" if fp64 else "ref", table, lazy=True)
    impl.ops = ops  # type: ignore[attr-defined]
    return impl
