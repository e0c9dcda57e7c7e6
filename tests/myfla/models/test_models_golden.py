"""myfla's KDA / GatedDeltaNet language models against fixtures recorded from real fla 0.4.0 on a
GPU (tools/record_models_golden.py): logits, training loss, every parameter's gradient, greedy
decoding with the cache, ``generate``, and fla ``save_pretrained`` checkpoints loaded unchanged."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers", reason="the model fixtures are compared with myfla's models, which need transformers")

from tests.myfla.models import models_golden as G

INDEX = G.load_index()
pytestmark = pytest.mark.skipif(
    INDEX is None,
    reason=f"model golden fixtures not recorded yet ({G.FIXTURES}/index.json is absent); "
           f"record them with: {G.RECORD_COMMAND}")
CASES = sorted((INDEX or {}).get("cases", {}))


@pytest.mark.parametrize("name", CASES)
def test_case_matches_fla(name):
    record = INDEX["cases"][name]
    if record.get("status") != "ok":
        pytest.fail(f"{name} was not recorded: {record.get('error')}")
    G.check_case(G.FIXTURES, name, record)


@pytest.mark.parametrize("name", [n for n in CASES if INDEX["cases"][n].get("checkpoint")])
def test_fla_checkpoint_loads_unchanged(name):
    G.check_checkpoint(G.FIXTURES, name, INDEX["cases"][name])
