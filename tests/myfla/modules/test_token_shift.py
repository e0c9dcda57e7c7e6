"""token_shift against fla's token_shift_ref (loaded by file path from fla 0.4.0), the cache
semantics the RWKV layers rely on (split runs == one run), and the recorded deviations."""

from __future__ import annotations

import pytest
import torch

from myfla.modules.token_shift import token_shift, token_shift_bwd, token_shift_fwd
from portaudit.numerics.upstream_code import load_function


@pytest.fixture(scope="module")
def token_shift_ref(fla040_root):
    return load_function(fla040_root, "fla/modules/token_shift.py", "token_shift_ref")


@pytest.mark.parametrize("B,T", [(2, 1), (3, 17), (1, 4100)])
def test_matches_reference(token_shift_ref, B, T):
    x = torch.randn(B, T, 24, requires_grad=True)
    ref = token_shift_ref(x)
    out = token_shift(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    g = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad(out, x, g)[0], torch.autograd.grad(ref, x, g)[0],
                               rtol=0, atol=0)


@pytest.mark.parametrize("cu", [[0, 1], [0, 5, 6, 6, 30], [0, 3, 7]])
def test_varlen_matches_reference(token_shift_ref, cu):
    cu_t = torch.tensor(cu)
    x = torch.randn(1, cu[-1], 8, requires_grad=True)
    ref = token_shift_ref(x, cu_t)
    out = token_shift(x, cu_t)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    g = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad(out, x, g)[0], torch.autograd.grad(ref, x, g)[0],
                               rtol=0, atol=0)


@pytest.mark.parametrize("split", [1, 5, 11])
def test_split_with_cache_equals_one_run(split):
    x = torch.randn(2, 12, 8)
    full, cache_full = token_shift(x, output_cache=True)
    y1, c1 = token_shift(x[:, :split], output_cache=True)
    y2, c2 = token_shift(x[:, split:], cache=c1, output_cache=True)
    torch.testing.assert_close(torch.cat([y1, y2], 1), full, rtol=0, atol=0)
    torch.testing.assert_close(c2, cache_full, rtol=0, atol=0)
    torch.testing.assert_close(cache_full, x[:, -1], rtol=0, atol=0)


def test_varlen_cache_per_sequence():
    """Each sequence shifts against its own cache row and leaves its last token; an empty sequence
    keeps its cache."""
    cu = torch.tensor([0, 2, 2, 5])
    x = torch.randn(1, 5, 4)
    cache = torch.randn(3, 4)
    y, new = token_shift(x, cu, cache=cache, output_cache=True)
    torch.testing.assert_close(y[0, 0], cache[0] - x[0, 0])
    torch.testing.assert_close(y[0, 2], cache[2] - x[0, 2])
    torch.testing.assert_close(new, torch.stack([x[0, 1], cache[1], x[0, 4]]))


def test_single_token_prefill_stores_the_cache():
    """Deviation (fla 0.6.0): fla 0.4.0's short kernel returns from a sequence's first token before
    storing the cache, so a one-token call without a cache (a decode that starts from nothing, or a
    length-1 varlen sequence) leaves the new cache uninitialised. The port stores the last token."""
    x = torch.randn(2, 1, 6)
    y, cache = token_shift(x, output_cache=True)
    torch.testing.assert_close(y, -x)
    torch.testing.assert_close(cache, x[:, 0])
    cu = torch.tensor([0, 1, 4])
    xv = torch.randn(1, 4, 6)
    _, cache_v = token_shift(xv, cu, output_cache=True)
    torch.testing.assert_close(cache_v, xv[0, [0, 3]])


def test_varlen_with_cache_when_longest_sequence_equals_sequence_count():
    """Deviation (fla 0.6.0): fla 0.4.0 takes its decode branch when ``B == 1 and max_len == N``, so
    with a cache every token of such a varlen batch shifts against the cache. The port shifts against
    the previous token inside the sequence."""
    cu = torch.tensor([0, 2, 3])               # N = 2 sequences, longest has 2 tokens
    x = torch.randn(1, 3, 4)
    cache = torch.randn(2, 4)
    y, new = token_shift(x, cu, cache=cache, output_cache=True)
    torch.testing.assert_close(y[0, 1], x[0, 0] - x[0, 1])
    torch.testing.assert_close(new, x[0, [1, 2]])


def test_functional_pieces_keep_fla_return_structure():
    x = torch.randn(2, 5, 3)
    y, N, T, use_short, cache = token_shift_fwd(x, output_cache=True)
    assert (N, T, use_short) == (2, 5, True) and cache.shape == (2, 3)
    dx, dcache = token_shift_bwd(torch.ones_like(y), N, T, has_init_cache=True)
    assert dx.shape == x.shape and dcache.shape == (2, 3)
    assert token_shift(x).shape == x.shape                    # no cache: the output alone


def _shift_with_cache(x, cache):
    """Independent fp64 formula: ``y[t] = x[t-1] - x[t]`` with ``x[-1] = cache``; new cache ``x[T-1]``."""
    prev = torch.cat([cache.unsqueeze(1), x[:, :-1]], 1)
    return prev - x, x[:, -1]


@pytest.mark.parametrize("B,T", [(2, 1), (3, 9)])
def test_gradients_of_cache_and_new_cache(B, T):
    """The gradient of the incoming cache is the first token's ``dy``; the new cache's gradient lands
    on the last token (fp64 autograd of the formula)."""
    D = 5
    x, cache = torch.randn(B, T, D, dtype=torch.float64), torch.randn(B, D, dtype=torch.float64)
    gy, gc = torch.randn(B, T, D, dtype=torch.float64), torch.randn(B, D, dtype=torch.float64)
    leaves = [x.clone().requires_grad_(), cache.clone().requires_grad_()]
    y_ref, c_ref = _shift_with_cache(*leaves)
    dx_ref, dcache_ref = torch.autograd.grad((y_ref * gy).sum() + (c_ref * gc).sum(), leaves)

    xt, ct = x.clone().requires_grad_(), cache.clone().requires_grad_()
    y, new = token_shift(xt, cache=ct, output_cache=True)
    torch.testing.assert_close(y, y_ref.detach(), rtol=0, atol=0)
    dx, dcache = torch.autograd.grad((y * gy).sum() + (new * gc).sum(), [xt, ct])
    torch.testing.assert_close(dx, dx_ref, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(dcache, dcache_ref, rtol=1e-14, atol=1e-14)
