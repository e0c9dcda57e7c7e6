"""CPU references of the RWKV-7 closure of fla 0.4.0's API, built from fla's own pure-torch code
(loaded by file path from the fetched upstream tree, never imported as a package):

* the DPLR delta rule: ``fla/ops/generalized_delta_rule/dplr/naive.py`` (``dplr_recurrence``; and
  ``dplr_chunkwise``, a second oracle for chunk-aligned lengths), behind the ``[B, T, H, ...]`` API
  of ``chunk_dplr_delta_rule`` / ``fused_recurrent_dplr_delta_rule`` (varlen by per-sequence runs);
* RWKV-7's ops: ``torch_addcmul_rwkv7``, ``k_update_ref``, ``gate_output_correction_ref`` and
  ``token_shift_ref`` (plus the cache it has no argument for, from its definition);
* modules: ``LoRA`` (``fla/layers/rwkv6.py``) and ``GroupNormRef`` (``fla/modules/layernorm.py``);
* ``fla/layers/rwkv7.py`` itself, executed with these references standing in for its Triton ops.

With ``fp64`` the references compute in float64: their ``.float()`` casts are compiled as
``.double()`` (``load_function(fp64_casts=True)``) and their work tensors take float64 as the
default dtype. The recurrences are token loops, meant for small shapes.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import types
from pathlib import Path
from typing import Dict

import torch

from portaudit.numerics.fla040.apis import (
    DPLR_CHUNK,
    DPLR_FUSED,
    GROUP_NORM,
    LORA,
    RWKV7_ADDCMUL,
    RWKV7_CHUNK,
    RWKV7_FUSED,
    RWKV7_FUSED_MUL,
    RWKV7_GATE,
    RWKV7_K_UPDATE,
    RWKV7_LAYER,
    TOKEN_SHIFT,
)
from portaudit.numerics.fla040.varlen import check_varlen
from portaudit.numerics.upstream_code import load_function



@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """fla's naive code allocates work tensors with the default dtype (fp64 oracles need fp64)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


class DPLRReference:
    """fla's ``dplr_recurrence`` / ``dplr_chunkwise`` behind fla's ``[B, T, H, ...]`` layout."""

    def __init__(self, root: Path, fp64: bool = False):
        fns = load_function(root, "fla/ops/generalized_delta_rule/dplr/naive.py",
                            ["dplr_recurrence", "dplr_chunkwise"], fp64_casts=fp64)
        self.recurrence = fns["dplr_recurrence"]
        self.chunkwise = fns["dplr_chunkwise"]
        self.fp64 = fp64

    def _cast(self, x):
        return x.double() if self.fp64 else x.float()

    def _one(self, q, k, v, a, b, gk, scale, h0, chunk_size=None):
        """Equal-length sequences ``[B, T, H, ...]`` -> (o ``[B, T, H, V]``, S ``[B, H, K, V]``)."""
        K = q.shape[-1]
        # the naive code scales q by K ** -0.5 itself
        hf = [self._cast(x).transpose(1, 2) for x in (q * (scale * K ** 0.5), k, v, a, b, gk)]
        h0 = self._cast(h0) if h0 is not None else None
        with default_dtype(torch.float64 if self.fp64 else torch.get_default_dtype()):
            if chunk_size is None:
                o, S = self.recurrence(*hf, initial_state=h0, output_final_state=True)
            else:
                o, S = self.chunkwise(*hf, initial_state=h0, output_final_state=True, chunk_size=chunk_size)
        return o.transpose(1, 2), S

    def __call__(self, q, k, v, a, b, gk, scale=None, initial_state=None, output_final_state=True,
                 cu_seqlens=None, reverse=False, chunk_size=None):
        """``(o, final_state)`` in the oracle precision (fp64, or fp32 without ``fp64``)."""
        if scale is None:
            scale = q.shape[-1] ** -0.5
        if reverse:
            q, k, v, a, b, gk = (x.flip(1) for x in (q, k, v, a, b, gk))
        if cu_seqlens is None:
            o, S = self._one(q, k, v, a, b, gk, scale, initial_state, chunk_size)
        else:
            bounds = [int(x) for x in cu_seqlens.tolist()]
            outs, states = [], []
            for i, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
                h0 = initial_state[i:i + 1] if initial_state is not None else None
                if e == s:              # an empty sequence keeps its state
                    outs.append(self._cast(v[:, s:e]))
                    states.append(self._cast(h0) if h0 is not None
                                  else self._cast(q.new_zeros(1, q.shape[2], q.shape[-1], v.shape[-1])))
                    continue
                o_i, S_i = self._one(*(x[:, s:e] for x in (q, k, v, a, b, gk)), scale, h0, chunk_size)
                outs.append(o_i)
                states.append(S_i)
            o, S = torch.cat(outs, 1), torch.cat(states, 0)
        if reverse:
            o = o.flip(1)
        return o, (S if output_final_state else None)


class RWKV7Reference:
    """The RWKV-7 closure's ops, modules and layer on fla's references, with fla's signatures."""

    def __init__(self, root: Path, fp64: bool = False):
        self.root = Path(root)
        self.fp64 = fp64
        self.dplr = DPLRReference(root, fp64=fp64)
        self.torch_addcmul_rwkv7 = load_function(root, "fla/ops/rwkv7/fused_addcmul.py", "torch_addcmul_rwkv7")
        self.k_update_ref = load_function(root, "fla/ops/rwkv7/fused_k_update.py", "k_update_ref")
        gate = load_function(root, "fla/ops/rwkv7/gate_output_correction.py",
                             ["gate_output_correction_ref", "gate_output_correction_backward_ref"])
        self.gate_output_correction_ref = gate["gate_output_correction_ref"]
        self.gate_output_correction_backward_ref = gate["gate_output_correction_backward_ref"]
        self.token_shift_ref = load_function(root, "fla/modules/token_shift.py", "token_shift_ref")
        norms = load_function(root, "fla/modules/layernorm.py", ["group_norm_ref", "GroupNormRef"], fp64_casts=fp64)
        self.GroupNormRef = norms["GroupNormRef"]
        self.LoRA = load_function(root, "fla/layers/rwkv6.py", "LoRA", skip_import_roots=("fla",))
        self._layer = None

    def _out(self, o, like):
        return o if self.fp64 else o.to(like.dtype)

    # -- the DPLR delta rule and RWKV-7's ops, fla's signatures ------------------------------------
    def chunk_dplr_delta_rule(self, q, k, v, a, b, gk, scale=None, initial_state=None, output_final_state=False,
                              cu_seqlens=None, head_first=False):
        check_varlen(q, initial_state, cu_seqlens)
        scale = k.shape[-1] ** -0.5 if scale is None else scale
        o, S = self.dplr(q, k, v, a, b, gk, scale=scale, initial_state=initial_state,
                         output_final_state=output_final_state, cu_seqlens=cu_seqlens)
        return self._out(o, q), S

    def fused_recurrent_dplr_delta_rule(self, q, k, v, a, b, gk, scale=None, initial_state=None,
                                        output_final_state=False, reverse=False, cu_seqlens=None):
        check_varlen(q, initial_state, cu_seqlens)
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        o, S = self.dplr(q, k, v, a, b, gk, scale=scale, initial_state=initial_state,
                         output_final_state=output_final_state, cu_seqlens=cu_seqlens, reverse=reverse)
        return self._out(o, v), S

    def chunk_rwkv7(self, r, w, k, v, a, b, scale=1.0, initial_state=None, output_final_state=True,
                    cu_seqlens=None, head_first=False):
        return self.chunk_dplr_delta_rule(r, k, v, a, b, w, scale=scale, initial_state=initial_state,
                                          output_final_state=output_final_state, cu_seqlens=cu_seqlens)

    def fused_recurrent_rwkv7(self, r, w, k, v, a, b, scale=None, initial_state=None, output_final_state=True,
                              cu_seqlens=None, head_first=False):
        return self.fused_recurrent_dplr_delta_rule(r, k, v, a, b, w, scale=scale, initial_state=initial_state,
                                                    output_final_state=output_final_state, cu_seqlens=cu_seqlens)

    def fused_mul_recurrent_rwkv7(self, r, w, k, v, kk, a, scale=1.0, initial_state=None, output_final_state=False,
                                  reverse=False, cu_seqlens=None, head_first=False):
        check_varlen(r, initial_state, cu_seqlens)
        scale = r.shape[-1] ** -0.5 if scale is None else scale
        o, S = self.dplr(r, k, v, -kk, kk * a, w, scale=scale, initial_state=initial_state,
                         output_final_state=output_final_state, cu_seqlens=cu_seqlens, reverse=reverse)
        return self._out(o, v), S

    def fused_addcmul_rwkv7(self, hidden_states, delta, xr, xw, xk, xv, xa, xg=None):
        return self.torch_addcmul_rwkv7(hidden_states, delta, xr, xw, xk, xv, xa, xg)

    def fused_k_rwkv7(self, k, a, ka, cu_seqlens=None):
        return self.k_update_ref(k, a, ka)

    def gate_output_correction(self, o, r, k, r_k, v, g):
        return self.gate_output_correction_ref(o, r, k, r_k, v, g)

    def token_shift(self, x, cu_seqlens=None, cache=None, output_cache=False):
        """``token_shift_ref``, plus the cache it takes no argument for: a sequence's first token
        shifts against its cache row (``cache - x``), and the new cache is its last token (an empty
        sequence keeps its cache)."""
        y = self.token_shift_ref(x, cu_seqlens)
        B, T, D = x.shape
        if cu_seqlens is None:
            bounds = [(b, 0, T) for b in range(B)]
        else:
            c = [int(t) for t in cu_seqlens.tolist()]
            bounds = [(0, s, e) for s, e in zip(c[:-1], c[1:])]
        if cache is not None:
            first = torch.zeros_like(y)
            for n, (b, s, e) in enumerate(bounds):
                if e > s:
                    first[b, s] = cache[n]
            y = y + first
        if not output_cache:
            return y
        rows = []
        for n, (b, s, e) in enumerate(bounds):
            rows.append(x[b, e - 1] if e > s else (cache[n] if cache is not None else x.new_zeros(D)))
        return y, torch.stack(rows, 0)

    def l2_norm(self, x, eps=1e-6, output_dtype=None):
        xf = x if x.dtype == torch.float64 else x.float()
        return (xf * torch.rsqrt(xf.square().sum(-1, keepdim=True) + eps)).to(output_dtype or x.dtype)

    # -- fla's layer code on these references ----------------------------------------------------
    @contextlib.contextmanager
    def _fake_fla(self):
        """Expose the references under the module names ``fla/layers/rwkv7.py`` imports."""
        def mod(name, **attrs):
            m = types.ModuleType(name)
            m.__path__ = []
            m.__dict__.update(attrs)
            return m

        fakes = {
            "fla": mod("fla"),
            "fla.layers": mod("fla.layers"),
            "fla.layers.rwkv6": mod("fla.layers.rwkv6", LoRA=self.LoRA),
            "fla.modules": mod("fla.modules", GroupNorm=self.GroupNormRef),
            "fla.modules.l2norm": mod("fla.modules.l2norm", l2_norm=self.l2_norm),
            "fla.modules.token_shift": mod("fla.modules.token_shift", token_shift=self.token_shift),
            "fla.ops": mod("fla.ops"),
            "fla.ops.rwkv7": mod("fla.ops.rwkv7", chunk_rwkv7=self.chunk_rwkv7,
                                 fused_mul_recurrent_rwkv7=self.fused_mul_recurrent_rwkv7),
            "fla.ops.rwkv7.fused_addcmul": mod("fla.ops.rwkv7.fused_addcmul",
                                               fused_addcmul_rwkv7=self.fused_addcmul_rwkv7),
            "fla.ops.rwkv7.fused_k_update": mod("fla.ops.rwkv7.fused_k_update", fused_k_rwkv7=self.fused_k_rwkv7),
            "fla.ops.rwkv7.gate_output_correction": mod("fla.ops.rwkv7.gate_output_correction",
                                                        gate_output_correction=self.gate_output_correction),
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

    def layer_class(self):
        """fla's ``RWKV7Attention``, executed from ``fla/layers/rwkv7.py`` on these references."""
        if self._layer is None:
            path = self.root / "fla/layers/rwkv7.py"
            name = "_upstream_ref_rwkv7_layer" + ("_fp64" if self.fp64 else "")
            with self._fake_fla():
                spec = importlib.util.spec_from_file_location(name, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                spec.loader.exec_module(module)
            self._layer = module.RWKV7Attention
        return self._layer

    def table(self) -> Dict[str, object]:
        """API path -> reference object, for ``reference_implementation``."""
        from portaudit.numerics.impl import factory
        return {
            DPLR_CHUNK: self.chunk_dplr_delta_rule,
            DPLR_FUSED: self.fused_recurrent_dplr_delta_rule,
            RWKV7_CHUNK: self.chunk_rwkv7,
            RWKV7_FUSED: self.fused_recurrent_rwkv7,
            RWKV7_FUSED_MUL: self.fused_mul_recurrent_rwkv7,
            RWKV7_ADDCMUL: self.fused_addcmul_rwkv7,
            RWKV7_K_UPDATE: self.fused_k_rwkv7,
            RWKV7_GATE: self.gate_output_correction,
            TOKEN_SHIFT: self.token_shift,
            GROUP_NORM: self.GroupNormRef,
            LORA: self.LoRA,
            RWKV7_LAYER: factory(lambda: self.layer_class()),
        }


def rwkv7_reference(root: Path, fp64: bool = False) -> RWKV7Reference:
    return RWKV7Reference(root, fp64=fp64)
