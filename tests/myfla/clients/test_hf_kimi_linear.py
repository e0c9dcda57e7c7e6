"""transformers' Kimi Linear as a client of myfla (served as ``fla`` and as ``causal_conv1d``), against
transformers' own torch fallback in the same process: forward, loss and gradients, greedy generation
(chunk_kda prefill, then fused_recurrent_kda decode steps), and packed sequences.

Kimi Linear's layer passes ``**kwargs`` to ``chunk_kda`` without mapping ``cu_seq_lens_q`` to
``cu_seqlens`` (Qwen3-Next does), and transformers drops keyword arguments the target's signature
does not name, so a row from the packing collator reaches ``chunk_kda`` as one sequence (with real
fla too): that is transformers' to fix, and a test records it. Passing ``cu_seqlens=`` (and the
collator's ``seq_idx``, for the short convolution) to the model reaches both, and packed rows then
equal separate runs."""

from __future__ import annotations

import pytest
import torch

from tests.myfla.clients.hf_pair import hub_kernels_or_skip

_hub = hub_kernels_or_skip()
pytest.importorskip("transformers.models.kimi_linear")

import myfla.ops.kda as kda_ops  # noqa: E402
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
    imported_before_the_alias,
    max_abs_diff,
    rms_ratio,
)
from tests.numerics import assert_rms  # noqa: E402

MODELING = "transformers.models.kimi_linear.modeling_kimi_linear"
VOCAB = 97


@pytest.fixture(scope="module")
def modeling():
    with fallback_and_myfla(MODELING) as pair:
        yield pair


def make_pair(modeling):
    from transformers import KimiLinearConfig
    fallback, served = modeling
    config = KimiLinearConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=64, moe_intermediate_size=32, num_hidden_layers=2,
        layer_types=["linear_attention", "full_attention"], mlp_layer_types=["dense", "sparse"],
        num_attention_heads=4, num_key_value_heads=4, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16,
        kv_lora_rank=16, linear_head_dim=16, linear_num_heads=4, num_local_experts=4, num_experts_per_tok=2,
        pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    ref = fallback.KimiLinearForCausalLM(config)
    ours = served.KimiLinearForCausalLM(config)
    copy_weights(ref, ours)
    return ref, ours


def test_modules_bind_to_fallback_and_to_myfla(modeling):
    fallback, served = modeling
    for name, ours in [("chunk_kimi_delta_attention", kda_ops.chunk_kda),
                       ("recurrent_kimi_delta_attention", kda_ops.fused_recurrent_kda)]:
        assert bound_implementation(getattr(fallback, name)) is getattr(fallback, name).__wrapped__
        assert bound_implementation(getattr(served, name)) is ours


def test_no_argument_transformers_passes_is_dropped(modeling, fla060_root):
    """transformers keeps only the keyword arguments the target's signature names, so a parameter
    myfla lacked would vanish silently. Every keyword Kimi Linear passes (training forward with a
    packed row, prefill and decode) that a current fla (0.6.0) accepts must be a myfla parameter.
    (``cu_seq_lens_q`` is passed and dropped: no fla release names it.)"""
    _, served = modeling
    ops = {"chunk_kimi_delta_attention": ("fla/ops/kda/chunk.py", "chunk_kda", kda_ops.chunk_kda),
           "recurrent_kimi_delta_attention": ("fla/ops/kda/fused_recurrent.py", "fused_recurrent_kda",
                                              kda_ops.fused_recurrent_kda)}
    _, ours = make_pair(modeling)
    seen = assert_no_keyword_dropped(ours, served, ops, fla060_root, VOCAB)
    assert "cu_seq_lens_q" in seen["chunk_kimi_delta_attention"]


def test_install_after_the_modeling_import_warns_and_the_fallback_stays():
    """The import-order trap: transformers binds fla or its fallback when the modeling module is
    imported, so installing the alias afterwards cannot help; install_as_fla says so."""
    from myfla.alias import install_as_fla, uninstall_as_fla
    with imported_before_the_alias(MODELING) as late:
        with pytest.warns(RuntimeWarning, match=r"modeling_kimi_linear imported before myfla.install_as_fla\(\)"):
            assert install_as_fla(force=True) == "myfla"
        fn = late.chunk_kimi_delta_attention
        assert bound_implementation(fn) is fn.__wrapped__
        uninstall_as_fla()


def test_causal_conv1d_install_after_the_modeling_import_warns_and_the_fallback_stays():
    """The same trap for the conv: transformers bound ``causal_conv1d_fn`` at import."""
    from myfla.alias import install_as_causal_conv1d, uninstall_as_causal_conv1d
    with imported_before_the_alias(MODELING) as late:
        with pytest.warns(RuntimeWarning, match=r"modeling_kimi_linear imported before "
                                                r"myfla.install_as_causal_conv1d\(\): their causal_conv1d functions"):
            assert install_as_causal_conv1d(force=True) == "myfla"
        fn = late.causal_conv1d_fn
        assert bound_implementation(fn) is fn.__wrapped__
        uninstall_as_causal_conv1d()


def test_forward_loss_and_gradients_match_fallback(modeling):
    ref, ours = make_pair(modeling)
    assert_training_step_matches_fallback(ref, ours, VOCAB, ".self_attn.forget_gate.A_log")


def test_greedy_generation_matches_fallback(modeling):
    ref, ours = make_pair(modeling)
    assert_greedy_generation_matches_fallback(ref, ours, VOCAB)


def test_packed_op_call_through_transformers_equals_separate_fallback_runs(modeling):
    """transformers' wrapper forwards ``cu_seqlens`` to myfla's chunk_kda; per-sequence initial
    states, final states and all gradients equal the fallback run on each sequence alone."""
    fallback, served = modeling
    H, K = 4, 16
    lens = [37, 70, 1, 20]
    T, N = sum(lens), len(lens)
    cu = torch.tensor([0] + lens).cumsum(0)
    leaves = [torch.randn(1, T, H, K), torch.randn(1, T, H, K), torch.randn(1, T, H, K),
              torch.nn.functional.logsigmoid(torch.randn(1, T, H, K)), torch.rand(1, T, H), torch.randn(N, H, K, K)]
    ours = [x.clone().requires_grad_() for x in leaves]
    o, ht = served.chunk_kimi_delta_attention(
        *ours[:3], g=ours[3], beta=ours[4], initial_state=ours[5], output_final_state=True,
        use_qk_l2norm_in_kernel=True, cu_seqlens=cu)
    refs = [x.clone().requires_grad_() for x in leaves]
    outs, states = [], []
    for i in range(N):
        s, e = cu[i].item(), cu[i + 1].item()
        o_i, h_i = fallback.chunk_kimi_delta_attention(
            *(x[:, s:e] for x in refs[:3]), g=refs[3][:, s:e], beta=refs[4][:, s:e],
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


def test_packed_sequences_with_cu_seqlens_equal_separate_runs(modeling):
    """The collator's row (``return_flash_attn_kwargs=True, return_seq_idx=True``) plus
    ``cu_seqlens=`` (its ``cu_seq_lens_q``), ``use_cache=False``: ``chunk_kda`` runs varlen, the short
    convolution keeps sequences apart through ``seq_idx``, the attention layer masks by
    ``position_ids``. Logits, loss and every gradient equal the sequences run one by one (and the
    logits equal transformers' fallback run one by one)."""
    ref, ours = make_pair(modeling)
    seqs = [torch.randint(3, VOCAB, (1, n)) for n in (37, 70, 1, 20)]
    assert_packed_step_equals_separate_runs(ref, ours, seqs, ".self_attn.conv1d.weight",
                                            rename=(("cu_seq_lens_q", "cu_seqlens"),))


def test_collated_row_alone_reaches_chunk_kda_as_one_sequence(modeling):
    """transformers 5.24's Kimi Linear does not map ``cu_seq_lens_q`` to ``cu_seqlens``: with only the
    collator's keyword arguments the delta rule runs across the boundaries (the conv is kept apart by
    ``seq_idx``), so later sequences differ from separate runs. If this fails, transformers maps it
    now: packed Kimi Linear then needs no ``cu_seqlens=`` (update the notes and this test)."""
    _, ours = make_pair(modeling)
    seqs = [torch.randint(3, VOCAB, (1, n)) for n in (37, 70)]
    with torch.no_grad():
        first, second = ours(**collate_packed(seqs), use_cache=False).logits.split([37, 70], 1)
        assert max_abs_diff(ours(seqs[0], use_cache=False).logits, first) < 1e-5
        assert max_abs_diff(ours(seqs[1], use_cache=False).logits, second) > 1e-3


def test_training_step_under_bf16_autocast(modeling):
    """Mixed-precision training through myfla served as fla (until myfla ran its kernels with
    autocast off, KDA and GDN backward passes failed with "Found dtype Float but expected BFloat16")."""
    _, ours = make_pair(modeling)
    assert_trains_under_bf16_autocast(ours, VOCAB)


def test_generation_inside_inference_mode(modeling):
    """Serving through myfla as fla inside ``torch.inference_mode()`` (until myfla's per-pass memo
    keyed inference tensors by identity, every chunked call there failed with "Inference tensors do
    not track version counter")."""
    _, ours = make_pair(modeling)
    assert_generates_alike_under_inference_mode(ours, VOCAB)


def test_bf16_model_is_as_accurate_as_the_fallback(modeling):
    """The model in bf16, as published checkpoints are: myfla's logits within the fallback's own bf16
    error of the fp32 logits; generation and a training step run."""
    ref, ours = make_pair(modeling)
    assert_bf16_model_as_accurate_as_fallback(ref, ours, VOCAB)
