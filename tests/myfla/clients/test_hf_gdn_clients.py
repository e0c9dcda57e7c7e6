"""Every other transformers model that calls fla's gated delta rule, with myfla served as ``fla`` (and as
``causal_conv1d``), against transformers' own torch fallback in the same process: Qwen3.5 and
Qwen3.5-MoE (text models), OLMo-Hybrid (with and without its negative-eigenvalue option, which doubles
``beta``), Lara-Mini and Qwen4-Exp. Qwen3-Next has its own, deeper file; these models share its
linear-attention layer design but each has its own modeling file, configuration and bindings, which
is what a client test has to cover. Tiny random models with grouped value heads
(``linear_num_value_heads > linear_num_key_heads``, transformers passes them un-repeated: fla 0.5's
GVA API): forward, loss and gradients; greedy generation (chunk prefill, then fused_recurrent decode
steps); packed sequences; the keywords transformers passes; serving inside inference mode."""

from __future__ import annotations

import importlib
import importlib.util

import pytest
import torch

from tests.myfla.clients.hf_pair import hub_kernels_or_skip

_hub = hub_kernels_or_skip()

import myfla.ops.gated_delta_rule as gdn_ops  # noqa: E402
from tests.myfla.clients.hf_pair import (  # noqa: E402
    assert_no_keyword_dropped,
    assert_bf16_model_as_accurate_as_fallback,
    assert_greedy_generation_matches_fallback,
    assert_generates_alike_under_inference_mode,
    assert_packed_step_equals_separate_runs,
    assert_training_step_matches_fallback,
    bound_implementation,
    copy_weights,
    fallback_and_myfla,
)

VOCAB = 97
_LINEAR = dict(linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=8,
               linear_conv_kernel_dim=4)
_COMMON = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               layer_types=["linear_attention", "full_attention"], pad_token_id=0, bos_token_id=1, eos_token_id=2,
               **_LINEAR)
_MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=32)

# (transformers model directory, config class, causal LM class, config keywords)
CLIENTS = {
    "qwen3_5": ("qwen3_5", "Qwen3_5TextConfig", "Qwen3_5ForCausalLM",
                dict(_COMMON, head_dim=16, intermediate_size=64)),
    "qwen3_5_moe": ("qwen3_5_moe", "Qwen3_5MoeTextConfig", "Qwen3_5MoeForCausalLM",
                    dict(_COMMON, head_dim=16, **_MOE)),
    "olmo_hybrid": ("olmo_hybrid", "OlmoHybridConfig", "OlmoHybridForCausalLM",
                    dict(_COMMON, intermediate_size=64, linear_allow_neg_eigval=False)),
    "olmo_hybrid neg-eigval": ("olmo_hybrid", "OlmoHybridConfig", "OlmoHybridForCausalLM",
                               dict(_COMMON, intermediate_size=64, linear_allow_neg_eigval=True)),
    "lara_mini": ("lara_mini", "LaraMiniConfig", "LaraMiniForCausalLM", dict(_COMMON, head_dim=16, **_MOE)),
    # with its indexed attention, hyper-connections and n-gram embeddings made tiny
    "qwen4_exp": ("qwen4_exp", "Qwen4ExpTextConfig", "Qwen4ExpForCausalLM",
                  dict(_COMMON, head_dim=16, **_MOE, indexer_n_heads=2, indexer_kv_heads=1, indexer_head_dim=16,
                       indexer_budget=64, indexer_compress_ratio=4, hc_lowrank=8, ngram_vocab_size_base=1000,
                       split_ngram_parts=4, heads_per_ngram=2, make_ngram_vocab_size_divisible_by=8)),
}
OPS = {"torch_chunk_gated_delta_rule": ("fla/ops/gated_delta_rule/chunk.py", "chunk_gated_delta_rule",
                                        gdn_ops.chunk_gated_delta_rule),
       "torch_recurrent_gated_delta_rule": ("fla/ops/gated_delta_rule/fused_recurrent.py",
                                            "fused_recurrent_gated_delta_rule",
                                            gdn_ops.fused_recurrent_gated_delta_rule)}


def _modeling_name(client):
    directory = CLIENTS[client][0]
    return f"transformers.models.{directory}.modeling_{directory}"


@pytest.fixture(scope="module", params=list(CLIENTS))
def client(request):
    name = request.param
    try:                                  # found, not imported: the fixture imports it
        found = importlib.util.find_spec(_modeling_name(name)) is not None
    except ModuleNotFoundError:           # the model's package itself is missing (an older transformers)
        found = False
    if not found:
        pytest.skip(f"this transformers has no {CLIENTS[name][0]}")
    with fallback_and_myfla(_modeling_name(name)) as pair:
        yield name, pair


def make_pair(client):
    name, (fallback, served) = client
    directory, config_cls, model_cls, kwargs = CLIENTS[name]
    config = getattr(importlib.import_module(f"transformers.models.{directory}.configuration_{directory}"),
                     config_cls)(**kwargs)
    torch.manual_seed(0)
    ref = getattr(fallback, model_cls)(config)
    ours = getattr(served, model_cls)(config)
    copy_weights(ref, ours)
    return ref, ours


def test_modules_bind_to_fallback_and_to_myfla(client):
    _, (fallback, served) = client
    for name, (_, _, ours) in OPS.items():
        assert bound_implementation(getattr(fallback, name)) is getattr(fallback, name).__wrapped__
        assert bound_implementation(getattr(served, name)) is ours


def test_forward_loss_and_gradients_match_fallback(client):
    ref, ours = make_pair(client)
    assert_training_step_matches_fallback(ref, ours, VOCAB, "A_log")   # the delta rule's own parameter


def test_greedy_generation_matches_fallback(client):
    ref, ours = make_pair(client)
    assert_greedy_generation_matches_fallback(ref, ours, VOCAB, new_tokens=30)


def test_packed_sequences_equal_separate_runs(client):
    """A packed row as ``DataCollatorWithFlattening(return_flash_attn_kwargs=True, return_seq_idx=True)``
    makes it: logits, loss and every gradient equal the sequences run one by one."""
    ref, ours = make_pair(client)
    seqs = [torch.randint(3, VOCAB, (1, n)) for n in (37, 70, 1, 20)]
    assert_packed_step_equals_separate_runs(ref, ours, seqs, "conv1d.weight")


def test_no_argument_transformers_passes_is_dropped(client, fla060_root):
    """transformers keeps only the keywords the target's signature names: every keyword these models
    pass (training forward with a packed row, prefill and decode) that fla 0.6.0 accepts is a myfla
    parameter."""
    _, (_, served) = client
    _, ours = make_pair(client)
    seen = assert_no_keyword_dropped(ours, served, OPS, fla060_root, VOCAB)
    assert "cu_seqlens" in seen["torch_chunk_gated_delta_rule"]


def test_generation_inside_inference_mode(client):
    _, ours = make_pair(client)
    assert_generates_alike_under_inference_mode(ours, VOCAB)


def test_bf16_model_is_as_accurate_as_the_fallback(client):
    """The model in bf16, as published checkpoints are: myfla's logits within the fallback's own bf16
    error of the fp32 logits; generation and a training step run."""
    ref, ours = make_pair(client)
    assert_bf16_model_as_accurate_as_fallback(ref, ours, VOCAB)
