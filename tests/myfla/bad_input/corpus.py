"""A corpus of bad inputs to myfla's public ops, modules and layers, with what each must do.

Every entry names the issue item it guards (issue 15, item 10) and whether the behaviour is fla
0.4.0's own check (``fla``: same exception type and message) or a check the port adds where fla
0.4.0 answers wrongly without a word (``added``: a manifest deviation "input validation added").
Inputs are built inside ``call`` so that collecting the corpus allocates nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Type

import torch
import torch.nn.functional as F

from myfla.layers import GatedDeltaNet, KimiDeltaAttention
from myfla.modules import ShortConvolution
from myfla.ops.gated_delta_rule import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule
from myfla.ops.kda import chunk_kda, fused_recurrent_kda
from myfla.ops.kda.gate import fused_kda_gate

H, K, V = 2, 8, 8            # heads and head dims of the op inputs
HIDDEN = 32                  # layer width (num_heads=2, head_dim=16)

FLA_VARLEN_BATCH = (r"The batch size is expected to be 1 rather than 2 when using `cu_seqlens`\."
                    r"Please flatten variable-length inputs before processing\.")
FLA_STATE_COUNT = (r"The number of initial states is expected to be equal to the number of input sequences, "
                   r"i\.e\., 2 rather than 3\.")
ONE_D = r"`cu_seqlens` must be a 1-D tensor \[N \+ 1\] of sequence offsets, got shape"
INTEGER = r"`cu_seqlens` must be an integer tensor \(torch\.int32 or torch\.int64\), got torch\.float32\."
SPAN = r"`cu_seqlens` must run from 0 to the number of tokens of the input"
MONOTONE = r"`cu_seqlens` must be non-decreasing"
FLOATING = r"must be a floating-point tensor, got torch\.int64\."
HEAD_FIRST = r"Input tensor shape suggests potential format mismatch: seq_len \(4\) < num_heads \(64\)\."
MASK = r"`attention_mask` must be \[batch_size, seq_len\] with batch_size = 2 and seq_len >= 10"


@dataclass(frozen=True)
class BadInput:
    id: str
    item: str                       # the issue item this entry regresses
    origin: str                     # 'fla' (fla 0.4.0's own check) or 'added' (port's validation)
    call: Callable[[], Any]
    error: Type[BaseException]      # exception raised, or the warning category for kind 'warns'
    match: str                      # regex the message must match
    kind: str = 'raises'            # 'raises' or 'warns'
    # run in a child process under a memory limit: without its check the call would try to
    # allocate tens of GB, which must fail the test rather than exhaust the machine
    isolate: bool = False


def op_inputs(B: int = 1, T: int = 10, dtype: torch.dtype = torch.float32):
    """``(q, k, v, g, beta)`` for the KDA ops ([B, T, H, K] layout, key-wise log gates)."""
    q = torch.randn(B, T, H, K, dtype=dtype)
    k = F.normalize(torch.randn(B, T, H, K), dim=-1).to(dtype)
    v = torch.randn(B, T, H, V, dtype=dtype)
    g = F.logsigmoid(torch.randn(B, T, H, K))
    beta = torch.rand(B, T, H).sigmoid()
    return q, k, v, g, beta


def _chunk_kda(*, B=1, T=10, **kw):
    return chunk_kda(*op_inputs(B, T), **kw)


def _recurrent_kda(*, B=1, T=10, **kw):
    return fused_recurrent_kda(*op_inputs(B, T), **kw)


def _chunk_gdn(*, B=1, T=10, **kw):
    q, k, v, g, beta = op_inputs(B, T)
    return chunk_gated_delta_rule(q, k, v, g[..., 0], beta, **kw)


def _recurrent_gdn(*, B=1, T=10, **kw):
    q, k, v, g, beta = op_inputs(B, T)
    return fused_recurrent_gated_delta_rule(q, k, v, g[..., 0], beta=beta, **kw)


OPS = {
    'chunk_kda': _chunk_kda,
    'fused_recurrent_kda': _recurrent_kda,
    'chunk_gated_delta_rule': _chunk_gdn,
    'fused_recurrent_gated_delta_rule': _recurrent_gdn,
}


def _with_integer(op_name: str, which: int):
    """The op with one of q/k/v (``which``) converted to int64."""
    def call():
        args = list(op_inputs())
        args[which] = args[which].round().long()
        if op_name.endswith('gated_delta_rule'):
            args[3] = args[3][..., 0]
        if op_name == 'fused_recurrent_gated_delta_rule':
            q, k, v, g, beta = args
            return fused_recurrent_gated_delta_rule(q, k, v, g, beta=beta)
        fn = {'chunk_kda': chunk_kda, 'fused_recurrent_kda': fused_recurrent_kda,
              'chunk_gated_delta_rule': chunk_gated_delta_rule}[op_name]
        return fn(*args)
    return call


def _head_first(op_name: str):
    """Head-first tensors ``[B, H, T, ...]`` (H = 4 heads, T = 64 tokens) where ``[B, T, H, ...]``
    is expected: the op would take 4 tokens of 64 heads."""
    def call():
        Hh, T = 4, 64
        q = torch.randn(1, Hh, T, K)
        k = F.normalize(torch.randn(1, Hh, T, K), dim=-1)
        v = torch.randn(1, Hh, T, V)
        g = F.logsigmoid(torch.randn(1, Hh, T, K))
        beta = torch.rand(1, Hh, T).sigmoid()
        if op_name == 'chunk_kda':
            return chunk_kda(q, k, v, g, beta)
        return chunk_gated_delta_rule(q, k, v, g[..., 0], beta)
    return call


def _layer(kind: str):
    cls = KimiDeltaAttention if kind == 'kda' else GatedDeltaNet
    return cls(hidden_size=HIDDEN, head_dim=16, num_heads=2, layer_idx=0).eval()


def _layer_call(kind: str, B: int = 2, T: int = 10, **kw):
    def call():
        with torch.no_grad():
            return _layer(kind)(torch.randn(B, T, HIDDEN), **kw)
    return call


def _conv_call(B: int = 1, T: int = 10, **kw):
    def call():
        with torch.no_grad():
            return ShortConvolution(16, 4)(torch.randn(B, T, 16), **kw)
    return call


def _cases() -> List[BadInput]:
    cases: List[BadInput] = []
    add = cases.append
    cu2 = lambda: torch.tensor([0, 4, 10])                      # noqa: E731  (two sequences of 10 tokens)

    for name, op in OPS.items():
        # fla's own varlen checks: kept verbatim, and they still run first
        add(BadInput(f'{name}-varlen-batch-2', 'fla check kept', 'fla',
                     lambda op=op: op(B=2, cu_seqlens=cu2()), ValueError, FLA_VARLEN_BATCH))
        add(BadInput(f'{name}-initial-state-count', 'fla check kept', 'fla',
                     lambda op=op: op(cu_seqlens=cu2(), initial_state=torch.zeros(3, H, K, V)),
                     ValueError, FLA_STATE_COUNT))
        # 2-D cu_seqlens: fla takes len(cu_seqlens) - 1 = 0 sequences
        add(BadInput(f'{name}-2d-cu_seqlens', 'fused_recurrent_* with a 2-D cu_seqlens', 'added',
                     lambda op=op: op(cu_seqlens=cu2()[None], output_final_state=True), ValueError, ONE_D))
        add(BadInput(f'{name}-float-cu_seqlens', 'float cu_seqlens are accepted', 'added',
                     lambda op=op: op(cu_seqlens=cu2().float()), ValueError, INTEGER))
        add(BadInput(f'{name}-empty-cu_seqlens', 'float cu_seqlens are accepted', 'added',
                     lambda op=op: op(cu_seqlens=torch.zeros(0, dtype=torch.long)), ValueError, ONE_D))
        for big in (2 ** 31, 2 ** 33):
            add(BadInput(f'{name}-cu_seqlens-end-2^{big.bit_length() - 1}', 'cu_seqlens end of 2^31-2^33', 'added',
                         lambda op=op, big=big: op(cu_seqlens=torch.tensor([0, 4, big])), ValueError, SPAN,
                         isolate=True))
        add(BadInput(f'{name}-cu_seqlens-short-of-T', 'cu_seqlens end of 2^31-2^33', 'added',
                     lambda op=op: op(cu_seqlens=torch.tensor([0, 4, 8])), ValueError, SPAN))
        add(BadInput(f'{name}-cu_seqlens-not-from-0', 'cu_seqlens end of 2^31-2^33', 'added',
                     lambda op=op: op(cu_seqlens=torch.tensor([2, 4, 10])), ValueError, SPAN))
        add(BadInput(f'{name}-cu_seqlens-decreasing', 'cu_seqlens end of 2^31-2^33', 'added',
                     lambda op=op: op(cu_seqlens=torch.tensor([0, 7, 3, 10])), ValueError, MONOTONE))
        for which, tensor in enumerate('qkv'):
            add(BadInput(f'{name}-int64-{tensor}', 'int64 q/k/v give a truncated int64 output', 'added',
                         _with_integer(name, which), ValueError, f"`{tensor}` " + FLOATING))

    for name in ('chunk_kda', 'chunk_gated_delta_rule'):
        add(BadInput(f'{name}-head-first', 'head-first [B, H, T, K] taken as [B, T, H, K]', 'added',
                     _head_first(name), UserWarning, HEAD_FIRST, kind='warns'))

    for kind in ('kda', 'gdn'):
        add(BadInput(f'{kind}-layer-cu_seqlens-batch-2', 'layers given cu_seqlens with batch 2', 'fla',
                     _layer_call(kind, cu_seqlens=torch.tensor([0, 4, 10])), ValueError, FLA_VARLEN_BATCH))
        add(BadInput(f'{kind}-layer-2d-cu_seqlens', 'fused_recurrent_* with a 2-D cu_seqlens', 'added',
                     _layer_call(kind, B=1, cu_seqlens=torch.tensor([[0, 4, 10]])), ValueError, ONE_D))
        add(BadInput(f'{kind}-layer-float-cu_seqlens', 'float cu_seqlens are accepted', 'added',
                     _layer_call(kind, B=1, cu_seqlens=torch.tensor([0., 4., 10.])), ValueError, INTEGER))
        add(BadInput(f'{kind}-layer-cu_seqlens-end-2^31', 'cu_seqlens end of 2^31-2^33', 'added',
                     _layer_call(kind, B=1, cu_seqlens=torch.tensor([0, 4, 2 ** 31])), ValueError, SPAN,
                     isolate=True))
        add(BadInput(f'{kind}-layer-short-mask', 'an attention_mask shorter than T', 'added',
                     _layer_call(kind, attention_mask=torch.ones(2, 6, dtype=torch.long)), ValueError, MASK))
        add(BadInput(f'{kind}-layer-mask-batch-1', 'an attention_mask shorter than T', 'added',
                     _layer_call(kind, attention_mask=torch.ones(1, 10, dtype=torch.long)), ValueError, MASK))
        add(BadInput(f'{kind}-layer-3d-mask', 'fla check kept', 'fla',
                     _layer_call(kind, attention_mask=torch.ones(2, 10, 10, dtype=torch.long)), AssertionError,
                     r"Expected attention_mask as a 0-1 matrix with shape \[batch_size, seq_len\]"))

    add(BadInput('short-conv-cu_seqlens-batch-2', 'layers given cu_seqlens with batch 2', 'added',
                 _conv_call(B=2, cu_seqlens=torch.tensor([0, 4, 10])), ValueError, FLA_VARLEN_BATCH))
    add(BadInput('short-conv-2d-cu_seqlens', 'fused_recurrent_* with a 2-D cu_seqlens', 'added',
                 _conv_call(cu_seqlens=torch.tensor([[0, 4, 10]])), ValueError, ONE_D))
    add(BadInput('short-conv-float-cu_seqlens', 'float cu_seqlens are accepted', 'added',
                 _conv_call(cu_seqlens=torch.tensor([0., 4., 10.])), ValueError, INTEGER))
    add(BadInput('short-conv-cu_seqlens-end-2^33', 'cu_seqlens end of 2^31-2^33', 'added',
                 _conv_call(cu_seqlens=torch.tensor([0, 4, 2 ** 33])), ValueError, SPAN, isolate=True))
    add(BadInput('short-conv-mask-and-cu_seqlens', 'fla check kept', 'fla',
                 _conv_call(mask=torch.ones(1, 10), cu_seqlens=torch.tensor([0, 4, 10])), ValueError,
                 r"`mask` and `cu_seqlens` cannot be provided at the same time"))

    for beta in (0.0, -1.0, float('nan')):
        add(BadInput(f'fused_kda_gate-beta-{beta}', 'fused_kda_gate(beta=0) returns NaN', 'added',
                     lambda beta=beta: fused_kda_gate(torch.randn(2, 3, H * K), torch.randn(H), K, beta=beta),
                     ValueError, r"`beta` of the softplus must be positive, got " + str(beta)))
    return cases


CASES = _cases()
