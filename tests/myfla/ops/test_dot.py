"""fla's dot precision (``myfla.ops.utils.dot``): bf16/fp16 operands with fp32 accumulation and an
fp32 result, on both paths (native low-precision products, emulated here on CPU, and the fp32
fallback), against fp64 products of the same rounded operands; and the chunked ops computing the same
numbers on both paths."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import myfla.ops.utils.dot as dot_mod
from myfla.ops.gated_delta_rule import chunk_gated_delta_rule
from myfla.ops.kda import chunk_kda
from myfla.ops.utils import loop_graph
from myfla.ops.utils.dot import dot, dot_add, operand, operand_dtype, rowdot


@pytest.fixture(params=[False, True], ids=["fallback", "native-emulated"])
def native(request, monkeypatch):
    monkeypatch.setattr(dot_mod, "_force_native", request.param)
    return request.param


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_dot_rounds_operands_and_accumulates_in_fp32(native, dtype):
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 64, 128, generator=gen), torch.randn(3, 128, 32, generator=gen)
    a_op, b_op = operand(a, dtype), operand(b, dtype)
    assert a_op.dtype == (dtype if native else torch.float32)
    # the operand holds exactly the rounded values
    assert torch.equal(a_op.double(), a.to(dtype).double())
    out = dot(a_op, b_op)
    assert out.dtype == torch.float32
    exact = a.to(dtype).double() @ b.to(dtype).double()
    assert rel(out, exact) < 1e-6                                       # fp32 accumulation of exact products
    # a plain low-precision product rounds its result: much further from the exact value (torch 1.13
    # has no fp16 matmul on CPU; there the rounding of the exact product stands for it)
    try:
        plain = a.to(dtype) @ b.to(dtype)
    except RuntimeError:
        plain = exact.to(dtype)
    assert rel(plain, exact) > 20 * rel(out, exact)
    c = torch.randn(3, 64, 32, generator=gen)
    assert rel(dot_add(c, a_op, b_op, alpha=-0.5), c.double() - 0.5 * exact) < 1e-6
    buf = c.clone()
    dot_add(buf, a_op, b_op, out=buf)
    assert rel(buf, c.double() + exact) < 1e-6
    assert rel(rowdot(a_op, a), (a.to(dtype).double() * a.double()).sum(-1)) < 1e-6


def test_fp32_and_fp64_operands_are_untouched():
    x = torch.randn(4, 8)
    assert operand(x, torch.float32) is x
    y = x.double()
    assert operand(y, torch.float64) is y
    assert operand_dtype(torch.float32, "cpu") == torch.float32
    assert dot(y, y.t()).dtype == torch.float64
    # mixed operands meet in the wider dtype
    assert dot(x.bfloat16(), y.t()).dtype == torch.float64


@pytest.mark.parametrize("a, b", [((), ()), ((3,), (3,)), ((2, 3), (3,)), ((1, 4), (5, 1)), ((4, 1, 2), (3, 1)),
                                  ((0,), (1,)), ((1,), (0,)), ((2, 0, 3), (1, 3))])
def test_dot_broadcasts_leading_dims_as_torch(a, b):
    # dot's own (fast) broadcast of the leading dims agrees with torch.broadcast_shapes ...
    assert dot_mod._broadcast_lead(torch.Size(a), torch.Size(b)) == tuple(torch.broadcast_shapes(a, b))
    # ... and with torch.matmul's result shape
    x, y = torch.randn(*a, 2, 3), torch.randn(*b, 3, 4)
    out = dot(x, y)
    assert out.shape == torch.matmul(x, y).shape
    assert torch.equal(out, torch.matmul(x, y))


def test_dot_rejects_leading_dims_that_do_not_broadcast():
    with pytest.raises(RuntimeError):
        torch.broadcast_shapes((2, 3), (4, 3))
    with pytest.raises(RuntimeError, match="do not broadcast"):
        dot(torch.randn(2, 3, 2, 3), torch.randn(4, 3, 3, 4))


def _inputs(op, dtype, B=2, T=150, H=2, K=64, V=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=gen)
    k = F.normalize(torch.randn(B, T, H, K, generator=gen), dim=-1)
    v = torch.randn(B, T, H, V, generator=gen)
    g = F.logsigmoid(torch.randn(B, T, H, *((K,) if op == "kda" else ()), generator=gen))
    beta = torch.rand(B, T, H, generator=gen).sigmoid()
    h0 = torch.randn(B, H, K, V, generator=gen)
    return [q.to(dtype), k.to(dtype), v.to(dtype), g, beta.to(dtype), h0]


def _run(op, xs):
    xs = [x.detach().clone().requires_grad_() for x in xs]
    fn = chunk_kda if op == "kda" else chunk_gated_delta_rule
    o, ht = fn(*xs[:5], initial_state=xs[5], output_final_state=True)
    do = torch.randn(o.shape, generator=torch.Generator().manual_seed(5)).to(o.dtype)
    ((o * do).float().sum() + ht.sum()).backward()
    return [o, ht] + [x.grad for x in xs]


@pytest.mark.parametrize("op", ["gdn", "kda"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_chunk_ops_agree_on_both_dot_paths(monkeypatch, op, dtype):
    """With operands kept in bf16/fp16 (the CUDA path's dtypes, products emulated on CPU) the ops
    give the fallback's numbers: the dtype plumbing of the native path is exercised here."""
    xs = _inputs(op, dtype)
    monkeypatch.setattr(dot_mod, "_force_native", False)
    ref = _run(op, xs)
    monkeypatch.setattr(dot_mod, "_force_native", True)
    got = _run(op, xs)
    names = ["o", "ht", "dq", "dk", "dv", "dg", "dbeta", "dh0"]
    for name, a, b in zip(names, ref, got):
        assert a.dtype == b.dtype, name
        assert rel(b, a) < 1e-6, name


def test_run_loop_on_cpu_runs_eagerly():
    calls = []

    def body(x, out):
        calls.append(1)
        out["y"].copy_(x["a"] * 2)
        out["z"].fill_(3.0)

    before = loop_graph.stats["eager"]
    a = torch.randn(5, 4)
    out = loop_graph.run_loop("test", body, {"a": a, "none": None}, {"y": ((5, 4), torch.float32),
                                                                    "z": ((2,), torch.float64)}, "cpu")
    assert calls == [1] and loop_graph.stats["eager"] == before + 1
    assert torch.equal(out["y"], a * 2) and out["z"].dtype == torch.float64 and out["z"].eq(3).all()
