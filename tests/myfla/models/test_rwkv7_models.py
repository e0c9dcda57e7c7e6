"""myfla's RWKV-7 models against fla 0.4.0's own model code (fla_rwkv7_oracle.py): initialisation
from the same seed, the state_dict, logits, losses and every parameter's gradient (fp64 oracle),
prefill + decode through the Cache, the version-1 weight migration, checkpoints both ways, gradient
checkpointing."""

from __future__ import annotations

import warnings

import pytest
import torch

pytest.importorskip("transformers", reason="myfla's models need transformers")

import myfla.models as M  # noqa: E402
from tests.myfla.models.checkpoint_guard import guard_recomputation  # noqa: E402
from tests.myfla.models.fla_rwkv7_oracle import load_fla_rwkv7_models, rwkv7_config_kwargs  # noqa: E402
from tests.numerics import assert_rms  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning", "ignore::FutureWarning")

HYBRID = dict(num_hidden_layers=3, attn=dict(layers=[1], num_heads=4, num_kv_heads=2, qkv_bias=True, window_size=6))
CONFIGS = [
    {},
    dict(norm_first=False),
    dict(fuse_norm=False),
    dict(norm_bias=False, hidden_act="relu"),
    dict(tie_word_embeddings=True),
    dict(num_heads=2, head_dim=None, intermediate_size=72),
    HYBRID,
]


@pytest.fixture(scope="module")
def fla_rwkv7(fla040_root):
    """fla's RWKV-7 models with fla's layer code on fla's references (fp64 oracles for fp64 inputs)."""
    return load_fla_rwkv7_models(fla040_root, fp64=True)


@pytest.fixture(scope="module")
def fla_rwkv7_fp32(fla040_root):
    """The same oracle computing in the inputs' dtype (fp32 weights, fp32 activations)."""
    return load_fla_rwkv7_models(fla040_root, fp64=False)


def _build(ns, seed=5, **overrides):
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ns.RWKV7ForCausalLM(ns.RWKV7Config(**rwkv7_config_kwargs(**overrides)))


def _randomize(model, seed=1):
    """Random values in every parameter (RWKV's init zeroes the output projections and LoRA inputs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            scale = 0.3 if leaf.startswith(("x_", "k_")) else 0.5 / max(1, p.shape[-1]) ** 0.5
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale + (0.5 if leaf.startswith("x_") else 0.0))
    return model


def _pair(ns, dtype=torch.float64, **overrides):
    """fla's model (oracle) and myfla's with the same random weights."""
    ref = _randomize(_build(ns, **overrides)).to(dtype)
    mine = _build(M, **overrides).to(dtype)
    mine.load_state_dict(ref.state_dict())
    return ref, mine


def _batch(T, B=2, pad=5, vocab=97, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    if B > 1:
        mask[1, :pad] = 0                 # the second row left-padded
    labels = ids.masked_fill(mask == 0, -100)
    return ids, mask, labels


@pytest.mark.parametrize("overrides", CONFIGS)
def test_initialisation_and_state_dict_are_fla_s(fla_rwkv7, overrides):
    """Same keys, shapes, dtypes and, from the same seed, bit-identical initial weights (RWKV-7's
    own scheme: embeddings, orthogonal LM head and keys, CMix_x070's x_k, the layers' init)."""
    ref, mine = _build(fla_rwkv7, **overrides), _build(M, **overrides)
    sd_ref, sd = ref.state_dict(), mine.state_dict()
    assert list(sd) == list(sd_ref)
    for k, v in sd_ref.items():
        assert sd[k].shape == v.shape and sd[k].dtype == v.dtype, k
        assert torch.equal(sd[k], v), k
    assert mine.config.to_dict()["value_dim"] == ref.config.to_dict()["value_dim"]


def test_configs_validate_like_fla(fla_rwkv7):
    for kw in (dict(fuse_cross_entropy=True, fuse_linear_cross_entropy=True), dict(attn=[1]),
               dict(attn=dict(num_heads=2)), dict(attn=dict(layers=[0]))):
        with pytest.raises(ValueError) as e_ref:
            fla_rwkv7.RWKV7Config(**rwkv7_config_kwargs(**kw))
        with pytest.raises(ValueError) as e:
            M.RWKV7Config(**rwkv7_config_kwargs(**kw))
        assert str(e.value) == str(e_ref.value)
    for kw in (dict(value_dim=32), dict(value_dim=96), dict(value_dim=[64])):
        with pytest.raises(AssertionError) as e_ref:
            fla_rwkv7.RWKV7Config(**rwkv7_config_kwargs(**kw))
        with pytest.raises(AssertionError) as e:
            M.RWKV7Config(**rwkv7_config_kwargs(**kw))
        assert str(e.value) == str(e_ref.value)
    c, c_ref = M.RWKV7Config(hidden_size=64, num_heads=8, head_dim=None), \
        fla_rwkv7.RWKV7Config(hidden_size=64, num_heads=8, head_dim=None)
    assert (c.head_dim, c.num_heads, c.value_dim) == (c_ref.head_dim, c_ref.num_heads, c_ref.value_dim) == (8, 8, [64] * 24)


def test_value_dim_other_than_hidden_size_fails_as_in_fla(fla_rwkv7):
    """fla 0.4.0's RWKV7Attention cannot initialise value_dim != hidden_size with a layer index (the
    layer's own quirk, kept): both models refuse the same way."""
    with pytest.raises(Exception) as e_ref:
        _build(fla_rwkv7, value_dim=128)
    with pytest.raises(Exception) as e:
        _build(M, value_dim=128)
    assert type(e.value) is type(e_ref.value) and str(e.value) == str(e_ref.value)


@pytest.mark.parametrize("overrides", [{}, dict(fuse_norm=False, norm_first=False),
                                       dict(use_l2warp=False, fuse_cross_entropy=True),
                                       dict(fuse_linear_cross_entropy=True)])
def test_logits_loss_and_gradients_match_fla(fla_rwkv7, overrides):
    """Training mode (the chunk path), a left-padded batch of 70 tokens, fp64: logits, loss and the
    gradient of every parameter against fla's model code."""
    ref, mine = _pair(fla_rwkv7, **overrides)
    ref.train()
    mine.train()
    ids, mask, labels = _batch(70, pad=9)
    out_ref = ref(ids, attention_mask=mask, labels=labels)
    out = mine(ids, attention_mask=mask, labels=labels)
    if overrides.get("fuse_linear_cross_entropy"):
        assert out.logits is None and out_ref.logits is None
    else:
        assert_rms("logits", out_ref.logits, out.logits, 1e-10)
    assert abs(out.loss.item() - out_ref.loss.item()) < 1e-10 * abs(out_ref.loss.item())
    grads_ref = torch.autograd.grad(out_ref.loss, list(ref.parameters()))
    grads = torch.autograd.grad(out.loss, list(mine.parameters()))
    for (name, _), a, b in zip(mine.named_parameters(), grads_ref, grads):
        assert_rms(name, a, b, 1e-8, atol=1e-12)


def test_hybrid_attention_layers_fail_in_forward_as_in_fla(fla_rwkv7):
    """fla 0.4.0's RWKV7Block unpacks four values (with v_first) from every time mixer, but the softmax
    Attention of an ``attn`` layer returns three: a hybrid RWKV-7 model builds (state_dict above) and
    fails on its first forward. fla 0.6.0 still does; the port keeps the quirk, with fla's error."""
    ref, mine = _pair(fla_rwkv7, **HYBRID)
    ids, mask, _ = _batch(12, pad=2)
    with pytest.raises(ValueError) as e_ref:
        ref(ids, attention_mask=mask)
    with pytest.raises(ValueError) as e:
        mine(ids, attention_mask=mask)
    assert str(e.value) == str(e_ref.value) == "not enough values to unpack (expected 4, got 3)"


def test_fp32_gradients_against_an_fp64_copy(fla_rwkv7):
    ref, mine = _pair(fla_rwkv7)
    mine = mine.float().train()
    ref.train()
    ids, mask, labels = _batch(70, pad=9)
    lr = ref(ids, attention_mask=mask, labels=labels).loss
    lm = mine(ids, attention_mask=mask, labels=labels).loss
    assert abs(lm.item() - lr.item()) < 1e-5 * abs(lr.item())
    for (name, _), a, b in zip(mine.named_parameters(), torch.autograd.grad(lr, list(ref.parameters())),
                               torch.autograd.grad(lm, list(mine.parameters()))):
        assert_rms(name, a, b.double(), 1e-4, atol=1e-9)


def test_model_outputs_and_hidden_states_match_fla(fla_rwkv7):
    ref, mine = _pair(fla_rwkv7)
    ref.eval()
    mine.eval()
    ids, mask, _ = _batch(20, pad=4)
    with torch.no_grad():
        o_ref = ref.model(ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
        o = mine.model(ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
        t_ref = ref.model(ids, return_dict=False, use_cache=True)
        t = mine.model(ids, return_dict=False, use_cache=True)
    assert len(o.hidden_states) == len(o_ref.hidden_states) == 3
    for a, b in zip(o_ref.hidden_states, o.hidden_states):
        assert_rms("hidden", a, b, 1e-10)
    assert len(t) == len(t_ref) == 2
    assert_rms("last_hidden_state", t_ref[0], t[0], 1e-10)
    for layer in range(2):
        for key in ("recurrent_state", "ffn_state"):
            a, b = t_ref[1][layer][key], t[1][layer][key]
            a, b = (a[0], b[0]) if isinstance(a, tuple) else (a, b)
            assert_rms(key, a, b, 1e-10)


@pytest.mark.parametrize("T,T0", [(80, 70), (30, 20)])
def test_prefill_and_decode_equal_the_full_forward(fla_rwkv7, T, T0):
    """Eval mode with a left-padded batch: a prefill of T0 tokens (>= 64: the chunk path; shorter:
    the fused recurrent path) then one token at a time through the Cache gives the full forward's
    logits, in myfla and in fla's code."""
    ref, mine = _pair(fla_rwkv7)
    ids, mask, _ = _batch(T, pad=6)
    for model in (ref, mine):
        model.eval()
        with torch.no_grad():
            full = model(ids, attention_mask=mask, use_cache=False).logits
            out = model(ids[:, :T0], attention_mask=mask[:, :T0], use_cache=True)
            pieces, cache = [out.logits], out.past_key_values
            for t in range(T0, T):
                out = model(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], past_key_values=cache, use_cache=True)
                pieces.append(out.logits)
                cache = out.past_key_values
        keep = mask.bool()
        torch.testing.assert_close(torch.cat(pieces, 1)[keep], full[keep], rtol=1e-9, atol=1e-9)
        assert cache.get_seq_length() == T


def test_generate_continues_through_the_cache():
    torch.manual_seed(0)
    model = _randomize(_build(M)).eval()
    ids, _, _ = _batch(12, B=1, pad=0)
    out = model.generate(ids, max_new_tokens=6, do_sample=False)
    assert out.shape == (1, 18)
    with torch.no_grad():
        seq = ids
        for _ in range(6):
            nxt = model(seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
    assert torch.equal(out, seq)


def test_version_1_weights_are_migrated_as_in_fla(fla_rwkv7):
    """RWKV7Model.load_state_dict splits a version-1 ``model.layers.{i}.attn.x_x`` into x_r ... x_g in
    the given dict (only keys with the causal LM's ``model.`` prefix, as fla) and returns nothing."""
    ref, mine = _build(fla_rwkv7).model, _build(M).model
    x_x = torch.randn(6, 64)
    for model in (ref, mine):
        sd = {"model.layers.1.attn.x_x": x_x.clone(), "model.layers.0.attn.other": torch.zeros(1)}
        assert model.load_state_dict(sd, strict=False) is None
        assert sorted(sd) == sorted(["model.layers.1.attn.x_x", "model.layers.0.attn.other"] +
                                    [f"model.layers.1.attn.{n}" for n in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g")])
        for i, n in enumerate(("x_r", "x_w", "x_k", "x_v", "x_a", "x_g")):
            assert torch.equal(sd[f"model.layers.1.attn.{n}"], x_x[i].view(1, 1, 64))
    plain = _randomize(_build(M)).model.state_dict()
    assert mine.load_state_dict(plain) is None
    assert all(torch.equal(v, mine.state_dict()[k]) for k, v in plain.items())


def test_checkpoints_load_both_ways(tmp_path, fla_rwkv7_fp32):
    """A checkpoint saved by fla's model code loads into myfla unchanged (and back), with the same
    logits."""
    fla_rwkv7 = fla_rwkv7_fp32
    ref = _randomize(_build(fla_rwkv7)).float().eval()
    ref.save_pretrained(tmp_path / "fla")
    mine = M.RWKV7ForCausalLM.from_pretrained(tmp_path / "fla").eval()
    assert type(mine.config) is M.RWKV7Config
    for k, v in ref.state_dict().items():
        assert torch.equal(mine.state_dict()[k], v), k
    ids, mask, _ = _batch(20, pad=3)
    with torch.no_grad():
        torch.testing.assert_close(mine(ids, attention_mask=mask).logits, ref(ids, attention_mask=mask).logits,
                                   rtol=1e-4, atol=1e-5)
    mine.save_pretrained(tmp_path / "mine")
    back = fla_rwkv7.RWKV7ForCausalLM.from_pretrained(tmp_path / "mine")
    for k, v in mine.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_gradient_checkpointing_gives_the_same_gradients(use_reentrant):
    """Non-reentrant checkpointing (transformers 5's default) and reentrant (transformers 4's
    default): under the latter fla 0.4.0's own RWKV-7 model code (0.6.0's too) recurses through nested
    checkpoint backwards without finishing, as myfla did until it passed ``v_first`` to checkpointed
    blocks positionally (a manifest deviation)."""
    model = _randomize(_build(M)).double().train()
    ids, mask, labels = _batch(70, pad=9)
    model(ids, attention_mask=mask, labels=labels).loss.backward()
    ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
    assert all(b.gradient_checkpointing for b in model.model.layers)
    calls = guard_recomputation(model)
    model(ids, attention_mask=mask, labels=labels, use_cache=False).loss.backward()
    assert len(calls) == 2 * len(model.model.layers)
    for a, p in zip(ref, model.parameters()):
        torch.testing.assert_close(p.grad, a)


def test_gradient_checkpointing_turns_caching_off(caplog):
    """As the blocks' own checkpointing does (with its warning): a cache asked for in a checkpointed
    training step is neither filled nor returned."""
    import logging
    logging.Logger.warning_once.cache_clear()      # transformers' once-only warnings, said again here
    model = _randomize(_build(M)).train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    guard_recomputation(model)
    ids, mask, labels = _batch(40, pad=3)
    out = model(ids, attention_mask=mask, labels=labels, use_cache=True)
    out.loss.backward()
    assert out.past_key_values is None
    assert "Caching is incompatible with gradient checkpointing in RWKV7Block. Setting `use_cache=False`." in caplog.text


def test_tied_embeddings_share_the_weight():
    model = _build(M, tie_word_embeddings=True)
    assert model.lm_head.weight is model.model.embeddings.weight


def test_a_few_optimizer_steps_lower_the_loss():
    torch.manual_seed(0)
    model = _build(M, fuse_cross_entropy=True).train()
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
