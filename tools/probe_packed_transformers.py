#!/usr/bin/env python3
"""Packed sequences through transformers 5 on myfla, as a user would set it up (run from a checkout):

    OMP_NUM_THREADS=1 python tools/probe_packed_transformers.py

``myfla.install_as_fla()`` and ``myfla.install_as_causal_conv1d()`` before transformers' modeling
modules are imported; rows packed by ``DataCollatorWithFlattening(return_flash_attn_kwargs=True,
return_seq_idx=True)``; one training step (``use_cache=False``) on the packed row against the same
sequences run one by one (losses weighted by label counts, as the packed loss weighs them). Tiny
random Qwen3-Next (published conv width 4; equal heads and grouped value heads) and Kimi Linear
(``cu_seqlens=`` passed to the model: transformers' Kimi layer does not map ``cu_seq_lens_q``).
Prints max |logit diff| per sequence, the loss difference and the worst gradient RMS ratio, and
what happens without ``seq_idx`` (Qwen3-Next) and without ``cu_seqlens`` (Kimi Linear).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import myfla  # noqa: E402

assert myfla.install_as_fla() == "myfla" and myfla.install_as_causal_conv1d() == "myfla"

from transformers import KimiLinearConfig, KimiLinearForCausalLM, Qwen3NextConfig, Qwen3NextForCausalLM  # noqa: E402

from tests.myfla.clients.hf_pair import (  # noqa: E402
    collate_packed,
    max_abs_diff,
    packed_and_separate_steps,
    rms_ratio,
)

VOCAB, LENS = 97, (37, 70, 1, 20)


def qwen3_next(gva: bool):
    return Qwen3NextForCausalLM(Qwen3NextConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
        layer_types=["linear_attention", "full_attention"], num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4 if gva else 2, linear_key_head_dim=16,
        linear_value_head_dim=8, linear_conv_kernel_dim=4, num_experts=4, num_experts_per_tok=2,
        moe_intermediate_size=32, shared_expert_intermediate_size=32, pad_token_id=0, bos_token_id=1,
        eos_token_id=2))


def kimi_linear():
    return KimiLinearForCausalLM(KimiLinearConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=64, moe_intermediate_size=32, num_hidden_layers=2,
        layer_types=["linear_attention", "full_attention"], mlp_layer_types=["dense", "sparse"],
        num_attention_heads=4, num_key_value_heads=4, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16,
        kv_lora_rank=16, linear_head_dim=16, linear_num_heads=4, num_local_experts=4, num_experts_per_tok=2,
        pad_token_id=0, bos_token_id=1, eos_token_id=2))


def report(name, model, seqs, **how):
    (logits, loss, grads), (alone, loss_alone, grads_alone) = packed_and_separate_steps(model, seqs, **how)
    diffs = ", ".join(f"{max_abs_diff(a, p):.1e}" for a, p in zip(alone, logits))
    worst = max(rms_ratio(grads_alone[n], grads[n]) for n in grads_alone)
    print(f"{name}: max |logit diff| per sequence {diffs}; loss {loss.item():.6f} vs {loss_alone.item():.6f} "
          f"(|diff| {abs(loss.item() - loss_alone.item()):.1e}); worst gradient rms ratio {worst:.1e} "
          f"over {len(grads)} parameters")


def main() -> None:
    torch.manual_seed(0)
    seqs = [torch.randint(3, VOCAB, (1, n)) for n in LENS]
    print(f"transformers packed rows on myfla: sequences of {', '.join(map(str, LENS))} tokens, fp32")
    for gva in (False, True):
        torch.manual_seed(1)
        model = qwen3_next(gva).train()
        report(f"Qwen3-Next ({'2 key / 4 value heads' if gva else '2 key = 2 value heads'}, conv 4)", model, seqs)
        if gva:
            report("Qwen3-Next without seq_idx (collated without return_seq_idx)", model, seqs, drop=("seq_idx",))
    torch.manual_seed(1)
    model = kimi_linear().train()
    report("Kimi Linear with cu_seqlens=", model, seqs, rename=(("cu_seq_lens_q", "cu_seqlens"),))
    report("Kimi Linear, collator keywords only (transformers does not map cu_seq_lens_q)", model, seqs)
    batch = collate_packed(seqs[:2])
    print("collator keys:", ", ".join(f"{k} {tuple(v.shape)} {v.dtype}" if torch.is_tensor(v) else f"{k} {v}"
                                      for k, v in batch.items()))


if __name__ == "__main__":
    main()
