"""``FLAGenerationMixin`` (fla 0.4.0 ``fla/models/utils.py``) against fla's own class, loaded by
file path from the fetched upstream tree, for both transformers branches (4.56+ and older)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from myfla.models import utils as mu  # noqa: E402
from myfla.models.utils import Cache, FLAGenerationMixin  # noqa: E402
from tests.fla_refs import load_function  # noqa: E402


def _fla_mixin(root, new_transformers):
    return load_function(root, "fla/models/utils.py", "FLAGenerationMixin",
                         extra_globals={"_IS_TRANSFORMERS_4_56_PLUS": new_transformers})


def _same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, torch.Tensor):
            assert torch.equal(x, y), key
        else:
            assert x is y or x == y, key


@pytest.mark.parametrize("new_transformers", [True, False])
def test_prepare_inputs_matches_fla(fla040_root, monkeypatch, new_transformers):
    monkeypatch.setattr(mu, "_IS_TRANSFORMERS_4_56_PLUS", new_transformers)
    ref_cls = _fla_mixin(fla040_root, new_transformers)

    class Mine(FLAGenerationMixin):
        pass

    class Theirs(ref_cls):
        pass

    mine, theirs = Mine(), Theirs()
    ids = torch.arange(12).view(2, 6)
    embeds = torch.randn(2, 6, 4)
    mask = torch.ones(2, 6)
    empty, filled = Cache(), Cache()
    filled.update(recurrent_state=torch.zeros(1), layer_idx=0, offset=6)
    calls = [
        dict(input_ids=ids),
        dict(input_ids=ids, past_key_values=filled, attention_mask=mask),
        dict(input_ids=ids, past_key_values=filled, cache_position=torch.tensor([5])),
        dict(input_ids=ids, past_key_values=empty, inputs_embeds=embeds, cache_position=torch.arange(6)),
        dict(input_ids=ids, inputs_embeds=embeds, past_key_values=empty, use_cache=False),
        dict(input_ids=ids, past_key_values=filled, logits_to_keep=1),
    ]
    for kwargs in calls:
        _same(mine.prepare_inputs_for_generation(**kwargs), theirs.prepare_inputs_for_generation(**kwargs))
    # transformers' kwarg rename, as fla applies it
    out = mine.prepare_inputs_for_generation(input_ids=ids, num_logits_to_keep=3)
    assert out["logits_to_keep"] == 3
