"""myfla.modules.rotary against fla 0.4.0's own code: fla's ``RotaryEmbedding`` class (tables, XPos
scaling, dispatch) run on fla's ``rotary_embedding_ref`` applied to each token's table row, loaded
from the upstream tree by file path; gradients against autograd through that reference in fp64."""

from __future__ import annotations

import pytest
import torch

from myfla.modules.rotary import RotaryEmbedding, rotary_embedding, rotary_embedding_ref, rotate_half
from tests.fla_refs import load_function
from tests.myfla.models.fla_oracle import make_ref_rotary_embedding


@pytest.fixture(scope="module")
def fla_rotary(fla040_root):
    ref = load_function(fla040_root, "fla/modules/rotary.py", ["rotate_half", "rotary_embedding_ref"])
    ref_apply = make_ref_rotary_embedding(ref["rotary_embedding_ref"])
    cls = load_function(fla040_root, "fla/modules/rotary.py", "RotaryEmbedding",
                        extra_globals={"rotary_embedding": ref_apply})
    return cls, ref, ref_apply


def _pair(fla_rotary, **kw):
    cls = fla_rotary[0]
    return cls(**kw), RotaryEmbedding(**kw)


CASES = [
    dict(kw=dict(dim=16), offset=0, cu=False),
    dict(kw=dict(dim=16, base=500.0), offset=5, cu=False),
    dict(kw=dict(dim=16, interleaved=True), offset=3, cu=False),
    dict(kw=dict(dim=8), offset=2, cu=False),                       # rotary on 8 of 16 channels
    dict(kw=dict(dim=16, scale_base=512), offset=0, cu=False),     # XPos: keys use the inverse scale
    dict(kw=dict(dim=16), offset=torch.tensor([0, 4]), cu=False),
    dict(kw=dict(dim=16), offset=torch.tensor([-3, 2]), cu=False),  # left padding: negative offsets
    dict(kw=dict(dim=16), offset=0, cu=True),
    dict(kw=dict(dim=16, interleaved=True), offset=torch.tensor([1, 0, 6]), cu=True),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_module_matches_fla(fla_rotary, case):
    c = CASES[case]
    ref_mod, mod = _pair(fla_rotary, **c["kw"])
    if c["cu"]:
        q, k = torch.randn(1, 13, 3, 16, dtype=torch.float64), torch.randn(1, 13, 2, 16, dtype=torch.float64)
        cu = torch.tensor([0, 4, 5, 13]) if isinstance(c["offset"], torch.Tensor) else torch.tensor([0, 6, 13])
    else:
        q, k = torch.randn(2, 7, 3, 16, dtype=torch.float64), torch.randn(2, 7, 2, 16, dtype=torch.float64)
        cu = None
    max_seqlen = 32 if isinstance(c["offset"], torch.Tensor) else None
    ref_q, ref_k = ref_mod(q.clone(), k.clone(), seqlen_offset=c["offset"], cu_seqlens=cu, max_seqlen=max_seqlen)
    my_q, my_k = mod(q.clone(), k.clone(), seqlen_offset=c["offset"], cu_seqlens=cu, max_seqlen=max_seqlen)
    torch.testing.assert_close(my_q, ref_q, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(my_k, ref_k, rtol=1e-12, atol=1e-12)
    # non-persistent buffers: nothing in the state_dict, as in fla
    assert list(mod.state_dict()) == list(ref_mod.state_dict()) == []
    assert repr(mod) == repr(ref_mod)


def test_helpers_match_fla(fla_rotary):
    ref = fla_rotary[1]
    x = torch.randn(2, 5, 3, 8, dtype=torch.float64)
    cos, sin = torch.randn(2, 5, 3, dtype=torch.float64), torch.randn(2, 5, 3, dtype=torch.float64)
    for interleaved in (False, True):
        torch.testing.assert_close(rotate_half(x, interleaved), ref["rotate_half"](x, interleaved))
        torch.testing.assert_close(rotary_embedding_ref(x, cos, sin, interleaved),
                                   ref["rotary_embedding_ref"](x, cos, sin, interleaved))


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("varlen", [False, True])
def test_backward_is_autograd_of_the_rotation(fla_rotary, interleaved, varlen):
    ref_apply = fla_rotary[2]
    cos = torch.randn(20, 2, dtype=torch.float64)
    sin = torch.randn(20, 2, dtype=torch.float64)
    B = 1 if varlen else 2
    x = torch.randn(B, 5, 1, 6, dtype=torch.float64, requires_grad=True)    # rotary on 4 of 6 channels
    cu = torch.tensor([0, 2, 5]) if varlen else None
    offsets = torch.tensor([2, 5]) if varlen else 3
    do = torch.randn(B, 5, 1, 6, dtype=torch.float64)
    (dx,) = torch.autograd.grad((rotary_embedding(x, cos, sin, interleaved, False, offsets, cu) * do).sum(), x)
    (rx,) = torch.autograd.grad((ref_apply(x, cos, sin, interleaved, False, offsets, cu) * do).sum(), x)
    torch.testing.assert_close(dx, rx)
    assert torch.autograd.gradcheck(lambda t: rotary_embedding(t, cos, sin, interleaved, False, offsets, cu), (x,))


def test_inplace_rotates_the_input():
    cos, sin = torch.randn(10, 4), torch.randn(10, 4)
    x = torch.randn(2, 5, 2, 8)
    expected = rotary_embedding(x.clone(), cos, sin)
    y = rotary_embedding(x, cos, sin, inplace=True)
    assert y.data_ptr() == x.data_ptr()
    torch.testing.assert_close(x, expected)


def test_fla_asserts():
    cos, sin = torch.randn(4, 4), torch.randn(4, 4)
    with pytest.raises(AssertionError, match="TR must be >= T"):
        rotary_embedding(torch.randn(1, 6, 1, 8), cos, sin)
    with pytest.raises(AssertionError, match="Input and cos/sin must have the same dtype"):
        rotary_embedding(torch.randn(1, 2, 1, 8, dtype=torch.float64), cos, sin)
    with pytest.raises(AssertionError):
        rotary_embedding(torch.randn(1, 2, 1, 8), cos, sin, seqlen_offsets=3)
