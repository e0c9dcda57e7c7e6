"""myfla's KDA and GatedDeltaNet models against fla 0.4.0's own model code (fla_oracle.py): the
state_dict, logits, losses and every parameter's gradient (fp64, fla's layers on fla's naive
references), the losses' paths, the model API, weight initialisation, gradient checkpointing and
the fixes for current transformers."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

pytest.importorskip("transformers", reason="myfla's models need transformers")

import myfla.models as M  # noqa: E402
from myfla.models import utils as cache_utils  # noqa: E402
from myfla.models.compat import TRANSFORMERS_5  # noqa: E402
from tests.myfla.models.fla_oracle import config_kwargs, family_classes, param_shapes  # noqa: E402
from tests.numerics import assert_rms  # noqa: E402

FAMILIES = ["kda", "gated_deltanet"]
HYBRID = dict(attn=dict(layers=[1], num_heads=4, num_kv_heads=2, qkv_bias=True, window_size=6))

STATE_DICT_CONFIGS = [
    ("kda", {}),
    ("kda", dict(attn=dict(layers=[0], num_heads=4, num_kv_heads=2, qkv_bias=True))),
    ("kda", dict(tie_word_embeddings=True)),
    ("kda", dict(num_v_heads=4)),
    ("kda", dict(fuse_norm=False, use_short_conv=False)),
    ("kda", dict(allow_neg_eigval=True, expand_v=2.0, intermediate_size=40)),
    ("gated_deltanet", {}),
    ("gated_deltanet", dict(attn=dict(layers=[1], num_heads=2))),
    ("gated_deltanet", dict(num_v_heads=4, use_gate=False)),
    ("gated_deltanet", dict(fuse_norm=False, tie_word_embeddings=True, expand_v=2.0)),
]


def _pair(ns, family, dtype=torch.float64, **overrides):
    """fla's model (oracle) and myfla's with the same weights."""
    FC, _, FL = family_classes(ns, family)
    MC, _, ML = family_classes(M, family)
    torch.manual_seed(1)
    ref = FL(FC(**config_kwargs(family, **overrides))).to(dtype)
    mine = ML(MC(**config_kwargs(family, **overrides))).to(dtype)
    mine.load_state_dict(ref.state_dict())
    return ref, mine


def _batch(T, B=2, pad=5, vocab=97, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, :pad] = 0
    labels = ids.masked_fill(mask == 0, -100)
    return ids, mask, labels


@pytest.mark.parametrize("case", range(len(STATE_DICT_CONFIGS)))
def test_state_dict_equals_fla(fla_ref, case):
    family, overrides = STATE_DICT_CONFIGS[case]
    FC, FM, FL = family_classes(fla_ref, family)
    MC, MM, ML = family_classes(M, family)
    for ref_cls, my_cls in ((FL, ML), (FM, MM)):
        ref = ref_cls(FC(**config_kwargs(family, **overrides)))
        mine = my_cls(MC(**config_kwargs(family, **overrides)))
        assert list(param_shapes(mine).items()) == list(param_shapes(ref).items())
        assert [n for n, _ in mine.named_parameters()] == [n for n, _ in ref.named_parameters()]
    if overrides.get("tie_word_embeddings"):
        assert mine_lm_tied(ML(MC(**config_kwargs(family, **overrides))))


def mine_lm_tied(model) -> bool:
    return model.lm_head.weight is model.model.embeddings.weight


@pytest.mark.parametrize("family,overrides", [
    ("kda", {}), ("kda", HYBRID), ("gated_deltanet", {}),
    ("gated_deltanet", dict(num_v_heads=4, use_gate=False, fuse_norm=False)),
])
def test_logits_loss_and_gradients_match_fla(fla_ref, family, overrides):
    ref, mine = _pair(fla_ref, family, **overrides)
    # eval, 20 tokens: the fused_recurrent path; padded positions excluded
    ids, mask, labels = _batch(20)
    ref.eval(), mine.eval()
    with torch.no_grad():
        lr = ref(ids, attention_mask=mask, use_cache=False).logits
        lm = mine(ids, attention_mask=mask, use_cache=False).logits
    keep = mask.bool()
    # fp64 throughout, except that fla's KDA gate returns fp32 (myfla keeps that): ~1e-8 for KDA
    assert_rms("logits", lr[keep], lm[keep], 1e-7)
    # training, 70 tokens (> 64: chunk mode, as fla requires), plain cross entropy
    ids, mask, labels = _batch(70, pad=9)
    ref.train(), mine.train()
    lr = ref(ids, attention_mask=mask, labels=labels).loss
    lm = mine(ids, attention_mask=mask, labels=labels).loss
    assert_rms("loss", lr.reshape(1), lm.reshape(1), 1e-8)
    gr = torch.autograd.grad(lr, list(ref.parameters()))
    gm = torch.autograd.grad(lm, list(mine.parameters()))
    for (name, _), a, b in zip(mine.named_parameters(), gr, gm):
        assert_rms(name, a, b, 1e-6, atol=1e-12)


@pytest.mark.parametrize("family", FAMILIES)
def test_fused_losses_equal_plain_cross_entropy(fla_glue, family):
    """KDA trains with the fused linear cross entropy when ``fuse_cross_entropy`` (no logits
    returned); GatedDeltaNet with the fused cross entropy (in-place backward: the logits end up
    holding their gradient) or, with ``fuse_linear_cross_entropy``, the fused linear one."""
    ids, mask, labels = _batch(70, pad=9)
    plain = _pair(fla_glue, family, fuse_cross_entropy=False)[1].train()
    variants = [dict(fuse_cross_entropy=True)]
    if family == "gated_deltanet":
        variants.append(dict(fuse_cross_entropy=False, fuse_linear_cross_entropy=True))
    out = plain(ids, attention_mask=mask, labels=labels)
    ref_grads = torch.autograd.grad(out.loss, list(plain.parameters()))
    for v in variants:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = _pair(fla_glue, family, **v)[1].train()
        model.load_state_dict(plain.state_dict())
        o = model(ids, attention_mask=mask, labels=labels)
        torch.testing.assert_close(o.loss, out.loss)
        linear = (family == "kda" and v.get("fuse_cross_entropy")) or v.get("fuse_linear_cross_entropy")
        assert (o.logits is None) == bool(linear)
        before = None if o.logits is None else o.logits.detach().clone()
        grads = torch.autograd.grad(o.loss, list(model.parameters()))
        for (name, _), a, b in zip(model.named_parameters(), ref_grads, grads):
            torch.testing.assert_close(b, a, msg=name)
        if before is not None:   # FusedCrossEntropyLoss(inplace_backward=True)
            assert not torch.equal(o.logits, before)


@pytest.mark.parametrize("family,fused", [("kda", True), ("kda", False), ("gated_deltanet", False)])
def test_l2warp_matches_fla(fla_glue, family, fused):
    """use_l2warp: fla's own l2warp.py on the logits, or the fused linear loss's L2Wrap term."""
    ids, mask, labels = _batch(70, pad=9)
    ref, mine = _pair(fla_glue, family, use_l2warp=True, fuse_cross_entropy=fused)
    ref.train(), mine.train()
    lr = ref(ids, attention_mask=mask, labels=labels).loss
    lm = mine(ids, attention_mask=mask, labels=labels).loss
    torch.testing.assert_close(lm, lr)
    for (name, _), a, b in zip(mine.named_parameters(), torch.autograd.grad(lr, list(ref.parameters())),
                               torch.autograd.grad(lm, list(mine.parameters()))):
        torch.testing.assert_close(b, a, msg=name)


@pytest.mark.parametrize("family", FAMILIES)
def test_model_outputs_match_fla_structure(fla_glue, family):
    ref, mine = _pair(fla_glue, family, dtype=torch.float32)
    ref.eval(), mine.eval()
    ids, mask, _ = _batch(12)
    with torch.no_grad():
        a = ref(ids, attention_mask=mask, output_hidden_states=True, return_dict=False)
        b = mine(ids, attention_mask=mask, output_hidden_states=True, return_dict=False)
    assert len(a) == len(b) == 3
    torch.testing.assert_close(b[0], a[0])
    assert isinstance(b[1], cache_utils.Cache) and len(b[1]) == 2
    assert len(b[2]) == len(a[2]) == 3
    for x, y in zip(a[2], b[2]):
        torch.testing.assert_close(y, x)
    with torch.no_grad():
        out = mine(ids, attention_mask=mask)
        emb = mine.model(inputs_embeds=mine.model.embeddings(ids), attention_mask=mask, use_cache=False)
        torch.testing.assert_close(mine.lm_head(emb.last_hidden_state), out.logits)
        kept = mine(ids, attention_mask=mask, logits_to_keep=3).logits
        torch.testing.assert_close(kept, out.logits[:, -3:])
    name = "KDAModel" if family == "kda" else "GatedDeltaNetModel"
    with pytest.warns(UserWarning, match=f"`{name}` does not `output_attentions` now, setting it to `False`."):
        mine(ids, output_attentions=True)
    with pytest.raises(ValueError, match="You cannot specify both input_ids and inputs_embeds at the same time"):
        mine(ids, inputs_embeds=mine.model.embeddings(ids))
    with pytest.raises(ValueError, match="You have to specify either input_ids or inputs_embeds"):
        mine.model()


@pytest.mark.parametrize("family", FAMILIES)
def test_labels_are_shifted_inside(family):
    MC, _, ML = family_classes(M, family)
    model = ML(MC(**config_kwargs(family))).eval()
    ids, mask, labels = _batch(10)
    with torch.no_grad():
        out = model(ids, attention_mask=mask, labels=labels)
    target = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], 1)
    expected = torch.nn.functional.cross_entropy(out.logits.reshape(-1, 97), target.reshape(-1))
    torch.testing.assert_close(out.loss, expected)


def test_configs_validate_like_fla():
    for Config in (M.KDAConfig, M.GatedDeltaNetConfig):
        with pytest.raises(ValueError, match="attn must be a dictionary"):
            Config(attn=[1])
        with pytest.raises(ValueError, match="Layer indices must be provided to initialize hybrid attention layers"):
            Config(attn=dict(num_heads=2))
        with pytest.raises(ValueError, match="Number of heads must be provided to initialize hybrid attention layers"):
            Config(attn=dict(layers=[0]))
        cfg = Config(attn=dict(layers=[0], num_heads=4))
        assert cfg.attn == dict(layers=[0], num_heads=4, num_kv_heads=4, qkv_bias=False, window_size=None,
                                rope_theta=10000.)
    with pytest.raises(ValueError, match="`fuse_cross_entropy` and `fuse_linear_cross_entropy` cannot be True"):
        M.GatedDeltaNetConfig(fuse_cross_entropy=True, fuse_linear_cross_entropy=True)
    with pytest.warns(UserWarning, match="`fuse_linear_cross_entropy` is enabled"):
        M.GatedDeltaNetConfig(fuse_cross_entropy=False, fuse_linear_cross_entropy=True)
    k, g = M.KDAConfig(), M.GatedDeltaNetConfig()
    assert (k.model_type, k.hidden_size, k.num_heads, k.head_dim, k.num_hidden_layers, k.expand_v) == \
        ("kda", 2048, 16, 128, 24, 1.0)
    assert (g.model_type, g.num_heads, g.head_dim, g.num_hidden_layers, g.expand_v, g.fuse_linear_cross_entropy) == \
        ("gated_deltanet", 6, 256, 21, 2.0, False)


@pytest.mark.parametrize("family", FAMILIES)
def test_init_weights(family):
    MC, _, ML = family_classes(M, family)
    cfg = MC(**config_kwargs(family, initializer_range=0.05, num_hidden_layers=3))
    torch.manual_seed(0)
    model = ML(cfg)
    for layer in model.model.layers:
        a = layer.attn
        low = 1.0 if family == "kda" else 0.0
        assert bool((a.A_log.exp() >= low - 1e-6).all() and (a.A_log.exp() <= 16 + 1e-4).all())
        dt = torch.nn.functional.softplus(a.dt_bias)
        assert bool((dt >= 1e-4 - 1e-7).all() and (dt <= 0.1 + 1e-6).all())
        if family == "gated_deltanet":
            assert a.A_log._no_weight_decay and a.dt_bias._no_weight_decay
        else:
            assert a.dt_bias._is_hf_initialized
    std = model.model.layers[0].mlp.up_proj.weight.std().item()
    assert 0.04 < std < 0.06
    assert model.model.embeddings.weight.std().item() == pytest.approx(0.05, rel=0.2)
    assert torch.equal(model.model.norm.weight, torch.ones_like(model.model.norm.weight))
    o = model.model.layers[0].attn.o_proj
    model._init_weights(model.model.layers[0].attn, prenorm_residual_strategy='zero')
    assert not o.weight.any()
    model._init_weights(model.model.layers[0].mlp, prenorm_residual_strategy='rescale')
    w = model.model.layers[0].mlp.down_proj.weight
    bound = 1 / math.sqrt(w.shape[1]) / math.sqrt(2 * 3)   # kaiming_uniform(a=sqrt 5) / sqrt(2 L)
    assert w.abs().max().item() <= bound + 1e-7 and w.abs().max().item() > bound / 2
    with pytest.raises(ValueError, match="Invalid prenorm_residual_strategy: half"):
        model._init_weights(model.model.layers[0].mlp, prenorm_residual_strategy='half')


@pytest.mark.parametrize("use_reentrant", [None, False, True], ids=["default", "non-reentrant", "reentrant"])
@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_checkpointing_gives_the_same_gradients(family, use_reentrant):
    """transformers' default checkpointing mode (reentrant in 4.x, not in 5.x) and both named."""
    MC, _, ML = family_classes(M, family)
    torch.manual_seed(0)
    model = ML(MC(**config_kwargs(family, fuse_cross_entropy=False))).double().train()
    ids, mask, labels = _batch(70, pad=9)
    model(ids, attention_mask=mask, labels=labels).loss.backward()
    ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    model.gradient_checkpointing_enable(
        gradient_checkpointing_kwargs=None if use_reentrant is None else {"use_reentrant": use_reentrant})
    assert model.model.gradient_checkpointing or all(b.gradient_checkpointing for b in model.model.layers)
    # .backward(): transformers 4.x checkpoints with use_reentrant=True, which autograd.grad refuses
    model(ids, attention_mask=mask, labels=labels, use_cache=False).loss.backward()
    for a, p in zip(ref, model.parameters()):
        torch.testing.assert_close(p.grad, a)


# -- fixes for current transformers (manifest deviations) -------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_tied_embeddings_build_with_fused_cross_entropy(family):
    """fla 0.4.0 fails to build this under transformers 5 ('list' object has no attribute 'keys')."""
    MC, _, ML = family_classes(M, family)
    model = ML(MC(**config_kwargs(family, tie_word_embeddings=True, fuse_cross_entropy=True)))
    assert model.lm_head.weight is model.model.embeddings.weight
    expected = {"lm_head.weight": "model.embeddings.weight"} if TRANSFORMERS_5 else ["lm_head.weight"]
    assert ML._tied_weights_keys == expected


def test_kda_generate_works(fla_glue):
    """fla 0.4.0's KDAForCausalLM.generate fails inside fla under current transformers ('int' object
    has no attribute 'shape' with 5.x, a 4-D mask assertion with 4.57); myfla's goes through
    FLAGenerationMixin as fla 0.4.2 does."""
    ref, mine = _pair(fla_glue, "kda", dtype=torch.float32)
    ids, mask, _ = _batch(9)
    ref.eval(), mine.eval()
    with pytest.raises((AttributeError, AssertionError)):
        ref.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=False)
    out = mine.generate(ids, attention_mask=mask, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert out.shape == (2, 15) and torch.equal(out[:, :9], ids)
    assert issubclass(M.KDAForCausalLM, cache_utils.FLAGenerationMixin)


def test_cache_mask_sizes_accept_both_transformers_conventions():
    cache = cache_utils.Cache()
    cache.update(recurrent_state=torch.zeros(1), layer_idx=0, offset=5)
    assert cache.get_mask_sizes(torch.arange(3), 0) == (8, 0)     # transformers 4.x: cache_position
    assert cache.get_mask_sizes(3, 0) == (8, 0)                   # transformers 5.x: query length


def _continuation_gap(model, family_model_cls_name, x, mask, T0):
    """max |prefill + one-token steps through the cache - full run| over kept positions."""
    with torch.no_grad():
        full = model(inputs_embeds=x, attention_mask=mask, use_cache=False).last_hidden_state
        out = model(inputs_embeds=x[:, :T0], attention_mask=mask[:, :T0], use_cache=True)
        pieces, cache = [out.last_hidden_state], out.past_key_values
        for t in range(T0, x.shape[1]):
            out = model(inputs_embeds=x[:, t:t + 1], attention_mask=mask[:, :t + 1], past_key_values=cache,
                        use_cache=True)
            pieces.append(out.last_hidden_state)
            cache = out.past_key_values
    return (torch.cat(pieces, 1) - full)[mask.bool()].abs().max().item()


def test_attention_after_a_recurrent_layer_decodes_at_the_right_positions(fla_glue):
    """fla 0.4.0 counts cached tokens when layer 0 updates, so an attention layer behind a recurrent
    first layer reads a count that already includes the current step and rotates decoded tokens one
    position too far; fla 0.4.2 counts per layer. fla 0.4.0's code (the oracle, with myfla's layers)
    shows the gap; myfla decodes exactly."""
    overrides = dict(attn=dict(layers=[1], num_heads=4, num_kv_heads=2), initializer_range=0.2)
    FC, FM, _ = family_classes(fla_glue, "gated_deltanet")
    MC, MMod, _ = family_classes(M, "gated_deltanet")
    torch.manual_seed(0)
    ref = FM(FC(**config_kwargs("gated_deltanet", **overrides))).eval()
    mine = MMod(MC(**config_kwargs("gated_deltanet", **overrides))).eval()
    mine.load_state_dict(ref.state_dict())
    x = torch.randn(2, 14, 64)
    mask = torch.ones(2, 14, dtype=torch.long)
    mask[1, :3] = 0
    assert _continuation_gap(ref, "fla", x, mask, 8) > 1e-3
    assert _continuation_gap(mine, "myfla", x, mask, 8) < 1e-5


@pytest.mark.parametrize("family,overrides", [("kda", {}), ("gated_deltanet", {}), ("kda", HYBRID)])
def test_initialisation_is_fla_s(fla_ref, family, overrides):
    """From the same seed, myfla's models initialise to exactly fla's weights (fla's _init_weights on
    fla's own layer code), also under both prenorm_residual_strategy schemes."""
    from functools import partial
    FC, _, FL = family_classes(fla_ref, family)
    MC, _, ML = family_classes(M, family)
    for strategy in (None, "rescale", "zero"):
        torch.manual_seed(5)
        ref = FL(FC(**config_kwargs(family, **overrides)))
        torch.manual_seed(5)
        mine = ML(MC(**config_kwargs(family, **overrides)))
        if strategy is not None:
            torch.manual_seed(6)
            ref.apply(partial(ref._init_weights, prenorm_residual_strategy=strategy, num_residuals_per_layer=3))
            torch.manual_seed(6)
            mine.apply(partial(mine._init_weights, prenorm_residual_strategy=strategy, num_residuals_per_layer=3))
        for k, v in ref.state_dict().items():
            assert torch.equal(mine.state_dict()[k], v), (strategy, k)


@pytest.mark.parametrize("family,overrides", [("kda", {}), ("gated_deltanet", {}), ("kda", HYBRID)])
def test_fp32_gradients_against_an_fp64_copy(fla_ref, family, overrides):
    """myfla in fp32 against an fp64 copy of the same weights in fla's model code on fla's naive
    references (training, 70 tokens, padded batch)."""
    ref, mine = _pair(fla_ref, family, **overrides)
    mine = mine.float().train()
    ref.train()
    ids, mask, labels = _batch(70, pad=9)
    lr = ref(ids, attention_mask=mask, labels=labels).loss
    lm = mine(ids, attention_mask=mask, labels=labels).loss
    assert abs(lm.item() - lr.item()) < 1e-5 * abs(lr.item())
    for (name, _), a, b in zip(mine.named_parameters(), torch.autograd.grad(lr, list(ref.parameters())),
                               torch.autograd.grad(lm, list(mine.parameters()))):
        assert_rms(name, a, b.double(), 1e-4, atol=1e-9)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_few_optimizer_steps_lower_the_loss(family):
    MC, _, ML = family_classes(M, family)
    torch.manual_seed(0)
    model = ML(MC(**config_kwargs(family, fuse_cross_entropy=True))).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids, mask, labels = _batch(70, pad=9)
    losses = []
    for _ in range(6):
        loss = model(ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0] - 0.5, losses
