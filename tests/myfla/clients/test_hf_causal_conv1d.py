"""The ``causal_conv1d`` API myfla serves, called as transformers calls it: through the wrapper of
Qwen3-Next's modeling module (``use_kernel_func_from_hub_with_fallback(..., "causal_conv1d")``), which
keeps only the keyword arguments the package's signature names. Oracles: ``torch.nn.functional.conv1d``
in fp64 run on each packed sequence alone, and transformers' own torch fallback run per sequence."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.myfla.clients.hf_pair import hub_kernels_or_skip

_hub = hub_kernels_or_skip("causal_conv1d")

from myfla.modules import causal_conv1d_package  # noqa: E402
from tests.myfla.clients.hf_pair import bound_implementation, fallback_and_myfla  # noqa: E402
from tests.numerics import assert_rms  # noqa: E402

MODELING = "transformers.models.qwen3_next.modeling_qwen3_next"
LENS = [37, 70, 1, 20]


@pytest.fixture(scope="module")
def modeling():
    with fallback_and_myfla(MODELING) as pair:
        yield pair


def channel_last(B: int, D: int, T: int) -> torch.Tensor:
    """``[B, D, T]`` laid out as transformers makes it (``cat(q, k, v).transpose(1, 2)``)."""
    return torch.randn(B, T, D).transpose(1, 2)


def seq_idx_of(lens) -> torch.Tensor:
    return torch.cat([torch.full((n,), i, dtype=torch.int32) for i, n in enumerate(lens)])[None]


def conv1d_fp64(x, w, b, activation):
    """The depthwise causal conv of one sequence, in fp64."""
    D, W = w.shape
    y = F.conv1d(x.double(), w.double().unsqueeze(1), None if b is None else b.double(), padding=W - 1,
                 groups=D)[..., :x.shape[-1]]
    return F.silu(y) if activation == "silu" else y


def test_transformers_binds_the_served_package(modeling):
    fallback, served = modeling
    assert bound_implementation(served.causal_conv1d_fn) is causal_conv1d_package.causal_conv1d_fn
    assert bound_implementation(served.causal_conv1d_update) is causal_conv1d_package.causal_conv1d_update
    assert bound_implementation(fallback.causal_conv1d_fn) is fallback.causal_conv1d_fn.__wrapped__


@pytest.mark.parametrize("W", [2, 3, 4])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_seq_idx_keeps_packed_sequences_apart_forward_and_gradients(modeling, W, activation):
    fallback, served = modeling
    D, T = 48, sum(LENS)
    x0, w0, b0 = channel_last(1, D, T), torch.randn(D, W), torch.randn(D)
    x, w, b = (t.clone().requires_grad_() for t in (x0, w0, b0))
    # what the layer passes: positional x, weight, bias, then activation and the model's **kwargs
    y = served.causal_conv1d_fn(x, w, b, activation=activation, seq_idx=seq_idx_of(LENS),
                                cu_seq_lens_q=torch.tensor([0] + LENS).cumsum(0), position_ids=None)
    xr, wr, br = (t.clone().double().requires_grad_() for t in (x0, w0, b0))
    parts = [conv1d_fp64(xs, wr, br, activation) for xs in xr.split(LENS, -1)]
    y_ref = torch.cat(parts, -1)
    assert_rms("out", y_ref, y, 1e-6)
    with torch.no_grad():
        y_fallback = torch.cat([fallback.causal_conv1d_fn(xs, w0, b0, activation=activation)
                                for xs in x0.split(LENS, -1)], -1)
    assert_rms("out vs transformers' fallback per sequence", y_fallback, y, 1e-6)
    dy = torch.randn_like(y)
    (y * dy).sum().backward()
    (y_ref * dy.double()).sum().backward()
    for name, a, o in [("dx", xr, x), ("dw", wr, w), ("db", br, b)]:
        assert_rms(name, a.grad, o.grad, 1e-6)


def test_without_seq_idx_the_row_is_one_sequence(modeling):
    """The package (and so transformers' caller) learns the boundaries only from ``seq_idx``:
    ``cu_seq_lens_q`` alone is filtered out and the windows read across them, as with the real
    package; this is why packed rows need ``DataCollatorWithFlattening(return_seq_idx=True)``."""
    _, served = modeling
    x, w = channel_last(1, 16, sum(LENS)), torch.randn(16, 4)
    y = served.causal_conv1d_fn(x, w, None, activation="silu", cu_seq_lens_q=torch.tensor([0] + LENS).cumsum(0))
    assert_rms("one sequence", conv1d_fp64(x, w, None, "silu"), y, 1e-6)
    second = slice(LENS[0], LENS[0] + 3)
    alone = conv1d_fp64(x[..., LENS[0]:LENS[0] + LENS[1]], w, None, "silu")[..., :3]
    assert (y[..., second].double() - alone).abs().max() > 1e-3


@pytest.mark.parametrize("L", [1, 3])
def test_update_equals_transformers_fallback_and_shifts_the_state_in_place(modeling, L):
    fallback, served = modeling
    B, D, W = 3, 24, 4
    x, w, b = channel_last(B, D, L), torch.randn(D, W), torch.randn(D)
    state = torch.randn(B, D, W - 1)
    state_ref = state.clone()
    out = served.causal_conv1d_update(x, state, w, b, "silu")
    out_ref = fallback.causal_conv1d_update.__wrapped__(x, state_ref, w, b, "silu")
    assert_rms("out", out_ref, out, 1e-6)
    torch.testing.assert_close(state, state_ref, rtol=0, atol=0)
    # and the package's 2-D token layout, as fla's ShortConvolution passes it
    state2 = state.clone()
    out2 = causal_conv1d_package.causal_conv1d_update(x[..., -1], state2, w, b, "silu")
    out2_ref = fallback.causal_conv1d_update.__wrapped__(x[..., -1:], state.clone(), w, b, "silu")[..., 0]
    assert_rms("out (2-D x)", out2_ref, out2, 1e-6)


def test_prefill_then_decode_equals_one_pass(modeling):
    """A packed prefill's conv, then per-token updates from each sequence's last W-1 inputs, give
    the outputs a single pass over the whole sequences gives."""
    _, served = modeling
    D, W, steps = 16, 4, 5
    lens = [9, 12]
    x = channel_last(1, D, sum(lens))
    more = channel_last(len(lens), D, steps)
    w, b = torch.randn(D, W), torch.randn(D)
    served.causal_conv1d_fn(x, w, b, activation="silu", seq_idx=seq_idx_of(lens))
    state = torch.stack([xs[0, :, -(W - 1):] for xs in x.split(lens, -1)]).contiguous()
    decoded = torch.cat([served.causal_conv1d_update(more[..., t:t + 1], state, w, b, "silu")
                         for t in range(steps)], -1)
    for i, xs in enumerate(x.split(lens, -1)):
        full = conv1d_fp64(torch.cat([xs[0], more[i]], -1)[None], w, b, "silu")[0, :, -steps:]
        assert_rms(f"sequence {i}", full, decoded[i], 1e-6)
