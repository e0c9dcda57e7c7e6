"""Costs no numeric test sees: chunk paths do work per chunk, never per token, and GDN's chunk path
reads no tensor data on the host.

A per-token Python loop in a chunk path (DESIGN.md §6) or a host sync (``.item()``, ``bool(t)``) in
a kernel path gives the same numbers, only slower (on a GPU a sync also stalls the stream and breaks
CUDA-graph capture), and the static audit cannot tell them from legitimate code
(benchmarks/results/port_mutation_audit.md, mutants ``kda-token-loop-in-chunk-path`` and
``gdn-item-sync-in-kernel-path``).

Counting dispatched operations catches the loop: doubling ``T`` from 1024 to 2048 adds 16 chunks of
64, and the ops add a few operations per chunk (6 to 12 measured with torch 2.13: 96 to 192 in all),
while a loop over tokens adds at least one per token (1024). The bound, one operation per 2 added
tokens (512), sits between the two. Running on ``meta`` tensors (shapes without data) catches the
sync: any read of a value fails there. KDA's intra-chunk path reads one flag per call on purpose
(``chunk_intra.dense_factors`` picks the factorisation from the gates' range), so only GDN is run so.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from myfla.ops.gated_delta_rule import chunk_gated_delta_rule
from myfla.ops.gla import chunk_gla
from myfla.ops.kda import chunk_kda
from myfla.ops.rwkv7 import chunk_rwkv7


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def _kda(T):
    q, v = torch.randn(1, T, 1, 16), torch.randn(1, T, 1, 16)
    k = F.normalize(torch.randn(1, T, 1, 16), dim=-1)
    g, beta = F.logsigmoid(torch.randn(1, T, 1, 16)), torch.rand(1, T, 1)
    return chunk_kda, (q, k, v, g, beta)


def _gdn(T):
    q, v = torch.randn(1, T, 1, 16), torch.randn(1, T, 1, 16)
    k = F.normalize(torch.randn(1, T, 1, 16), dim=-1)
    g, beta = F.logsigmoid(torch.randn(1, T, 1)), torch.rand(1, T, 1)
    return chunk_gated_delta_rule, (q, k, v, g, beta)


def _gla(T):
    q, k, v = torch.randn(1, T, 1, 16), torch.randn(1, T, 1, 16), torch.randn(1, T, 1, 16)
    return chunk_gla, (q, k, v, F.logsigmoid(torch.randn(1, T, 1, 16)))


def _rwkv7(T):
    r, k, v = torch.randn(1, T, 1, 16), torch.randn(1, T, 1, 16), torch.randn(1, T, 1, 16)
    w = -torch.exp(torch.randn(1, T, 1, 16) - 2)
    kk = F.normalize(torch.randn(1, T, 1, 16), dim=-1)
    a = torch.rand(1, T, 1, 16)
    return chunk_rwkv7, (r, w, k, v, -kk, kk * a)


def _ops(make, T) -> int:
    torch.manual_seed(0)
    op, inputs = make(T)
    leaves = [x.requires_grad_() for x in inputs]
    counter = _CountOps()
    with counter:
        o = op(*leaves)[0]
        o.sum().backward()
    return counter.count


@pytest.mark.filterwarnings("ignore:ChunkDeltaRuleFunction does not support float32")   # fla's warning
@pytest.mark.parametrize("make", [_kda, _gdn, _gla, _rwkv7], ids=["kda", "gdn", "gla", "rwkv7"])
def test_operations_grow_with_chunks_not_tokens(make):
    added = _ops(make, 2048) - _ops(make, 1024)
    assert 0 <= added < 1024 // 2, f"{added} more operations for 1024 more tokens: a per-token loop?"


def test_gdn_chunk_path_reads_no_data_on_host():
    """Forward and backward of equal-length sequences on meta tensors: no value is ever read."""
    q, k, v = (torch.empty(1, 256, 2, 16, device="meta", requires_grad=True) for _ in range(3))
    g, beta = (torch.empty(1, 256, 2, device="meta", requires_grad=True) for _ in range(2))
    h0 = torch.empty(1, 2, 16, 16, device="meta", requires_grad=True)
    o, ht = chunk_gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True)
    (o.sum() + ht.sum()).backward()
    assert o.shape == v.shape and q.grad.shape == q.shape and h0.grad.shape == h0.shape
