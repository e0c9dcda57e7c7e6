#!/usr/bin/env python3
"""What transformers 4.57's Qwen3-Next does with myfla served as ``fla`` (run it in a venv with
transformers 4.57 and torch; the project's own venv has transformers 5):

    python3 -m venv /tmp/tf457 && /tmp/tf457/bin/pip install torch==2.13.0 transformers==4.57.6 einops
    PYTHONPATH=. /tmp/tf457/bin/python tools/probe_transformers_457.py

transformers 4.57 picks fla when its modeling module is imported, through
``is_flash_linear_attention_available()``, which returns False whenever ``torch.cuda.is_available()``
is False (before it looks at fla); with fla it builds ``FusedRMSNormGated(device=torch.cuda.current_device(),
dtype=config.dtype or torch.get_current_dtype())``. (Kimi Linear is not in transformers 4.57: its
checkpoints' remote code imports fla directly.)

Part 1 runs as a CPU user would: the alias is installed and transformers still takes its fallback.
Part 2 shows what a CUDA machine would get: the two CUDA probes answer as there (``is_available`` True
while the modeling module is imported, ``current_device`` giving the device), nothing in transformers
is patched, and the model built on myfla is compared with the fallback model (logits, loss, gradients,
greedy tokens). Prints one line per finding.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
MODELING = "transformers.models.qwen3_next.modeling_qwen3_next"


class _BlockFla(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == "fla" or fullname.startswith("fla."):
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


def config(gva: bool):
    from transformers import Qwen3NextConfig
    cfg = Qwen3NextConfig(
        vocab_size=97, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
        layer_types=["linear_attention", "full_attention"], num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4 if gva else 2, linear_key_head_dim=16,
        linear_value_head_dim=8, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
        shared_expert_intermediate_size=32, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return cfg


def rms_ratio(ref, x):
    ref, x = ref.detach().double(), x.detach().double()
    return ((x - ref).square().mean().sqrt() / ref.square().mean().sqrt()).item()


def main() -> int:
    import transformers
    import myfla
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, "
          f"CUDA available: {torch.cuda.is_available()}")

    # the fallback copy: fla not importable
    blocker = _BlockFla()
    sys.meta_path.insert(0, blocker)
    fallback = importlib.import_module(MODELING)
    sys.meta_path.remove(blocker)
    sys.modules.pop(MODELING)

    # part 1: as a CPU user
    print(f"install_as_fla() -> {myfla.install_as_fla()}")
    import fla.modules
    import fla.ops.gated_delta_rule  # noqa: F401  (imported while torch answers truthfully)
    from transformers.utils.import_utils import is_flash_linear_attention_available
    print(f"part 1: is_flash_linear_attention_available() -> {is_flash_linear_attention_available()} "
          f"(it returns False when torch.cuda.is_available() is False)")
    cpu_copy = importlib.import_module(MODELING)
    sys.modules.pop(MODELING)
    print(f"part 1: Qwen3-Next binds chunk_gated_delta_rule={cpu_copy.chunk_gated_delta_rule}, "
          f"FusedRMSNormGated={cpu_copy.FusedRMSNormGated}: the torch fallback, myfla unused")

    # part 2: the CUDA probes answer as on a GPU machine; transformers itself is not patched
    is_available, current_device = torch.cuda.is_available, torch.cuda.current_device
    torch.cuda.is_available = lambda: True
    try:
        served = importlib.import_module(MODELING)
    finally:
        torch.cuda.is_available = is_available
    print(f"part 2: Qwen3-Next binds {served.chunk_gated_delta_rule.__module__}.chunk_gated_delta_rule, "
          f"{served.fused_recurrent_gated_delta_rule.__module__}.fused_recurrent_gated_delta_rule, "
          f"{served.FusedRMSNormGated.__module__}.FusedRMSNormGated")
    torch.cuda.current_device = lambda: "cpu"                  # the device index a GPU machine returns
    try:
        try:
            served.Qwen3NextForCausalLM(config(True))
        except Exception as error:                             # noqa: BLE001 (reported, not handled)
            print(f"part 2: building the model without config.dtype fails: {type(error).__name__}: {error}")
        for gva in (False, True):
            cfg = config(gva)
            cfg.dtype = torch.float32
            torch.manual_seed(0)
            ref = fallback.Qwen3NextForCausalLM(cfg)
            ours = served.Qwen3NextForCausalLM(cfg)
            ours.load_state_dict(ref.state_dict())
            ids = torch.randint(3, 97, (2, 150))
            out_ref = ref(ids, labels=ids)
            out = ours(ids, labels=ids)
            out_ref.loss.backward()
            out.loss.backward()
            # gradients within 1e-6 everywhere count as equal (tests/numerics.py's assert_rms rule)
            grads = max([rms_ratio(p.grad, q.grad) for p, q in zip(ref.parameters(), ours.parameters())
                         if p.grad is not None and (p.grad - q.grad).abs().max() > 1e-6], default=0.0)
            with torch.no_grad():
                tokens_ref = ref.eval().generate(ids[:, :40], max_new_tokens=30, do_sample=False, pad_token_id=0)
                tokens = ours.eval().generate(ids[:, :40], max_new_tokens=30, do_sample=False, pad_token_id=0)
            same = int((tokens == tokens_ref).all(1).sum())
            print(f"part 2 ({'GVA' if gva else 'equal heads'}): norm {type(ours.model.layers[0].linear_attn.norm).__module__}; "
                  f"logits rms ratio {rms_ratio(out_ref.logits, out.logits):.1e}, loss {out_ref.loss.item():.6f} vs "
                  f"{out.loss.item():.6f}, worst gradient rms ratio (differences over 1e-6) {grads:.1e}, greedy: {same}/2 sequences "
                  f"equal over 30 tokens")
    finally:
        torch.cuda.current_device = current_device
    return 0


if __name__ == "__main__":
    sys.exit(main())
