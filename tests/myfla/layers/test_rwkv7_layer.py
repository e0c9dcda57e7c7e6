"""RWKV7Attention against fla 0.4.0's own layer code (``fla/layers/rwkv7.py`` executed by file path
with fla's torch references standing in for its Triton ops, in fp64): parameters and initial values
under the same seed, outputs and gradients, the value-residual (``v_first``) path, left-padding masks,
varlen, prefill + decode with the Cache, and every constructor argument."""

from __future__ import annotations

import warnings

import pytest
import torch

from myfla.layers.rwkv7 import RWKV7Attention
from myfla.models.utils import Cache
from portaudit.numerics.fla040.reference_rwkv7 import RWKV7Reference
from tests.numerics import assert_rms

C, HD = 64, 16                      # hidden size, head_dim used throughout

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::UserWarning")


@pytest.fixture(scope="module")
def Ref(fla040_root):
    """fla's RWKV7Attention class on fp64 references."""
    return RWKV7Reference(fla040_root, fp64=True).layer_class()


def build(cls, seed=0, **kw):
    kw = {"hidden_size": C, "head_dim": HD, "layer_idx": 1, "num_hidden_layers": 4, **kw}
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(**kw)


def randomize(m, seed=1):
    """Random values in every parameter (RWKV's init zeroes o_proj and the LoRA inputs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            scale = 0.3 if name.startswith(("x_", "k_")) else 0.5 / max(1, p.shape[-1]) ** 0.5
            p.copy_(torch.randn(p.shape, generator=gen) * scale + (0.5 if name.startswith("x_") else 0.0))
    return m


def twin(Ref, **kw):
    """(mine, fla's) with identical random parameters; fla's in fp64."""
    mine = randomize(build(RWKV7Attention, **kw))
    ref = build(Ref, **kw)
    ref.load_state_dict(mine.state_dict())
    return mine, ref.double()


CONFIGS = [
    {},
    {"fuse_norm": True},
    {"layer_idx": 0},
    {"value_dim": 2 * C, "layer_idx": None},          # fla 0.4.0 can initialise this only without a layer index
    {"num_heads": 2, "head_dim": None, "elementwise_affine": False, "layer_idx": None},
    {"decay_low_rank_dim": 8, "gate_low_rank_dim": 16, "a_low_rank_dim": 8, "v_low_rank_dim": 8, "norm_eps": 1e-3},
]


@pytest.mark.parametrize("kw", CONFIGS)
def test_parameters_and_init_match_fla(Ref, kw):
    """Same names, shapes, dtypes and (under the same seed) the same initial values as fla's layer."""
    mine, ref = build(RWKV7Attention, seed=3, **kw), build(Ref, seed=3, **kw)
    sd, sd_ref = mine.state_dict(), ref.state_dict()
    assert list(sd) == list(sd_ref)
    for name in sd:
        assert sd[name].shape == sd_ref[name].shape and sd[name].dtype == sd_ref[name].dtype, name
        torch.testing.assert_close(sd[name], sd_ref[name], rtol=0, atol=0, msg=name)
    for attr in ("key_dim", "value_dim", "head_dim", "num_heads", "head_v_dim", "decay_low_rank_dim",
                 "gate_low_rank_dim", "a_low_rank_dim", "v_low_rank_dim", "fuse_norm", "mode"):
        assert getattr(mine, attr) == getattr(ref, attr), attr
    assert repr(mine.w_lora) == repr(ref.w_lora)


def _run(m, x, v_first, **kw):
    o, attn, cache, vf = m(x, v_first=v_first, **kw)
    assert attn is None
    return o, vf


@pytest.mark.parametrize("kw", CONFIGS)
@pytest.mark.parametrize("T,train", [(70, False), (20, False), (20, True)])
def test_forward_and_gradients_match_fla(Ref, kw, T, train):
    """chunk path (training or T >= 64) and recurrent path (eval, T < 64; forward only, as fla)."""
    mine, ref = twin(Ref, **kw)
    mine.train(train)
    ref.train(train)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, T, C, generator=gen)
    vf = torch.randn(2, T, mine.value_dim, generator=gen)
    x_ref, vf_ref = x.double().requires_grad_(), vf.double().requires_grad_()
    x_m, vf_m = x.clone().requires_grad_(), vf.clone().requires_grad_()
    o_ref, v_ref = _run(ref, x_ref, vf_ref)
    o, v = _run(mine, x_m, vf_m)
    assert o.dtype == torch.float32 and o.shape == (2, T, C)
    assert_rms("o", o_ref, o, 1e-5)
    assert_rms("v_first", v_ref, v, 1e-6)
    if mine.layer_idx == 0:
        assert v is not vf_m                   # layer 0 produces v_first
    else:
        assert v is vf_m                       # later layers hand it on
    if not (train or T >= 64):
        return
    go = torch.randn(2, T, C, generator=gen)
    (o_ref * go.double()).sum().backward()
    (o * go).sum().backward()
    assert_rms("dx", x_ref.grad, x_m.grad, 1e-4)
    if mine.layer_idx != 0:
        assert_rms("dv_first", vf_ref.grad, vf_m.grad, 1e-4)
    for (name, p), (_, p_ref) in zip(mine.named_parameters(), ref.named_parameters()):
        assert_rms("d" + name, p_ref.grad, p.grad, 1e-4)


def test_two_layers_share_v_first(Ref):
    """Layer 0's values feed layer 1's value residual, as the model chains them."""
    m0, r0 = twin(Ref, layer_idx=0)
    m1, r1 = twin(Ref, layer_idx=1)
    x = torch.randn(1, 80, C)
    h, vf = _run(m0, x, None)
    o, _ = _run(m1, h, vf)
    h_ref, vf_ref = _run(r0, x.double(), None)
    o_ref, _ = _run(r1, h_ref, vf_ref)
    assert_rms("o", o_ref, o, 1e-5)


def test_left_padding_mask_equals_unpadded_runs(Ref):
    mine, _ = twin(Ref)
    mine.eval()
    T = 80
    x, vf = torch.randn(2, T, C), torch.randn(2, T, C)
    mask = torch.ones(2, T, dtype=torch.long)
    mask[1, :11] = 0
    with torch.no_grad():
        o, _ = _run(mine, x, vf, attention_mask=mask)
        full, _ = _run(mine, x[1:, 11:], vf[1:, 11:])
        same, _ = _run(mine, x[:1], vf[:1])
    assert_rms("o[1]", full[0], o[1, 11:], 1e-5)
    assert_rms("o[0]", same[0], o[0], 1e-6)


def test_cu_seqlens_equals_per_sequence(Ref):
    mine, _ = twin(Ref)
    mine.train()
    cu = torch.tensor([0, 30, 31, 100])
    x, vf = torch.randn(1, 100, C), torch.randn(1, 100, C)
    o, _ = _run(mine, x, vf, cu_seqlens=cu)
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        on, _ = _run(mine, x[:, s:e], vf[:, s:e])
        assert_rms(f"o[{s}:{e}]", on, o[:, s:e], 1e-5)


@pytest.mark.parametrize("P", [67, 20])
def test_prefill_then_decode_equals_full_forward(Ref, P):
    """Two layers sharing a Cache, left-padded batch: prefill (chunk path for P >= 64, recurrent
    otherwise), then one token at a time, against per-sample unpadded full forwards."""
    m0, _ = twin(Ref, layer_idx=0)
    m1, _ = twin(Ref, layer_idx=1)
    m0.eval()
    m1.eval()
    T = 76
    x = torch.randn(2, T, C)
    mask = torch.ones(2, T, dtype=torch.long)
    mask[1, :5] = 0

    def step(xs, am, cache):
        h, vf = m0(xs, attention_mask=am, past_key_values=cache, use_cache=True)[::3]
        o, _, cache, _ = m1(h, attention_mask=am, past_key_values=cache, use_cache=True, v_first=vf)
        return o, cache

    with torch.no_grad():
        cache = Cache()
        o, cache = step(x[:, :P], mask[:, :P], cache)
        outs = [o]
        assert len(cache) == 2 and cache.get_seq_length() == P
        st = cache[1]
        assert st["recurrent_state"].shape == (2, C // HD, HD, HD)
        assert st["recurrent_state"].dtype == torch.float32
        assert st["conv_state"].shape == (2, C)
        for t in range(P, T):
            o, cache = step(x[:, t:t + 1], mask[:, :t + 1], cache)
            outs.append(o)
        decoded = torch.cat(outs, 1)
        for b, start in enumerate([0, 5]):
            h, vf = _run(m0, x[b:b + 1, start:], None)
            full, _ = _run(m1, h, vf)
            assert_rms(f"o[{b}]", full[0], decoded[b, start:], 1e-5)


def test_fla_040_init_failures_are_kept(Ref):
    """fla 0.4.0's RWKV-7 init writes hidden-size profiles into the value LoRA's bias and the norm's
    weight, so it fails for ``value_dim != hidden_size`` and for ``elementwise_affine=False`` whenever
    a layer index asks for the RWKV-7 init (still so in fla 0.6.0). The port fails the same way."""
    for kw, error in [({"value_dim": 2 * C}, RuntimeError), ({"elementwise_affine": False}, AttributeError)]:
        for cls in (Ref, RWKV7Attention):
            with pytest.raises(error):
                build(cls, **kw)


def test_constructor_checks():
    with pytest.raises(AssertionError, match="Not supported mode `parallel`"):
        build(RWKV7Attention, mode="parallel")
    with pytest.raises(ValueError, match="Either `head_dim` or `num_heads` must be specified."):
        build(RWKV7Attention, head_dim=None, num_heads=None)
    m = build(RWKV7Attention, hidden_size=512, head_dim=128, layer_idx=None)
    # fla's rank formulas, max(32, round(c * sqrt(hidden) [* head_dim / 64] / 32) * 32) with Python's
    # round: decay/a 2.5 * 22.6 * 2 / 32 = 3.5 -> 4, gate 5 * 22.6 / 32 = 3.5 -> 4, v 1.7 * 22.6 * 2 / 32 -> 2
    assert (m.decay_low_rank_dim, m.gate_low_rank_dim, m.a_low_rank_dim, m.v_low_rank_dim) == (128, 128, 128, 64)
    assert hasattr(m, "v_lora")                       # layer_idx None != 0: the value LoRA exists
    assert not hasattr(build(RWKV7Attention, layer_idx=0), "v_lora")
    with pytest.warns(UserWarning, match="According to Bo"):
        RWKV7Attention(hidden_size=C, head_dim=HD, layer_idx=1, num_hidden_layers=2)
