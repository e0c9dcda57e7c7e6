"""transformers' Qwen3-Next as a client of myfla (served as ``fla`` and as ``causal_conv1d``), against
transformers' own torch fallback in the same process: forward, loss and gradients, greedy generation
(chunk prefill, then fused_recurrent decode steps), packed sequences. Tiny random models, with equal
key/value head counts and with grouped value heads (``linear_num_value_heads > linear_num_key_heads``,
as every published Qwen3-Next config has), which transformers passes to ``chunk_gated_delta_rule``
un-repeated (fla 0.5.0's GVA API), and the published short-convolution width 4."""

from __future__ import annotations

import inspect

import pytest
import torch

from tests.myfla.clients.hf_pair import hub_kernels_or_skip

_hub = hub_kernels_or_skip()

import myfla.ops.gated_delta_rule as gdn_ops  # noqa: E402
from tests.myfla.clients.hf_pair import (  # noqa: E402
    assert_no_keyword_dropped,
    assert_packed_step_equals_separate_runs,
    assert_bf16_model_as_accurate_as_fallback,
    assert_greedy_generation_matches_fallback,
    assert_generates_alike_under_inference_mode,
    assert_trains_under_bf16_autocast,
    assert_training_step_matches_fallback,
    bound_implementation,
    copy_weights,
    fallback_and_myfla,
    collate_packed,
    max_abs_diff,
    rms_ratio,
)
from tests.numerics import assert_rms  # noqa: E402

MODELING = "transformers.models.qwen3_next.modeling_qwen3_next"
VOCAB = 97


@pytest.fixture(scope="module")
def modeling():
    with fallback_and_myfla(MODELING) as pair:
        yield pair


def make_config(gva: bool, conv: int = 4):
    from transformers import Qwen3NextConfig
    return Qwen3NextConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
        layer_types=["linear_attention", "full_attention"], num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4 if gva else 2,
        linear_key_head_dim=16, linear_value_head_dim=8, linear_conv_kernel_dim=conv,
        num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=32,
        pad_token_id=0, bos_token_id=1, eos_token_id=2)


def make_pair(modeling, gva: bool, conv: int = 4):
    fallback, served = modeling
    config = make_config(gva, conv)
    torch.manual_seed(0)
    ref = fallback.Qwen3NextForCausalLM(config)
    ours = served.Qwen3NextForCausalLM(config)
    copy_weights(ref, ours)
    return ref, ours


def test_modules_bind_to_fallback_and_to_myfla(modeling):
    fallback, served = modeling
    for name, ours in [("torch_chunk_gated_delta_rule", gdn_ops.chunk_gated_delta_rule),
                       ("torch_recurrent_gated_delta_rule", gdn_ops.fused_recurrent_gated_delta_rule)]:
        assert bound_implementation(getattr(fallback, name)) is getattr(fallback, name).__wrapped__
        assert bound_implementation(getattr(served, name)) is ours


def test_no_argument_transformers_passes_is_dropped(modeling, fla060_root):
    """transformers keeps only the keyword arguments the target's signature names, so a parameter
    myfla lacked would vanish silently. Every keyword Qwen3-Next passes (training forward with a
    packed row, prefill and decode) that a current fla (0.6.0) accepts must be a myfla parameter."""
    _, served = modeling
    ops = {"torch_chunk_gated_delta_rule": ("fla/ops/gated_delta_rule/chunk.py", "chunk_gated_delta_rule",
                                            gdn_ops.chunk_gated_delta_rule),
           "torch_recurrent_gated_delta_rule": ("fla/ops/gated_delta_rule/fused_recurrent.py",
                                                "fused_recurrent_gated_delta_rule",
                                                gdn_ops.fused_recurrent_gated_delta_rule)}
    _, ours = make_pair(modeling, gva=True)
    seen = assert_no_keyword_dropped(ours, served, ops, fla060_root, VOCAB)
    assert "cu_seqlens" in seen["torch_chunk_gated_delta_rule"]


@pytest.mark.parametrize("gva", [False, True], ids=["equal-heads", "gva"])
def test_forward_loss_and_gradients_match_fallback(modeling, gva):
    ref, ours = make_pair(modeling, gva)
    assert_training_step_matches_fallback(ref, ours, VOCAB, ".linear_attn.A_log")


@pytest.mark.parametrize("gva", [False, True], ids=["equal-heads", "gva"])
def test_greedy_generation_matches_fallback(modeling, gva):
    ref, ours = make_pair(modeling, gva)
    assert_greedy_generation_matches_fallback(ref, ours, VOCAB)


@pytest.mark.parametrize("gva", [False, True], ids=["equal-heads", "gva"])
def test_packed_sequences_equal_separate_runs(modeling, gva):
    """A packed row from ``DataCollatorWithFlattening(return_flash_attn_kwargs=True,
    return_seq_idx=True)``, ``use_cache=False`` (a training step): the short convolution (width 4)
    gets ``seq_idx`` through myfla's ``causal_conv1d_fn``, ``chunk_gated_delta_rule`` gets
    ``cu_seqlens`` (the layer maps ``cu_seq_lens_q``), the attention layer its block-diagonal mask
    from ``position_ids``. Logits, loss and every gradient equal the sequences run one by one (and
    the logits equal transformers' fallback run one by one)."""
    ref, ours = make_pair(modeling, gva)
    seqs = [torch.randint(3, VOCAB, (1, n)) for n in (37, 70, 1, 20)]
    assert_packed_step_equals_separate_runs(ref, ours, seqs, ".linear_attn.conv1d.weight")


def test_packed_row_without_seq_idx_mixes_sequences_in_the_conv(modeling):
    """What transformers leaves to the caller: only ``seq_idx`` tells the conv where sequences
    start (``cu_seq_lens_q`` is not turned into it, and the package API has no ``cu_seqlens``), so a
    packed row collated without ``return_seq_idx`` mixes the first W-1 tokens of every later
    sequence with the previous one, with myfla as with the real package. Without the package at all,
    transformers' torch conv refuses ``seq_idx`` and its chunk fallback refuses packed rows."""
    ref, ours = make_pair(modeling, gva=True)
    seqs = [torch.randint(3, VOCAB, (1, n)) for n in (37, 70)]
    batch = collate_packed(seqs)
    no_seq_idx = {k: v for k, v in batch.items() if k != "seq_idx"}
    with torch.no_grad():
        first, second = ours(**no_seq_idx, use_cache=False).logits.split([37, 70], 1)
        assert max_abs_diff(ours(seqs[0], use_cache=False).logits, first) < 1e-5
        assert max_abs_diff(ours(seqs[1], use_cache=False).logits, second) > 1e-3
        # transformers 5.24's kernel binding refuses such a row; 5.17's has no such check (it runs it)
        if "can't keep packed sequences apart" in inspect.getsource(_hub):
            with pytest.raises(ValueError, match="can't keep packed sequences apart without"):
                ref(**batch, use_cache=False)


@pytest.mark.parametrize("gva", [False, True], ids=["equal-heads", "gva"])
def test_packed_op_call_through_transformers_equals_separate_fallback_runs(modeling, gva):
    """transformers' wrapper forwards ``cu_seqlens`` to myfla; per-sequence initial states, final
    states and all gradients equal the fallback run on each sequence alone."""
    fallback, served = modeling
    H, HV, K, V = 2, 4 if gva else 2, 16, 8
    lens = [37, 70, 1, 20]
    T, N = sum(lens), len(lens)
    cu = torch.tensor([0] + lens).cumsum(0)
    leaves = [torch.randn(1, T, H, K), torch.randn(1, T, H, K), torch.randn(1, T, HV, V),
              torch.nn.functional.logsigmoid(torch.randn(1, T, HV)), torch.rand(1, T, HV), torch.randn(N, HV, K, V)]
    ours = [x.clone().requires_grad_() for x in leaves]
    o, ht = served.torch_chunk_gated_delta_rule(
        *ours[:3], g=ours[3], beta=ours[4], initial_state=ours[5], output_final_state=True,
        use_qk_l2norm_in_kernel=True, cu_seqlens=cu)
    refs = [x.clone().requires_grad_() for x in leaves]
    # GVA's query and key heads, each shared by HV // H value heads, repeated for the fallback as
    # transformers' layers before 5.24 repeat them (that fallback has no GVA)
    q_ref, k_ref = (x.repeat_interleave(HV // H, dim=2) for x in refs[:2])
    outs, states = [], []
    for i in range(N):
        s, e = cu[i].item(), cu[i + 1].item()
        o_i, h_i = fallback.torch_chunk_gated_delta_rule(
            *(x[:, s:e] for x in (q_ref, k_ref, refs[2])), g=refs[3][:, s:e], beta=refs[4][:, s:e],
            initial_state=refs[5][i:i + 1], output_final_state=True, use_qk_l2norm_in_kernel=True)
        outs.append(o_i)
        states.append(h_i)
    o_ref, ht_ref = torch.cat(outs, 1), torch.cat(states, 0)
    assert rms_ratio(o_ref, o) < 1e-5 and rms_ratio(ht_ref, ht) < 1e-5
    do, dht = torch.randn_like(o), torch.randn_like(ht)
    ((o * do).sum() + (ht * dht).sum()).backward()
    ((o_ref * do).sum() + (ht_ref * dht).sum()).backward()
    for name, a, b in zip(["dq", "dk", "dv", "dg", "dbeta", "dh0"], refs, ours):
        assert_rms(name, a.grad, b.grad, 1e-4)


def test_training_step_under_bf16_autocast(modeling):
    """Mixed-precision training through myfla served as fla (until myfla ran its kernels with
    autocast off, KDA and GDN backward passes failed with "Found dtype Float but expected BFloat16")."""
    _, ours = make_pair(modeling, True)
    assert_trains_under_bf16_autocast(ours, VOCAB)


def test_generation_inside_inference_mode(modeling):
    """Serving through myfla as fla inside ``torch.inference_mode()`` (until myfla's per-pass memo
    keyed inference tensors by identity, every chunked call there failed with "Inference tensors do
    not track version counter")."""
    _, ours = make_pair(modeling, True)
    assert_generates_alike_under_inference_mode(ours, VOCAB)


def test_bf16_model_is_as_accurate_as_the_fallback(modeling):
    """The model in bf16, as published checkpoints are: myfla's logits within the fallback's own bf16
    error of the fp32 logits; generation and a training step run."""
    ref, ours = make_pair(modeling, True)
    assert_bf16_model_as_accurate_as_fallback(ref, ours, VOCAB)
