"""The rest of ``myfla.ops.utils`` (fla 0.4.0 ``fla/ops/utils/``): global cumsum, the remaining
index helpers, op aliases, pack/unpack, mean pooling, logsumexp, logcumsumexp, softmax, matmul/addmm
and constants; and the package exports.

Oracles are explicit torch formulas in fp64 (``torch.cumsum`` per sequence, per-chunk ``mean``,
``torch.logsumexp``, ``torch.softmax`` and its autograd gradient, ``a @ b``), Python loops over the
sequences for the index and packing maps, and fp64 ``gradcheck`` of the autograd Functions.
"""

from __future__ import annotations

import ast
import math
from importlib import import_module

import pytest
import torch
import torch.nn.functional as F

import myfla.ops.utils as U
from myfla.ops.utils import constant, index, logcumsumexp, op, pack, pooling, softmax
from myfla.ops.utils.cumsum import chunk_global_cumsum_scalar, chunk_global_cumsum_vector
from tests.numerics import assert_rms

# the package exports a function `matmul`, which hides the submodule of the same name (as in fla)
matmul_module = import_module("myfla.ops.utils.matmul")
F64 = torch.float64
CU_CASES = [[0, 15], [0, 1, 7, 7, 30], [0, 64, 65, 200]]


def per_sequence(x, cu, fn):
    """Apply ``fn`` to every sequence of ``x`` ``[1, T, ...]`` along dim 1 and concatenate."""
    return torch.cat([fn(x[:, a:b]) for a, b in zip(cu[:-1], cu[1:])], 1)


@pytest.mark.parametrize("vector", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("cu", [None] + CU_CASES)
@pytest.mark.parametrize("scale", [None, 0.5])
def test_global_cumsum_vs_torch(vector, reverse, cu, scale):
    T = cu[-1] if cu else 37
    B = 1 if cu else 2
    s = torch.randn(B, T, 3, 5) if vector else torch.randn(B, T, 3)

    def ref_fn(x):
        x = x.double()
        c = x.flip(1).cumsum(1).flip(1) if reverse else x.cumsum(1)
        return c * scale if scale is not None else c

    ref = ref_fn(s) if cu is None else per_sequence(s, cu, ref_fn)
    cu_t = torch.tensor(cu) if cu else None
    out = U.chunk_global_cumsum(s, reverse=reverse, cu_seqlens=cu_t, scale=scale)
    assert out.dtype == torch.float32
    assert_rms("cumsum", ref, out, 1e-6)
    # head_first layout gives the same numbers transposed
    out_hf = U.chunk_global_cumsum(s.transpose(1, 2).contiguous(), reverse=reverse, cu_seqlens=cu_t,
                                   scale=scale, head_first=True)
    torch.testing.assert_close(out_hf.transpose(1, 2), out)
    fn = chunk_global_cumsum_vector if vector else chunk_global_cumsum_scalar
    torch.testing.assert_close(fn(s, reverse, cu_t, scale), out)


def test_global_cumsum_dtypes_and_errors():
    s = torch.randn(2, 9, 3).bfloat16()
    assert U.chunk_global_cumsum(s).dtype == torch.float32
    assert U.chunk_global_cumsum(s, output_dtype=None).dtype == torch.bfloat16
    assert U.chunk_global_cumsum(s.double()).dtype == torch.float64      # fp64 stays fp64
    with pytest.raises(ValueError, match=r"Unsupported input shape .*\[B, T, H\]/\[B, T, H, D\]"):
        U.chunk_global_cumsum(torch.randn(2, 3))
    with pytest.raises(AssertionError, match="Only batch size 1 is supported"):
        U.chunk_global_cumsum(torch.randn(2, 5, 3), cu_seqlens=torch.tensor([0, 5]))


def test_index_helpers_vs_python():
    cu_list = [0, 3, 3, 10, 11]
    cu = torch.tensor(cu_list)
    lens = [b - a for a, b in zip(cu_list[:-1], cu_list[1:])]
    assert index.prepare_lens_from_cu_seqlens(cu).tolist() == lens
    assert index.get_max_num_splits(cu, 4) == math.ceil(max(lens) / 4)
    # fla's sequence ids come from position-0 markers, so an empty sequence gets no id of its own
    seq_ids = [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 2]
    pos = [p for n in lens for p in range(n)]
    assert index.prepare_token_indices(cu).tolist() == [list(t) for t in zip(seq_ids, pos)]
    assert index.prepare_token_indices(cu).dtype == cu.dtype
    split = index.prepare_split_cu_seqlens(0, 0, 3, cu_seqlens=cu)
    assert split.tolist() == [0, 3, 6, 9, 10, 11] and split.dtype == torch.int32
    assert index.prepare_split_cu_seqlens(2, 5, 2, dtype=torch.int64).tolist() == [0, 2, 4, 5, 7, 9, 10]


def test_op_aliases():
    x = torch.randn(20, dtype=F64)
    torch.testing.assert_close(op.exp2(x), 2 ** x)
    torch.testing.assert_close(op.log2(x.abs()), torch.log(x.abs()) / math.log(2))
    torch.testing.assert_close(op.safe_exp(x), torch.where(x <= 0, x.exp(), torch.zeros_like(x)))
    assert op.safe_exp(torch.tensor([1000.0])).item() == 0.0
    src = torch.randn(4, 6)
    idx = torch.randint(0, 6, (4, 3))
    torch.testing.assert_close(op.gather(src, idx, 1), torch.stack([src[i, idx[i]] for i in range(4)]))
    assert abs(constant.RCP_LN2 - 1 / math.log(2)) < 1e-7


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("lens", [[3, 1, 4], [5, 0, 2], [1]])
def test_pack_unpack_vs_python(side, lens):
    B, S = len(lens), max(lens)
    cu = torch.tensor([0] + lens).cumsum(0)
    x = torch.randn(B, S, 2, 3, dtype=F64)
    rows = []
    for b, n in enumerate(lens):
        rows.append(x[b, S - n:] if side == "left" else x[b, :n])
    ref = torch.cat(rows)
    y = U.pack_sequence(x, cu, padding_side=side)
    assert torch.equal(y, ref)
    back = U.unpack_sequence(y, cu, padding_side=side)
    mask = torch.zeros(B, S, dtype=torch.bool)
    for b, n in enumerate(lens):
        if side == "left":
            mask[b, S - n:] = True
        else:
            mask[b, :n] = True
    assert torch.equal(back, torch.where(mask[..., None, None], x, torch.zeros_like(x)))
    wider = U.unpack_sequence(y, cu, padding_side=side, desired_shape=(B, S + 2, 2, 3))
    assert wider.shape == (B, S + 2, 2, 3) and torch.equal(U.pack_sequence(wider, cu, side), y)
    xs = x.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: pack.PackSequenceFunction.apply(t, cu, side), (xs,))
    ys = y.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: pack.UnpackSequenceFunction.apply(t, cu, side, None), (ys,))


@pytest.mark.parametrize("cu,head_first", [(None, False), (None, True), ([0, 1, 9, 9, 30], False)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mean_pooling_vs_chunk_means(cu, head_first, dtype):
    BT = 4
    T = cu[-1] if cu else 10
    B = 1 if cu else 2
    x = torch.randn(B, T, 3, 5).to(dtype)

    def ref_fn(xs):
        return torch.stack([c.double().mean(1) for c in xs.split(BT, 1)], 1)

    ref = ref_fn(x) if cu is None else torch.cat(
        [ref_fn(x[:, a:b]) for a, b in zip(cu[:-1], cu[1:]) if b > a], 1)
    cu_t = torch.tensor(cu) if cu else None
    xin = (x.transpose(1, 2).contiguous() if head_first else x).requires_grad_()
    o = U.mean_pooling(xin, BT, cu_t, head_first=head_first)
    o_cmp = o.transpose(1, 2) if head_first else o
    assert o.dtype == dtype
    assert_rms("mean", ref, o_cmp, 1e-6 if dtype == torch.float32 else 8e-3)
    do = torch.randn_like(o)
    dx, = torch.autograd.grad(o, xin, do)
    x64 = xin.detach().double().requires_grad_()
    xr = x64.transpose(1, 2) if head_first else x64
    ref_o = ref_fn(xr) if cu is None else torch.cat(
        [ref_fn(xr[:, a:b]) for a, b in zip(cu[:-1], cu[1:]) if b > a], 1)
    dx_ref, = torch.autograd.grad(ref_o.transpose(1, 2) if head_first else ref_o, x64, do.double())
    assert_rms("dx", dx_ref, dx, 1e-6 if dtype == torch.float32 else 8e-3)
    if dtype == torch.float32:
        x64 = x.double().requires_grad_()
        assert torch.autograd.gradcheck(lambda t: pooling.MeanPoolingFunction.apply(t, BT, cu_t), (x64,))
    with pytest.raises(ValueError, match="The batch size is expected to be 1"):
        U.mean_pooling(torch.randn(2, 8, 1, 2), BT, torch.tensor([0, 8]))


@pytest.mark.parametrize("D,scale", [(7, None), (300, 0.3), (70000, None)])
def test_logsumexp_vs_torch(D, scale):
    x = torch.randn(3, 2, D) * 3
    z = U.logsumexp_fwd(x, scale=scale)
    assert z.dtype == torch.float32 and z.shape == (3, 2)
    ref = torch.logsumexp(x.double() * (scale or 1.0), -1)
    assert_rms("lse", ref, z, 1e-6)
    assert U.logsumexp_fwd(x[..., :8].bfloat16(), dtype=torch.bfloat16).dtype == torch.bfloat16


def test_logcumsumexp_vs_log_cumsum_exp():
    s = torch.randn(4, 33, 6) * 2
    z = logcumsumexp.logcumsumexp_fwd_kernel(s)
    ref = torch.log(torch.cumsum(torch.exp(s.double()), 1))
    assert z.dtype == s.dtype
    assert_rms("z", ref, z, 1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_softmax_fwd_bwd_vs_torch(dtype):
    x = (torch.randn(3, 5, 29) * 3).to(dtype)
    p = U.softmax_fwd(x)
    assert p.dtype == torch.float32
    ref = torch.softmax(x.double(), -1)
    assert_rms("p", ref, p, 1e-6)
    assert U.softmax_fwd(x, dtype=dtype).dtype == dtype
    dp = torch.randn(3, 5, 29)
    ds = U.softmax_bwd(p, dp)
    x64 = x.double().requires_grad_()
    ds_ref, = torch.autograd.grad(torch.softmax(x64, -1), x64, dp.double())
    assert_rms("ds", ds_ref, ds, 1e-5)


@pytest.mark.parametrize("activation", ["", "relu", "leaky_relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("batched", [False, True])
def test_matmul_vs_torch(activation, batched):
    a = torch.randn(2, 13, 17) if batched else torch.randn(13, 17)
    b = torch.randn(17, 9)
    c = U.matmul(a, b, activation=activation)
    ref = a.double() @ b.double()
    acts = {"": lambda t: t, "relu": F.relu, "leaky_relu": lambda t: F.leaky_relu(t, 0.01),
            "sigmoid": torch.sigmoid, "tanh": torch.tanh}
    ref = acts[activation](ref)
    assert c.shape == ref.shape and c.dtype == a.dtype
    assert_rms(f"matmul {activation}", ref, c, 1e-6)
    assert U.matmul(a.bfloat16(), b.bfloat16()).dtype == torch.bfloat16


def test_addmm_vs_torch():
    a, b = torch.randn(11, 6), torch.randn(6, 8)
    bias, full = torch.randn(8), torch.randn(11, 8)
    assert_rms("bias", a.double() @ b.double() + bias.double(), U.addmm(bias, a, b), 1e-6)
    alpha, beta = torch.tensor([0.5]), torch.tensor([2.0])
    ref = 0.5 * (a.double() @ b.double()) + 2.0 * full.double()
    assert_rms("full", ref, U.addmm(full, a, b, alpha=alpha, beta=beta), 1e-6)
    assert_rms("floats", ref, U.addmm(full, a, b, alpha=0.5, beta=2.0), 1e-6)
    a3 = torch.randn(3, 11, 6)
    assert_rms("batched", a3.double() @ b.double() + bias.double(), U.addmm(bias, a3, b), 1e-6)
    with pytest.raises(AssertionError, match="Incompatible dimensions"):
        U.matmul(torch.randn(3, 4), torch.randn(5, 2))
    x = torch.tensor([-1.0, 2.0])
    torch.testing.assert_close(matmul_module.leaky_relu(x), torch.tensor([-0.01, 2.0]))
    torch.testing.assert_close(matmul_module.relu(x), torch.tensor([0.0, 2.0]))
    torch.testing.assert_close(matmul_module.sigmoid(x), torch.sigmoid(x))
    torch.testing.assert_close(matmul_module.tanh(x), torch.tanh(x))
    assert softmax.NUM_WARPS_AUTOTUNE[0] == 1


def test_package_exports_match_fla(fla040_root):
    tree = ast.parse((fla040_root / "fla/ops/utils/__init__.py").read_text())
    names = None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            names = [e.value for e in node.value.elts]
    assert names is not None and U.__all__ == names
    for n in names:
        assert callable(getattr(U, n)), n
