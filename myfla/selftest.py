"""Self-check of a myfla copy on this machine: ``python -m myfla.selftest`` (or ``python -m unittest
myfla.selftest``). Port-only; fla has no counterpart.

It needs only torch (and einops, which myfla imports), takes a few seconds on a CPU and checks the
invariants the port rests on, each against an oracle that does not share its code path:

- the chunked ops against the token-by-token recurrence of ``myfla.ops.kda.naive`` (a mirror of fla's
  ``naive.py``) evaluated in float64, and against the fused_recurrent ops in float32;
- variable-length batches (``cu_seqlens``) against each sequence run alone;
- a run resumed from its final state against one full run;
- ``torch.autograd.gradcheck`` in float64 of every ``torch.autograd.Function`` in myfla (the fused
  recurrent op of fla 0.4.0 has no backward: it must raise fla's ``NotImplementedError``; ``L2Wrap``'s
  backward is by design not its forward's derivative: it must equal autograd of its penalty);
- both layers: prefill then token-by-token decoding with the Cache against one full forward.

It prints one row per check (name, error, tolerance, status) and exits 0 when every check passes,
1 otherwise. ``--quiet`` prints only failures and the summary line.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import sys
import time
import types
import unittest
import warnings
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

import myfla
from myfla.layers import GatedDeltaNet, KimiDeltaAttention
from myfla.layers.utils import index_first_axis, index_put_first_axis
from myfla.models.utils import Cache
from myfla.modules import activations
from myfla.modules.convolution import causal_conv1d
from myfla.modules.fused_cross_entropy import cross_entropy_loss
from myfla.modules.fused_linear_cross_entropy import fused_linear_cross_entropy_loss
from myfla.modules.fused_norm_gate import rms_norm_gated, rms_norm_swish_gate_linear
from myfla.modules.l2warp import l2_warp
from myfla.modules.l2norm import l2norm
from myfla.modules.layernorm import layer_norm, layer_norm_linear
from myfla.modules.rotary import rotary_embedding
from myfla.modules.token_shift import token_shift
from myfla.ops.gated_delta_rule import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule
from myfla.ops.generalized_delta_rule import chunk_dplr_delta_rule, fused_recurrent_dplr_delta_rule
from myfla.ops.gla import chunk_gla
from myfla.ops.kda import chunk_kda, fused_recurrent_kda
from myfla.ops.kda import naive as kda_naive
from myfla.ops.kda.gate import fused_kda_gate
from myfla.ops.rwkv7.fused_addcmul import Rwkv7FusedAddcmul
from myfla.ops.rwkv7.fused_k_update import KUpdateFunction
from myfla.ops.rwkv7.gate_output_correction import GateOutputCorrection
from myfla.ops.utils.pack import pack_sequence, unpack_sequence
from myfla.ops.utils.pooling import mean_pooling

FP64_TOL = 1e-10     # max |difference| between two float64 evaluations of the same math
FP32_TOL = 2e-5      # RMS error ratio between two float32 evaluations (fla's test tolerance is 1e-3..5e-3)
DECODE_TOL = 1e-6    # RMS error ratio of float64 layers whose decoding steps carry a float32 state


class Result(NamedTuple):
    group: str
    name: str
    error: Optional[float]     # None where the check is not a distance (gradcheck, raised errors)
    tolerance: Optional[float]
    passed: bool
    seconds: float
    message: str = ""


class _Float64Torch(types.ModuleType):
    """``torch`` as seen by a reference module whose ``.to(torch.float)`` should keep float64."""

    def __getattr__(self, name):
        return torch.float64 if name == "float" else getattr(torch, name)


def _naive_recurrent_fp64() -> Callable:
    """A second, private instance of ``myfla.ops.kda.naive`` whose arithmetic stays in float64
    (as loaded it computes in float32, like fla's)."""
    spec = importlib.util.spec_from_file_location("_myfla_selftest_naive_fp64", kda_naive.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.torch = _Float64Torch("torch")
    return module.naive_recurrent_kda


def _max_abs(ref: torch.Tensor, x: torch.Tensor) -> float:
    return (ref.detach().double() - x.detach().double()).abs().max().item()


def _rms_ratio(ref: torch.Tensor, x: torch.Tensor) -> float:
    ref, x = ref.detach().double(), x.detach().double()
    return ((x - ref).square().mean().sqrt() / (ref.square().mean().sqrt() + 1e-8)).item()


def _inputs(B: int, T: int, H: int, K: int, V: int, dtype: torch.dtype, scalar_gate: bool = False,
            N: Optional[int] = None, seed: int = 0) -> Dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    g_shape = (B, T, H) if scalar_gate else (B, T, H, K)
    out = dict(q=randn(B, T, H, K), k=F.normalize(randn(B, T, H, K), dim=-1), v=randn(B, T, H, V),
               g=F.logsigmoid(randn(*g_shape)) / 4, beta=torch.rand(B, T, H, generator=gen, dtype=torch.float64),
               initial_state=randn(N if N is not None else B, H, K, V))
    return {k: t.to(dtype) for k, t in out.items()}


def _kda_gate(x: Dict[str, torch.Tensor]) -> torch.Tensor:
    """The per-key-channel gate the naive KDA recurrence takes (GDN's scalar gate repeated over K)."""
    g = x["g"]
    return g if g.dim() == 4 else g.unsqueeze(-1).expand_as(x["k"])


# ----------------------------------------------------------------------------------------- checks
Check = Callable[[], Tuple[Optional[float], Optional[float]]]
CHECKS: List[Tuple[str, str, Check]] = []


def check(group: str, name: str) -> Callable[[Check], Check]:
    def register(fn: Check) -> Check:
        CHECKS.append((group, name, fn))
        return fn
    return register


CHUNK_OPS = (("chunk_kda", chunk_kda, fused_recurrent_kda, False),
             ("chunk_gated_delta_rule", chunk_gated_delta_rule, fused_recurrent_gated_delta_rule, True))


def _register_op_checks(label: str, chunk_fn: Callable, recurrent_fn: Callable, scalar_gate: bool) -> None:
    @check("ops", f"{label} == naive recurrence (fp64, T=100 over two chunks)")
    def _vs_naive():
        x = _inputs(2, 100, 2, 16, 16, torch.float64, scalar_gate)
        o, ht = chunk_fn(**x, output_final_state=True)
        ref_o, ref_ht = _naive_recurrent_fp64()(x["q"], x["k"], x["v"], _kda_gate(x), x["beta"],
                                                initial_state=x["initial_state"], output_final_state=True)
        return max(_max_abs(ref_o, o), _max_abs(ref_ht, ht)), FP64_TOL

    @check("ops", f"{label} == fused_recurrent (fp32)")
    def _vs_recurrent():
        x = _inputs(2, 100, 2, 32, 32, torch.float32, scalar_gate)
        o, ht = chunk_fn(**x, output_final_state=True)
        ref_o, ref_ht = recurrent_fn(**x, output_final_state=True)
        return max(_rms_ratio(ref_o, o), _rms_ratio(ref_ht, ht)), FP32_TOL

    @check("ops", f"{label} varlen == per-sequence (fp64, lengths 37, 1, 92)")
    def _varlen():
        cu = torch.tensor([0, 37, 38, 130], dtype=torch.long)
        x = _inputs(1, 130, 2, 16, 16, torch.float64, scalar_gate, N=3)
        o, ht = chunk_fn(**x, output_final_state=True, cu_seqlens=cu)
        err = 0.0
        for i, (s, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
            part = {k: (t[i:i + 1] if k == "initial_state" else t[:, s:e]) for k, t in x.items()}
            o_i, ht_i = chunk_fn(**part, output_final_state=True)
            err = max(err, _max_abs(o_i, o[:, s:e]), _max_abs(ht_i, ht[i:i + 1]))
        return err, FP64_TOL

    @check("ops", f"{label} resumed from its state == full run (fp64, splits at 45, 46)")
    def _resume():
        x = _inputs(2, 100, 2, 16, 16, torch.float64, scalar_gate)
        o, ht = chunk_fn(**x, output_final_state=True)
        state, outs = x["initial_state"], []
        for s, e in ((0, 45), (45, 46), (46, 100)):     # a mid-chunk split and a length-1 piece
            part = {k: t[:, s:e] for k, t in x.items() if k != "initial_state"}
            o_p, state = chunk_fn(**part, initial_state=state, output_final_state=True)
            outs.append(o_p)
        return max(_max_abs(o, torch.cat(outs, 1)), _max_abs(ht, state)), FP64_TOL


for _args in CHUNK_OPS:
    _register_op_checks(*_args)


def _gradcheck(fn: Callable, inputs: Sequence[torch.Tensor]) -> Tuple[None, None]:
    """float64 ``gradcheck``; raises with torch's message when analytic and numeric gradients differ."""
    torch.autograd.gradcheck(fn, tuple(inputs), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)
    return None, None


def _leaves(*shapes: Sequence[int], seed: int = 0) -> List[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=gen, dtype=torch.float64).requires_grad_() for s in shapes]


# autograd.Function -> the gradcheck of the public function that applies it (every Function of myfla
# has one; tests/myfla/test_selftest.py fails when a new Function has none).
GRADCHECKS: Dict[str, Check] = {}


def gradcheck_of(*function_names: str, label: Optional[str] = None) -> Callable[[Check], Check]:
    def register(fn: Check) -> Check:
        for name in function_names:
            GRADCHECKS[name] = fn
        check("gradcheck", label or ", ".join(function_names))(fn)
        return fn
    return register


@gradcheck_of("ChunkKDAFunction")
def _gc_chunk_kda():
    x = _inputs(1, 70, 1, 4, 4, torch.float64)
    leaves = [t.requires_grad_() for t in x.values()]
    return _gradcheck(lambda q, k, v, g, b, h0: chunk_kda(q, k, v, g, b, initial_state=h0, output_final_state=True),
                      leaves)


@gradcheck_of("ChunkGatedDeltaRuleFunction")
def _gc_chunk_gdn():
    x = _inputs(1, 70, 1, 4, 4, torch.float64, scalar_gate=True)
    leaves = [t.requires_grad_() for t in x.values()]
    return _gradcheck(lambda q, k, v, g, b, h0: chunk_gated_delta_rule(
        q, k, v, g, b, initial_state=h0, output_final_state=True, use_qk_l2norm_in_kernel=True), leaves)


@gradcheck_of("KDAGateFunction")
def _gc_kda_gate():
    g, A, bias = _leaves((2, 5, 8), (2,), (8,))
    return _gradcheck(lambda g, A, b: fused_kda_gate(g, A, 4, g_bias=b), [g, A, bias])


@gradcheck_of("L2NormFunction")
def _gc_l2norm():
    return _gradcheck(l2norm, _leaves((3, 5, 8)))


@gradcheck_of("CausalConv1dFunction")
def _gc_conv():
    x, w, b, h0 = _leaves((1, 9, 6), (6, 4), (6,), (2, 6, 4))
    cu = torch.tensor([0, 4, 9])

    def conv(x, w, b, h0):
        y, ht = causal_conv1d(x, w, b, initial_state=h0, output_final_state=True, activation='silu', cu_seqlens=cu)
        # final-state column 0 is padding that no later step reads: fla's backward drops its gradient
        return y, ht[..., 1:]
    return _gradcheck(conv, [x, w, b, h0])


@gradcheck_of("LayerNormFunction")
def _gc_layer_norm():
    x, w, b, r = _leaves((2, 3, 8), (8,), (8,), (2, 3, 8))
    return _gradcheck(lambda x, w, b, r: layer_norm(x, w, b, residual=r, prenorm=True), [x, w, b, r])


@gradcheck_of("LayerNormLinearFunction")
def _gc_layer_norm_linear():
    x, nw, nb, lw, lb = _leaves((2, 3, 8), (8,), (8,), (5, 8), (5,))
    return _gradcheck(layer_norm_linear, [x, nw, nb, lw, lb])


@gradcheck_of("LayerNormGatedFunction")
def _gc_norm_gated():
    x, g, w = _leaves((2, 3, 8), (2, 3, 8), (8,))
    return _gradcheck(lambda x, g, w: rms_norm_gated(x, g, w, None, activation='swish'), [x, g, w])


@gradcheck_of("IndexFirstAxis", "IndexPutFirstAxis")
def _gc_index():
    x, = _leaves((6, 3))
    idx = torch.tensor([4, 0, 2])
    return _gradcheck(lambda x: index_put_first_axis(index_first_axis(x, idx) * 2, idx, 6), [x])


@gradcheck_of("SigmoidFunction", "LogSigmoidFunction", "SwishFunction", "GeLUFunction", "FastGeLUFunction",
              "SquaredReLUFunction", "SwiGLUFunction", "SwiGLULinearFunction",
              label="activations: Sigmoid, LogSigmoid, Swish, (Fast)GeLU, SquaredReLU, SwiGLU(Linear)")
def _gc_activations():
    x, y, bias = _leaves((3, 8), (3, 8), (8,))
    w, b = _leaves((5, 8), (5,), seed=1)
    _gradcheck(activations.SigmoidFunction.apply, [x])
    _gradcheck(lambda x: activations.logsigmoid(x, 2.0), [x])
    _gradcheck(activations.SwishFunction.apply, [x])
    _gradcheck(activations.GeLUFunction.apply, [x, bias])
    _gradcheck(activations.FastGeLUFunction.apply, [x])
    # relu^2 is not differentiable at 0: inputs kept away from it
    _gradcheck(activations.SquaredReLUFunction.apply, [(x.detach() + 0.05 * x.detach().sign()).requires_grad_()])
    _gradcheck(activations.swiglu, [x, y])
    return _gradcheck(activations.swiglu_linear, [x, y, w, b])


@gradcheck_of("LayerNormGatedLinearFunction")
def _gc_norm_gated_linear():
    x, g, w, lw, lb, r = _leaves((2, 3, 8), (2, 3, 8), (8,), (5, 8), (5,), (2, 3, 8))
    return _gradcheck(lambda x, g, w, lw, lb, r: rms_norm_swish_gate_linear(x, g, w, None, lw, lb, residual=r),
                      [x, g, w, lw, lb, r])


@gradcheck_of("ChunkGLAFunction")
def _gc_chunk_gla():
    q, k, v, g_raw, h0 = _leaves((1, 70, 1, 4), (1, 70, 1, 4), (1, 70, 1, 4), (1, 70, 1, 4), (1, 1, 4, 4))
    g = F.logsigmoid(g_raw.detach()).requires_grad_()     # log forget gates, as GLA's layer feeds them
    return _gradcheck(lambda q, k, v, g, h0: chunk_gla(q, k, v, g, initial_state=h0, output_final_state=True),
                      [q, k, v, g, h0])


@gradcheck_of("RotaryEmbeddingFunction")
def _gc_rotary():
    x, = _leaves((1, 5, 2, 6))
    cos, sin = (t.detach() for t in _leaves((12, 2), (12, 2), seed=1))   # rotary on 4 of 6 channels
    cu = torch.tensor([0, 2, 5])
    return _gradcheck(lambda x: rotary_embedding(x, cos, sin, False, False, torch.tensor([3, 1]), cu), [x])


@gradcheck_of("PackSequenceFunction", "UnpackSequenceFunction")
def _gc_pack():
    x, = _leaves((3, 5, 2, 2))
    cu = torch.tensor([0, 2, 7, 10])
    _gradcheck(lambda x: pack_sequence(x, cu, 'left'), [x])
    return _gradcheck(lambda y: unpack_sequence(y, cu, 'right'), [pack_sequence(x, cu, 'right').detach().requires_grad_()])


@gradcheck_of("MeanPoolingFunction")
def _gc_mean_pooling():
    x, = _leaves((1, 11, 2, 3))
    return _gradcheck(lambda x: mean_pooling(x, 4, torch.tensor([0, 5, 11])), [x])


@gradcheck_of("CrossEntropyLossFunction")
def _gc_cross_entropy():
    logits, = _leaves((6, 9))
    target = torch.tensor([1, 8, -100, 0, 4, 4])
    return _gradcheck(lambda z: cross_entropy_loss(z, target, label_smoothing=0.1, logit_scale=0.7,
                                                   lse_square_scale=1e-2)[0], [logits])


@gradcheck_of("FusedLinearCrossEntropyFunction")
def _gc_fused_linear_cross_entropy():
    x, w, b = _leaves((7, 5), (9, 5), (9,))
    target = torch.tensor([1, 8, -100, 0, 4, 4, 2])
    return _gradcheck(lambda x, w, b: fused_linear_cross_entropy_loss(x, target, w, b, label_smoothing=0.1,
                                                                      num_chunks=3), [x, w, b])


@gradcheck_of("L2Wrap")
def _l2_warp_gradient():
    """L2Wrap's backward is, by design, not the derivative of its forward (the identity on the loss):
    it adds the gradient of ``factor / 2 * max^2`` per row, ``factor = l2_penalty_factor / (B * T)``.
    Checked against autograd of that penalty (float64)."""
    logits, = _leaves((2, 3, 7))
    grad, = torch.autograd.grad(l2_warp((logits * 0.5).sum(), logits, 1e-2), logits)
    penalty = 1e-2 / (2 * 3) / 2 * logits.max(-1).values.pow(2).sum()
    expected, = torch.autograd.grad((logits * 0.5).sum() + penalty, logits)
    return _max_abs(grad, expected), FP64_TOL


def _dplr_leaves(T: int, H: int, K: int, V: int) -> List[torch.Tensor]:
    """q, k, v, a = -kk, b = kk * r (kk unit rows: a contracting transition, as RWKV-7 feeds it), gk, h0."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, T, H, d, generator=gen, dtype=torch.float64) for d in (K, K, V))
    kk = F.normalize(torch.randn(1, T, H, K, generator=gen, dtype=torch.float64), dim=-1)
    a, b = -kk, kk * torch.rand(1, T, H, K, generator=gen, dtype=torch.float64)
    gk = F.logsigmoid(torch.randn(1, T, H, K, generator=gen, dtype=torch.float64))
    h0 = torch.randn(1, H, K, V, generator=gen, dtype=torch.float64)
    return [x.requires_grad_() for x in (q, k, v, a, b, gk, h0)]


@gradcheck_of("ChunkDPLRDeltaRuleFunction")
def _gc_chunk_dplr():
    return _gradcheck(lambda q, k, v, a, b, gk, h0: chunk_dplr_delta_rule(
        q, k, v, a, b, gk, scale=0.5, initial_state=h0, output_final_state=True), _dplr_leaves(70, 1, 4, 4))


@gradcheck_of("Rwkv7FusedAddcmul", "KUpdateFunction", "GateOutputCorrection", "TokenShift",
              label="RWKV-7: Rwkv7FusedAddcmul, KUpdateFunction, GateOutputCorrection, TokenShift")
def _gc_rwkv7_helpers():
    h, delta = _leaves((2, 4, 6), (2, 4, 6))
    mus = _leaves(*[(1, 1, 6)] * 6, seed=1)
    _gradcheck(lambda h, d, *ms: Rwkv7FusedAddcmul.apply(h, d, *ms), [h, delta] + mus)
    k, ka = _leaves((2, 3, 5), (5,), seed=2)
    a = torch.rand(2, 3, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64).requires_grad_()
    _gradcheck(lambda k, a, ka: KUpdateFunction.apply(k, a, ka), [k, a, ka])
    _gradcheck(GateOutputCorrection.apply, _leaves((2, 3, 8), (2, 3, 2, 4), (2, 3, 2, 4), (2, 4), (2, 3, 2, 4),
                                                   (2, 3, 8), seed=4))
    x, cache = _leaves((1, 9, 5), (4, 5), seed=5)
    cu = torch.tensor([0, 1, 4, 4, 9])
    return _gradcheck(lambda x, c: token_shift(x, cu, cache=c, output_cache=True), [x, cache])


@gradcheck_of("FusedRecurrentDPLRDeltaRuleFunction")
def _fused_recurrent_dplr_has_no_backward():
    """fla 0.4.0's fused_recurrent_dplr_delta_rule is inference-only; the port raises fla's error."""
    q, k, v, a, b, gk, h0 = _dplr_leaves(3, 1, 4, 4)
    o, _ = fused_recurrent_dplr_delta_rule(q, k, v, a, b, gk, initial_state=h0)
    try:
        o.sum().backward()
    except NotImplementedError:
        return None, None
    raise AssertionError("fused_recurrent_dplr_delta_rule has a backward; fla 0.4.0's raises NotImplementedError")


@gradcheck_of("FusedRecurrentFunction")
def _fused_recurrent_has_no_backward():
    """fla 0.4.0's fused_recurrent_gated_delta_rule has no backward; the port raises fla's error."""
    x = _inputs(1, 3, 1, 4, 4, torch.float64, scalar_gate=True)
    x["q"].requires_grad_()
    o, _ = fused_recurrent_gated_delta_rule(**x)
    try:
        o.sum().backward()
    except NotImplementedError:
        return None, None
    raise AssertionError("fused_recurrent_gated_delta_rule has a backward; fla 0.4.0's raises NotImplementedError")


def _layer(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cls = GatedDeltaNet if kind == "GatedDeltaNet" else KimiDeltaAttention
        layer = cls(hidden_size=32, head_dim=16, num_heads=2, layer_idx=0)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if "bias" in name:
                p.normal_(0, 0.5)
    return layer.double().eval()


def _register_layer_check(kind: str) -> None:
    @check("layers", f"{kind}: prefill 70 + decode 4 == full forward (fp64 inputs)")
    def _prefill_decode():
        layer = _layer(kind)
        x = torch.randn(2, 74, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        with torch.no_grad():
            full, _, _ = layer(x)
            cache = Cache()
            out, _, cache = layer(x[:, :70], past_key_values=cache, use_cache=True)   # the chunk path
            outs = [out]
            for t in range(70, 74):                                                   # the recurrent path
                out, _, cache = layer(x[:, t:t + 1], past_key_values=cache, use_cache=True)
                outs.append(out)
        # decoding runs fused_recurrent, which keeps its state in fp32 as fla's kernel does
        return _rms_ratio(full, torch.cat(outs, 1)), DECODE_TOL


for _kind in ("KimiDeltaAttention", "GatedDeltaNet"):
    _register_layer_check(_kind)


# ------------------------------------------------------------------------------------------ runner
def run_check(group: str, name: str, fn: Check) -> Result:
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            error, tol = fn()
    except Exception as exc:  # a failing check is a row of the table, not a crash of the self-test
        message = " ".join(f"{type(exc).__name__}: {exc}".split())
        return Result(group, name, None, None, False, time.perf_counter() - start, message[:300])
    passed = error is None or error <= tol
    return Result(group, name, error, tol, passed, time.perf_counter() - start)


def run_all(select: Optional[str] = None) -> List[Result]:
    torch.manual_seed(0)
    return [run_check(g, n, fn) for g, n, fn in CHECKS if select is None or select in f"{g} {n}"]


def _fmt(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1e}"


def format_table(results: Sequence[Result], quiet: bool = False) -> str:
    rows = [(r.group, r.name, _fmt(r.error), _fmt(r.tolerance), "PASS" if r.passed else "FAIL", f"{r.seconds:.2f}")
            for r in results if not (quiet and r.passed)]
    header = ("group", "check", "error", "tolerance", "status", "s")
    widths = [max(len(row[i]) for row in rows + [header]) for i in range(len(header))]
    lines = []
    if rows:
        lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)))
        lines.append("  ".join("-" * w for w in widths))
        for row, r in zip(rows, [r for r in results if not (quiet and r.passed)]):
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
            if r.message:
                lines.append(f"    {r.message}")
    failed = sum(not r.passed for r in results)
    lines.append(f"selftest: {len(results) - failed} passed, {failed} failed")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m myfla.selftest",
                                     description="Check this copy of myfla on this machine (torch only).")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only failures and the summary")
    parser.add_argument("-k", dest="select", metavar="TEXT", help="run only checks whose group/name contains TEXT")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    if not args.quiet:
        print(f"myfla {myfla.__version__} (port of fla {myfla.UPSTREAM_VERSION}) from {myfla.__path__[0]}")
        print(f"Python {platform.python_version()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    start = time.perf_counter()
    results = run_all(args.select)
    print(format_table(results, quiet=args.quiet))
    if not args.quiet:
        print(f"({time.perf_counter() - start:.1f} s)")
    if not results:
        print(f"selftest: no check matches '{args.select}'", file=sys.stderr)
        return 2
    return 0 if all(r.passed for r in results) else 1


class SelfTest(unittest.TestCase):
    """``python -m unittest myfla.selftest``: one test per check (for projects that use unittest)."""


def _add_unittest(index: int, group: str, name: str, fn: Check) -> None:
    def test(self: unittest.TestCase) -> None:
        result = run_check(group, name, fn)
        if not result.passed:
            self.fail(result.message or f"error {_fmt(result.error)} > tolerance {_fmt(result.tolerance)}")
    slug = "".join(c if c.isalnum() else "_" for c in f"{group}_{name}").strip("_")
    test.__name__ = f"test_{index:02d}_{slug}"[:120]
    test.__doc__ = f"{group}: {name}"
    setattr(SelfTest, test.__name__, test)


for _index, (_group, _name, _fn) in enumerate(CHECKS):
    _add_unittest(_index, _group, _name, _fn)


if __name__ == "__main__":
    sys.exit(main())
