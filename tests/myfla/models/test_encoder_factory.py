"""The encoder use of the three families (KDA, GatedDeltaNet, RWKV-7): one factory call builds an
encoder of any of them by its ``model_type`` name, through transformers' Auto classes (myfla.models
registers the three on import, as fla does), and every family gets the same mask and cache behaviour."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers", reason="myfla's models need transformers")

from transformers import AutoConfig, AutoModel  # noqa: E402

import myfla.models as M  # noqa: E402
from tests.myfla.models.test_rwkv7_models import _randomize  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning", "ignore::FutureWarning")

ENCODER_TYPES = {"kda": M.KDAModel, "gated_deltanet": M.GatedDeltaNetModel, "rwkv7": M.RWKV7Model}


def build_encoder(model_type: str, **config):
    """The plans' encoder factory: a model of any family by its ``model_type`` name, through
    transformers' Auto classes (myfla.models registers the three on import)."""
    return AutoModel.from_config(AutoConfig.for_model(model_type, **config))


@pytest.mark.parametrize("model_type", sorted(ENCODER_TYPES))
def test_encoder_factory_gives_every_family_the_same_mask_and_cache_behaviour(model_type):
    """Same call, same inputs (``inputs_embeds`` with a left-padding mask) for every family: the
    encoder's full pass equals a prefill continued token by token from its cache, at every real
    token, and the cache counts the tokens seen."""
    torch.manual_seed(0)
    config = dict(hidden_size=64, num_hidden_layers=2, num_heads=4, head_dim=16, vocab_size=11)
    encoder = build_encoder(model_type, **config).eval()
    assert type(encoder) is ENCODER_TYPES[model_type]
    _randomize(encoder, seed=3)
    B, T, T0 = 2, 16, 9
    x = torch.randn(B, T, 64, generator=torch.Generator().manual_seed(4))
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, :3] = 0
    with torch.no_grad():
        full = encoder(inputs_embeds=x, attention_mask=mask, use_cache=False).last_hidden_state
        out = encoder(inputs_embeds=x[:, :T0], attention_mask=mask[:, :T0], use_cache=True)
        pieces, cache = [out.last_hidden_state], out.past_key_values
        for t in range(T0, T):
            out = encoder(inputs_embeds=x[:, t:t + 1], attention_mask=mask[:, :t + 1], past_key_values=cache,
                          use_cache=True)
            pieces.append(out.last_hidden_state)
            cache = out.past_key_values
    keep = mask.bool()
    torch.testing.assert_close(torch.cat(pieces, 1)[keep], full[keep], rtol=1e-4, atol=1e-5)
    assert len(cache) == config["num_hidden_layers"] and cache.get_seq_length() == T
    # what sits under the padding never reaches a real token
    noisy = x.clone()
    noisy[1, :3] = 100.0 * torch.randn(3, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        again = encoder(inputs_embeds=noisy, attention_mask=mask, use_cache=False).last_hidden_state
    torch.testing.assert_close(again[keep], full[keep], rtol=0, atol=1e-6)
