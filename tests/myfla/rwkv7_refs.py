"""Oracles for the DPLR / RWKV-7 tests, all built from fla 0.4.0's own pure-torch code, loaded by
file path from the fetched upstream tree (never imported as a package):

* ``fla/ops/generalized_delta_rule/dplr/naive.py`` (``dplr_recurrence``, ``dplr_chunkwise``);
* ``fla/ops/rwkv7``'s references ``torch_addcmul_rwkv7``, ``k_update_ref``,
  ``gate_output_correction_ref`` and ``fla/modules/token_shift.py``'s ``token_shift_ref``;
* ``fla/layers/rwkv6.py``'s ``LoRA`` and ``fla/modules/layernorm.py``'s ``GroupNormRef``;
* ``fla/layers/rwkv7.py`` itself, executed with those references standing in for its Triton ops.

fp64 mode: fla's references cast with ``.float()`` / ``torch.float``; for fp64 oracles the loaded
text is compiled with those casts read as float64 (an AST rewrite of the upstream text at load
time, nothing copied into this repository).
"""

from __future__ import annotations

import ast
import contextlib
import sys
import types
from pathlib import Path
from typing import Dict, Iterable, Optional

import torch
import torch.nn.functional as F

_SKIP_ROOTS = {"triton", "fla"}


class _Fp64Casts(ast.NodeTransformer):
    """``x.float()`` -> ``x.double()``, ``torch.float`` -> ``torch.float64``."""

    def visit_Attribute(self, node):
        self.generic_visit(node)
        if node.attr == "float":
            if isinstance(node.value, ast.Name) and node.value.id == "torch":
                node.attr = "float64"
            else:
                node.attr = "double"
        return node


def load_defs(root: Path, relpath: str, names: Iterable[str], fp64: bool = False,
              extra_globals: Optional[dict] = None) -> Dict[str, object]:
    """Execute the named top-level definitions of an upstream file (plus its importable imports,
    without decorators), optionally with fp64 casts."""
    path = Path(root) / relpath
    tree = ast.parse(path.read_text(), filename=str(path))
    wanted = list(names)
    namespace: dict = {"__name__": "_fla_ref_" + relpath.replace("/", "_"), "__file__": str(path)}
    if extra_globals:
        namespace.update(extra_globals)
    body = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            roots = [a.name.split(".")[0] for a in node.names] if isinstance(node, ast.Import) \
                else [(node.module or "").split(".")[0]]
            if getattr(node, "level", 0) == 0 and not set(roots) & _SKIP_ROOTS:
                body.append(node)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in wanted:
            node.decorator_list = []
            body.append(node)
    module = ast.Module(body=body, type_ignores=[])
    if fp64:
        module = _Fp64Casts().visit(module)
    ast.fix_missing_locations(module)
    exec(compile(module, str(path), "exec"), namespace)
    missing = [n for n in wanted if n not in namespace]
    assert not missing, f"{path} defines no {missing}"
    return {n: namespace[n] for n in wanted}


@contextlib.contextmanager
def _default_dtype(dtype):
    """fla's naive code allocates its work tensors with the default dtype (fp64 oracles need fp64)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


# ---- the DPLR delta rule ----------------------------------------------------------------------

class DPLRReference:
    """fla's ``dplr_recurrence`` / ``dplr_chunkwise`` behind fla's ``[B, T, H, ...]`` API."""

    def __init__(self, root: Path, fp64: bool = True):
        fns = load_defs(root, "fla/ops/generalized_delta_rule/dplr/naive.py",
                        ["dplr_recurrence", "dplr_chunkwise"], fp64=fp64)
        self.recurrence = fns["dplr_recurrence"]
        self.chunkwise = fns["dplr_chunkwise"]
        self.fp64 = fp64

    def _cast(self, x):
        return x.double() if self.fp64 else x.float()

    def _one(self, q, k, v, a, b, gk, scale, h0, chunk_size=None):
        """One batch of equal-length sequences, ``[B, T, H, ...]``."""
        K = q.shape[-1]
        # the naive code scales q by K ** -0.5 itself
        hf = [self._cast(x).transpose(1, 2) for x in (q * (scale * K ** 0.5), k, v, a, b, gk)]
        h0 = self._cast(h0) if h0 is not None else None
        with _default_dtype(torch.float64 if self.fp64 else torch.get_default_dtype()):
            if chunk_size is None:
                o, S = self.recurrence(*hf, initial_state=h0, output_final_state=True)
            else:
                o, S = self.chunkwise(*hf, initial_state=h0, output_final_state=True, chunk_size=chunk_size)
        return o.transpose(1, 2), S

    def __call__(self, q, k, v, a, b, gk, scale=None, initial_state=None, output_final_state=True,
                 cu_seqlens=None, reverse=False, chunk_size=None):
        """``(o, final_state)`` in fp64 (fp32 without ``fp64``)."""
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
                if e == s:
                    outs.append(self._cast(v[:, s:e]))
                    K, V = q.shape[-1], v.shape[-1]
                    states.append(self._cast(h0) if h0 is not None
                                  else self._cast(q.new_zeros(1, q.shape[2], K, V)))
                    continue
                o_i, S_i = self._one(*(x[:, s:e] for x in (q, k, v, a, b, gk)), scale, h0, chunk_size)
                outs.append(o_i)
                states.append(S_i)
            o, S = torch.cat(outs, 1), torch.cat(states, 0)
        if reverse:
            o = o.flip(1)
        return o, (S if output_final_state else None)


# ---- the RWKV-7 module references ---------------------------------------------------------------

class RWKV7References:
    """fla's own torch references of the RWKV-7 helper ops and modules."""

    def __init__(self, root: Path, fp64: bool = True):
        self.root = Path(root)
        self.fp64 = fp64
        self.dplr = DPLRReference(root, fp64=fp64)
        self.torch_addcmul_rwkv7 = load_defs(root, "fla/ops/rwkv7/fused_addcmul.py",
                                             ["torch_addcmul_rwkv7"])["torch_addcmul_rwkv7"]
        self.k_update_ref = load_defs(root, "fla/ops/rwkv7/fused_k_update.py", ["k_update_ref"])["k_update_ref"]
        got = load_defs(root, "fla/ops/rwkv7/gate_output_correction.py",
                        ["gate_output_correction_ref", "gate_output_correction_backward_ref"])
        self.gate_output_correction_ref = got["gate_output_correction_ref"]
        self.gate_output_correction_backward_ref = got["gate_output_correction_backward_ref"]
        self.token_shift_ref = load_defs(root, "fla/modules/token_shift.py", ["token_shift_ref"])["token_shift_ref"]
        norms = load_defs(root, "fla/modules/layernorm.py", ["group_norm_ref", "GroupNormRef"], fp64=fp64)
        self.GroupNormRef = norms["GroupNormRef"]
        self.LoRA = load_defs(root, "fla/layers/rwkv6.py", ["LoRA"])["LoRA"]

    # -- ops with fla's signatures, on the references -----------------------------------------
    def token_shift(self, x, cu_seqlens=None, cache=None, output_cache=False):
        """``token_shift_ref`` plus the cache it has no argument for: the first token of every
        sequence shifts against the cache (``delta = cache - x``) and the new cache is the last token."""
        y = self.token_shift_ref(x, cu_seqlens)
        B, T, D = x.shape
        if cu_seqlens is None:
            bounds = [(b, 0, T) for b in range(B)]
        else:
            c = [int(t) for t in cu_seqlens.tolist()]
            bounds = [(0, s, e) for s, e in zip(c[:-1], c[1:])]
        if cache is not None:
            y = y.clone()
            for n, (b, s, e) in enumerate(bounds):
                if e > s:
                    y[b, s] = y[b, s] + cache[n]
        if not output_cache:
            return y
        new = []
        for n, (b, s, e) in enumerate(bounds):
            if e > s:
                new.append(x[b, e - 1])
            else:
                new.append(cache[n] if cache is not None else x.new_zeros(D))
        return y, torch.stack(new, 0)

    def l2_norm(self, x, eps=1e-6, output_dtype=None):
        xf = x.double() if x.dtype == torch.float64 else x.float()
        return (xf * torch.rsqrt(xf.square().sum(-1, keepdim=True) + eps)).to(output_dtype or x.dtype)

    def chunk_rwkv7(self, r, w, k, v, a, b, scale=1.0, initial_state=None, output_final_state=True,
                    cu_seqlens=None, head_first=False):
        o, S = self.dplr(r, k, v, a, b, w, scale=scale, initial_state=initial_state,
                         output_final_state=output_final_state, cu_seqlens=cu_seqlens)
        return o.to(r.dtype), (S.float() if S is not None and not self.fp64 else S)

    def fused_mul_recurrent_rwkv7(self, r, w, k, v, kk, a, scale=1.0, initial_state=None,
                                  output_final_state=False, reverse=False, cu_seqlens=None, head_first=False):
        o, S = self.dplr(r, k, v, -kk, kk * a, w, scale=scale, initial_state=initial_state,
                         output_final_state=output_final_state, cu_seqlens=cu_seqlens, reverse=reverse)
        return o.to(v.dtype), S

    # -- fla's layer, on the references ---------------------------------------------------------
    @contextlib.contextmanager
    def _fake_fla(self):
        def mod(name, **attrs):
            m = types.ModuleType(name)
            m.__path__ = []
            m.__dict__.update(attrs)
            return m

        refs = self
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
                                               fused_addcmul_rwkv7=self.torch_addcmul_rwkv7),
            "fla.ops.rwkv7.fused_k_update": mod("fla.ops.rwkv7.fused_k_update",
                                                fused_k_rwkv7=lambda k, a, ka, cu_seqlens=None:
                                                refs.k_update_ref(k, a, ka)),
            "fla.ops.rwkv7.gate_output_correction": mod("fla.ops.rwkv7.gate_output_correction",
                                                        gate_output_correction=self.gate_output_correction_ref),
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
        """fla's ``RWKV7Attention`` class, executed from ``fla/layers/rwkv7.py`` on the references."""
        import importlib.util
        path = self.root / "fla/layers/rwkv7.py"
        name = "_fla_ref_rwkv7_layer" + ("_fp64" if self.fp64 else "")
        with self._fake_fla():
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        return module.RWKV7Attention


def normalize(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, p=2, dim=-1)
