"""``generate`` with the cache against a full recomputation of every step without it (greedy and
sampling with a fixed seed), on a left-padded batch, and a padded row against the same row alone."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers", reason="myfla's models need transformers")

import myfla.models as M  # noqa: E402
from tests.myfla.models.fla_oracle import config_kwargs, family_classes  # noqa: E402

NEW = 8
MODELS = [
    ("kda", {}),
    ("gated_deltanet", {}),
    ("kda", dict(num_hidden_layers=3, attn=dict(layers=[1], num_heads=4, num_kv_heads=2, window_size=6))),
    ("gated_deltanet", dict(attn=dict(layers=[0], num_heads=2))),
]


def _model(family, overrides):
    MC, _, ML = family_classes(M, family)
    torch.manual_seed(3)
    # a wider initialisation than the default 0.02 makes the logits sensitive to every layer
    return ML(MC(**config_kwargs(family, initializer_range=0.1, **overrides))).eval()


def _prompt(pad=4, T=10):
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(3, 97, (2, T), generator=g)
    mask = torch.ones(2, T, dtype=torch.long)
    mask[1, :pad] = 0
    return ids.masked_fill(mask == 0, 0), mask


def _recompute(model, ids, mask, sample: bool):
    """Every step from scratch (no cache): the next token from the last position's logits, with
    the eos logit masked as generate's min_new_tokens does."""
    logits_steps = []
    for _ in range(NEW):
        with torch.no_grad():
            logits = model(ids, attention_mask=mask, use_cache=False).logits[:, -1]
        logits_steps.append(logits)
        scores = logits.clone()
        scores[:, model.config.eos_token_id] = float('-inf')
        nxt = torch.multinomial(scores.softmax(-1), 1).squeeze(1) if sample else scores.argmax(-1)
        ids = torch.cat([ids, nxt[:, None]], 1)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], 1)
    return ids, torch.stack(logits_steps, 1)


def _generate(model, ids, mask, sample: bool):
    kwargs = dict(do_sample=True, top_k=0, top_p=1.0, temperature=1.0) if sample else dict(do_sample=False)
    out = model.generate(ids, attention_mask=mask, max_new_tokens=NEW, min_new_tokens=NEW, use_cache=True,
                         output_logits=True, return_dict_in_generate=True, **kwargs)
    return out.sequences, torch.stack(out.logits, 1)


@pytest.mark.parametrize("case", range(len(MODELS)))
@pytest.mark.parametrize("sample", [False, True])
def test_generate_with_cache_equals_recomputation(case, sample):
    model = _model(*MODELS[case])
    ids, mask = _prompt()
    torch.manual_seed(11)
    seq, logits = _generate(model, ids, mask, sample)
    torch.manual_seed(11)
    ref_seq, ref_logits = _recompute(model, ids, mask, sample)
    assert torch.equal(seq, ref_seq)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", range(len(MODELS)))
def test_padded_row_generates_as_when_alone(case):
    model = _model(*MODELS[case])
    ids, mask = _prompt(pad=4)
    seq, logits = _generate(model, ids, mask, sample=False)
    alone, alone_logits = _generate(model, ids[1:, 4:], mask[1:, 4:], sample=False)
    assert torch.equal(seq[1:, 4:], alone)
    torch.testing.assert_close(logits[1:], alone_logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", [0, 2])
def test_generate_feeds_one_new_token_per_step_through_the_cache(case):
    """The prompt once, then one token per step: generate really decodes through myfla's Cache
    (fla 0.4.0's mixin loses the cache under newer transformers 5 and re-runs the whole sequence)."""
    model = _model(*MODELS[case])
    ids, mask = _prompt()
    lengths, caches = [], []

    def record(module, args, kwargs):
        lengths.append(kwargs["input_ids"].shape[1] if kwargs.get("input_ids") is not None
                       else kwargs["inputs_embeds"].shape[1])
        caches.append(kwargs.get("past_key_values"))

    hook = model.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        model.generate(ids, attention_mask=mask, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    finally:
        hook.remove()
    assert lengths == [10, 1, 1, 1]
    assert caches[0] is None and all(isinstance(c, M.utils.Cache) for c in caches[1:])


def test_generate_from_inputs_embeds():
    model = _model("gated_deltanet", {})
    ids, mask = _prompt()
    embeds = model.model.embeddings(ids).detach()
    a = model.generate(ids, attention_mask=mask, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    b = model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert torch.equal(a[:, ids.shape[1]:], b[:, -5:])


def test_generation_keeps_only_the_last_logits():
    """generate asks the model for ``logits_to_keep=1`` (FLAGenerationMixin forwards it)."""
    model = _model("kda", {})
    ids, mask = _prompt()
    seen = []
    hook = model.lm_head.register_forward_hook(lambda m, i, o: seen.append(o.shape[1]))
    try:
        model.generate(ids, attention_mask=mask, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    finally:
        hook.remove()
    assert seen == [1, 1, 1]


@pytest.mark.parametrize("case", MODELS + [("rwkv7", {})], ids=["kda", "gdn", "kda-hybrid", "gdn-hybrid", "rwkv7"])
@pytest.mark.parametrize("num_return_sequences", [1, 2])
def test_beam_search_with_cache_equals_beam_search_without(case, num_return_sequences):
    """Beam search reorders the cache's batch rows each step (``Cache.reorder_cache``, a deviation as
    fla 0.6.0: fla 0.4.0's cache has no such method and transformers 5's beam search failed with
    "'NoneType' object has no attribute 'index_select'"). Its sequences equal beam search run without
    a cache, every step recomputed from the prompt; with the rows left in place they do not."""
    model = _model(*case)
    ids, mask = _prompt()
    kwargs = dict(attention_mask=mask, max_new_tokens=NEW, min_new_tokens=NEW, num_beams=3,
                  num_return_sequences=num_return_sequences, do_sample=False)
    with_cache = model.generate(ids, use_cache=True, **kwargs)
    without = model.generate(ids, use_cache=False, **kwargs)
    assert with_cache.shape == (2 * num_return_sequences, ids.shape[1] + NEW)
    assert torch.equal(with_cache, without)


@pytest.mark.parametrize("cache_class", ["FLACache", "LegacyFLACache"])
def test_cache_batch_rows_reorder_repeat_and_select(cache_class):
    """The three batch transformations of the cache (as fla 0.6.0) act on every state of every layer,
    in the cache of transformers > 4.53.3 and in the list-based one of older releases."""
    cls = getattr(M.utils, cache_class)
    try:
        cache = cls()
    except ValueError:
        # transformers 5's Cache.__init__ refuses the list-based cache (made for <= 4.53.3); its
        # methods use only its own list of state dicts
        cache = object.__new__(cls)
        cache.states, cache._seen_tokens = [], 0
    rec = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 2, 4, 4).contiguous()
    conv = torch.arange(3.0).view(3, 1, 1).expand(3, 8, 4).contiguous()
    attn = (torch.arange(3.0).view(3, 1, 1, 1).expand(3, 5, 2, 4).contiguous(),) * 2
    for layer_idx in range(2):
        cache.update(recurrent_state=rec, conv_state=conv, layer_idx=layer_idx, offset=5)
    cache.update(attn_state=attn, layer_idx=2, offset=5)

    def rows(layer_idx, key):
        value = cache[layer_idx][key]
        value = value[0] if isinstance(value, (tuple, list)) else value
        return value.flatten(1)[:, 0].tolist()

    cache.reorder_cache(torch.tensor([2, 0, 0]))
    assert rows(0, 'recurrent_state') == rows(1, 'conv_state') == rows(2, 'attn_state') == [2.0, 0.0, 0.0]
    cache.batch_repeat_interleave(2)
    assert rows(1, 'recurrent_state') == rows(2, 'attn_state') == [2.0, 2.0, 0.0, 0.0, 0.0, 0.0]
    cache.batch_select_indices(torch.tensor([0, 2]))
    assert rows(0, 'conv_state') == rows(2, 'attn_state') == [2.0, 0.0]
