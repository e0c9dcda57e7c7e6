"""fused_kda_gate / kda_gate_fwd / kda_gate_bwd against fla's kda_gate_ref (loaded by file path),
forward and gradients of g, A and g_bias through fp64 autograd of the reference."""

from __future__ import annotations

import pytest
import torch

from myfla.ops.kda.gate import fused_kda_gate, kda_gate_bwd, kda_gate_fwd, kda_gate_ref
from tests.fla_refs import load_function
from tests.numerics import assert_rms


@pytest.fixture(scope="module")
def fla_gate_ref(fla040_root):
    return load_function(fla040_root, "fla/ops/kda/gate.py", "kda_gate_ref")


CASES = [
    # (leading shape, H, D, bias, A shape, beta, threshold)
    ((2, 5), 2, 12, False, "flat", 1.0, 20.0),
    ((1, 37), 4, 32, True, "4d", 1.0, 20.0),
    ((50,), 3, 64, True, "flat", 1.0, 20.0),        # vLLM layout [tokens, H*D]
    ((2, 9), 1, 100, False, "4d", 2.0, 10.0),
    ((3, 16), 8, 128, True, "flat", 0.5, 5.0),
]


def _inputs(lead, H, D, bias, a_shape):
    g = torch.randn(*lead, H * D) * 30          # reaches the softplus threshold (fla's test does the same)
    A = torch.log(torch.empty(H).uniform_(1, 16))
    if a_shape == "4d":
        A = A.view(1, 1, H, 1)
    g_bias = torch.randn(H * D) if bias else None
    return g, A, g_bias


@pytest.mark.parametrize("lead,H,D,bias,a_shape,beta,threshold", CASES)
def test_gate_matches_fla_reference(fla_gate_ref, lead, H, D, bias, a_shape, beta, threshold):
    g, A, g_bias = _inputs(lead, H, D, bias, a_shape)
    y = kda_gate_fwd(g, A, D, g_bias, beta, threshold)
    assert y.dtype == torch.float32 and y.shape == (*lead, H, D)
    y_ref = fla_gate_ref(g.double(), A.double(), D, None if g_bias is None else g_bias.double(), beta, threshold)
    assert_rms("y", y_ref, y, 1e-6)
    # the port's own reference agrees with fla's
    assert_rms("kda_gate_ref", y_ref, kda_gate_ref(g, A, D, g_bias, beta, threshold), 1e-6)

    leaves = [x.clone().double().requires_grad_() for x in (g, A)]
    gb = g_bias.clone().double().requires_grad_() if g_bias is not None else None
    dy = torch.randn(*lead, H, D)
    y64 = fla_gate_ref(leaves[0], leaves[1], D, gb, beta, threshold)
    (y64 * dy.double()).sum().backward()

    g1, A1 = g.clone().requires_grad_(), A.clone().requires_grad_()
    gb1 = g_bias.clone().requires_grad_() if g_bias is not None else None
    y1 = fused_kda_gate(g1, A1, D, gb1, beta, threshold)
    assert_rms("fused y", y_ref, y1, 1e-6)
    (y1 * dy).sum().backward()
    # fla's backward kernel uses sigmoid(beta * x) as the softplus slope on the linear branch too
    # (beta * x > threshold), where autograd of the reference uses 1; the port keeps fla's kernel.
    x = g.double() + (g_bias.double() if g_bias is not None else 0)
    x = x.view(*lead, H, D)
    linear = x * beta > threshold
    kernel_slope = -A.double().view(H, 1).exp() * torch.sigmoid(x * beta) * dy.double()
    dg_expected = torch.where(linear, kernel_slope, leaves[0].grad.view(*lead, H, D)).view(g.shape)
    # the reference's .float() makes its gradients fp32-accurate only: 1e-5 is that rounding
    assert_rms("dg", dg_expected, g1.grad, 1e-5)
    assert_rms("dA", leaves[1].grad, A1.grad, 1e-5)
    assert A1.grad.shape == A.shape
    if g_bias is not None:
        assert_rms("dg_bias", dg_expected.reshape(-1, H * D).sum(0), gb1.grad, 1e-5)


def test_gate_bwd_direct_shapes_and_dtypes():
    g = torch.randn(2, 7, 3 * 16, dtype=torch.bfloat16)
    A = torch.randn(3)
    bias = torch.randn(3 * 16)
    dy = torch.randn(2, 7, 3, 16)
    dg, dA, dbias = kda_gate_bwd(dy, g, A, 16, bias)
    assert dg.dtype == torch.bfloat16 and dg.shape == g.shape
    assert dA.shape == A.shape and dA.dtype == A.dtype
    assert dbias.shape == bias.shape
    _, _, none_bias = kda_gate_bwd(dy, g, A, 16)
    assert none_bias is None


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_gate_without_autograd_is_the_function_forward(bias, dtype):
    """Decoding (no grad) skips KDAGateFunction: bit for bit the Function's forward, strided too."""
    H, D = 3, 16
    g = torch.randn(2, 1, H * D).to(dtype)
    A = torch.randn(H)
    g_bias = torch.randn(H * D) if bias else None
    expected = fused_kda_gate(g.clone().requires_grad_(), A, D, g_bias=g_bias)
    assert expected.grad_fn is not None
    strided = torch.cat([g, g], -1)[..., :H * D]
    for x in (g, strided):
        with torch.no_grad():
            got = fused_kda_gate(x, A, D, g_bias=g_bias)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        torch.testing.assert_close(got, expected.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("beta,threshold", [(1.0, 20.0), (2.0, 10.0), (0.5, 5.0)])
def test_gate_softplus_switches_strictly_above_threshold(beta, threshold):
    """At ``beta * x == threshold`` exactly fla's kernels (``use_linear = g_scaled > threshold``) and
    torch's softplus still take ``log1p(exp(beta x)) / beta``, which differs from ``x`` by
    ``exp(-threshold) / beta`` (2e-9 at threshold 20): visible in fp64. Oracle: torch's softplus in
    fp64 (the same rule as fla's kernel and fla's kda_gate_ref)."""
    H, D = 2, 4
    x = threshold / beta
    g = torch.tensor([x - 1e-3, x, x + 1e-3, x * 0.5], dtype=torch.float64).repeat(H * D // 4 * 2)[: H * D]
    g = g.view(1, 1, H * D)
    A = torch.log(torch.tensor([1.5, 3.0], dtype=torch.float64))
    y = kda_gate_fwd(g, A, D, None, beta, threshold)
    ref = -A.exp().view(H, 1) * torch.nn.functional.softplus(g.view(1, 1, H, D), beta, threshold)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, ref, rtol=1e-14, atol=1e-14)
