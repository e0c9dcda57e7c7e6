"""Record golden fixtures of fla 0.4.0's KDA, GatedDeltaNet and RWKV-7 language models (real fla, a CUDA GPU).

Run from the repository root on the GPU machine through ``tools/record_models_golden.sh`` (which
installs the fla wheels and trims Triton's autotuning), or directly:

    PYTHONPATH=/tmp/fla:$PWD python3 tools/record_models_golden.py --out tests/fixtures/models_golden

For each case a tiny randomly initialised causal LM (built on CPU from a seed, then moved to the
GPU) is run on a left-padded batch of two sequences and the script stores, in
``<out>/<case>.safetensors``: the weights (``sd.*``), the inputs (``input.*``), the eval-mode logits
(``output.logits``), the training-mode loss and the gradient of every parameter (``grad.*``), and a
greedy decoding of ``--new-tokens`` tokens with the cache (``decode.*``: the tokens, the prefill's
last logits and every step's logits, fed one token at a time through ``past_key_values``), plus,
where fla's ``generate`` works, its output (``generate.tokens``; a failure is recorded as text in
the index). ``<out>/checkpoints/<family>/`` holds ``save_pretrained`` (safetensors) of the base case
of each family. ``<out>/index.json`` describes the environment and every case.

fla 0.4.0 needs two patches under transformers 5 (recorded in the index): ``FLALayer`` lacks
``get_max_length`` (abstract there), and ``_tied_weights_keys`` is a list (no case ties weights).
Without the flash-attn package the hybrid case runs fla's ``Attention`` on the explicit-softmax
reference of ``tests/myfla/models/attention_reference.py`` (noted in its params).
"""

from __future__ import annotations

import abc
import argparse
import json
import platform
import sys
import tarfile
import time
import traceback
import zlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, Optional

import torch

# tiny models: 64 wide, one 64-dim head (fla's kernels' block size), 2 blocks, vocab 64
BASE = dict(hidden_size=64, num_hidden_layers=2, num_heads=1, head_dim=64, intermediate_size=64,
            vocab_size=64, conv_size=4, max_position_embeddings=256)
# RWKV-7 has no short convolution; small LoRA ranks keep its fixtures near the others' size
RWKV7_BASE = dict(hidden_size=64, num_hidden_layers=2, num_heads=1, head_dim=64, intermediate_size=64,
                  vocab_size=64, max_position_embeddings=256, decay_low_rank_dim=16, gate_low_rank_dim=16,
                  a_low_rank_dim=16, v_low_rank_dim=16)
FAMILY_BASE = {"kda": BASE, "gated_deltanet": BASE, "rwkv7": RWKV7_BASE}
CASES = {
    # name: (family, config overrides, save a checkpoint)
    "kda": ("kda", dict(), True),
    "gated_deltanet": ("gated_deltanet", dict(expand_v=1.0), True),
    # attention first: fla 0.4.0 mis-positions decoded tokens in attention layers behind a recurrent
    # layer 0 (fixed in fla 0.4.2 and in myfla; tests/myfla/models/test_models.py shows it on CPU)
    "kda_hybrid": ("kda", dict(attn=dict(layers=[0], num_heads=2, num_kv_heads=1, window_size=48)), False),
    "gated_deltanet_gva": ("gated_deltanet", dict(expand_v=1.0, num_v_heads=2, use_gate=False,
                                                  fuse_cross_entropy=False, fuse_norm=False), False),
    # v_first through the blocks, fla's LayerNorm (fused prenorm), sqrelu channel mixing, L2Wrap
    "rwkv7": ("rwkv7", dict(), True),
    # two 32-dim heads, torch LayerNorms, no norm on the embeddings, plain cross entropy
    "rwkv7_plain": ("rwkv7", dict(num_heads=2, head_dim=32, norm_first=False, fuse_norm=False,
                                  fuse_cross_entropy=False, use_l2warp=False), False),
}


def limit_triton_autotune(keep: int = 2) -> None:
    """Keep the ``keep`` autotune configs with the fewest pipeline stages (the full search costs
    minutes per kernel; one config can overflow shared memory). Must run before fla is imported."""
    import triton
    original = triton.autotune

    def autotune(configs, *args, **kwargs):
        configs = sorted(configs, key=lambda c: getattr(c, "num_stages", 0) or 0)[:keep]
        return original(configs, *args, **kwargs)

    triton.autotune = autotune


def patch_fla_for_transformers(notes: list) -> None:
    import fla.models.utils as fmu
    if "get_max_length" in getattr(fmu.FLALayer, "__abstractmethods__", ()):
        fmu.FLALayer.get_max_length = lambda self: -1
        abc.update_abstractmethods(fmu.FLALayer)
        notes.append("FLALayer.get_max_length added (abstract in this transformers)")


def use_reference_attention_if_needed(notes: list) -> bool:
    """True when fla's Attention runs on the real flash-attn package."""
    import fla.layers.attn as attn
    if attn.flash_attn_func is not None:
        return True
    from tests.myfla.models.attention_reference import ref_flash_attn_func, ref_flash_attn_varlen_func
    attn.flash_attn_func = ref_flash_attn_func
    attn.flash_attn_varlen_func = ref_flash_attn_varlen_func
    notes.append("flash-attn absent: Attention runs on the explicit-softmax reference")
    return False


def family_classes(family: str):
    if family == "kda":
        from fla.models.kda import KDAConfig, KDAForCausalLM
        return KDAConfig, KDAForCausalLM
    if family == "rwkv7":
        from fla.models.rwkv7 import RWKV7Config, RWKV7ForCausalLM
        return RWKV7Config, RWKV7ForCausalLM
    from fla.models.gated_deltanet import GatedDeltaNetConfig, GatedDeltaNetForCausalLM
    return GatedDeltaNetConfig, GatedDeltaNetForCausalLM


def make_inputs(seed: int, batch: int, length: int, pad: int, vocab: int) -> Dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, length), generator=gen)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, :pad] = 0                               # the second sequence is left-padded
    ids = ids.masked_fill(mask == 0, 0)
    labels = ids.masked_fill(mask == 0, -100)
    return {"input.input_ids": ids, "input.attention_mask": mask, "input.labels": labels}


def run_case(name: str, family: str, overrides: dict, out: Path, device: torch.device, args) -> dict:
    from fla.models.utils import Cache
    Config, CausalLM = family_classes(family)
    seed = zlib.crc32(name.encode())
    kwargs = dict(FAMILY_BASE[family], **overrides)
    torch.manual_seed(seed)
    model = CausalLM(Config(**kwargs))
    tensors = {f"sd.{k}": v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    model.to(device)
    inputs = make_inputs(seed, 2, args.length, args.pad, kwargs["vocab_size"])
    tensors.update(inputs)
    ids, mask, labels = (inputs[k].to(device) for k in ("input.input_ids", "input.attention_mask", "input.labels"))

    model.eval()
    with torch.no_grad():
        tensors["output.logits"] = model(ids, attention_mask=mask, use_cache=False).logits.float().cpu()

    model.train()
    model.zero_grad(set_to_none=True)
    loss = model(ids, attention_mask=mask, labels=labels, use_cache=False).loss
    loss.backward()
    tensors["output.loss"] = loss.detach().float().cpu().reshape(1)
    for n, p in model.named_parameters():
        if p.grad is not None:
            tensors[f"grad.{n}"] = p.grad.detach().float().cpu()
    model.zero_grad(set_to_none=True)

    model.eval()
    record: dict = {"family": family, "config": kwargs, "seed": seed, "length": args.length, "pad": args.pad,
                    "new_tokens": args.new_tokens, "train_loss": train_loss(family, kwargs)}
    with torch.no_grad():
        cache = Cache()
        step = model(ids, attention_mask=mask, past_key_values=cache, use_cache=True)
        first = step.logits[:, -1].float()
        nxt = first.argmax(-1)
        tokens, steps, m = [], [], mask
        for _ in range(args.new_tokens):
            tokens.append(nxt)
            m = torch.cat([m, m.new_ones(m.shape[0], 1)], 1)
            step = model(nxt[:, None], attention_mask=m, past_key_values=step.past_key_values, use_cache=True)
            steps.append(step.logits[:, -1].float())
            nxt = steps[-1].argmax(-1)
        tensors["decode.first_logits"] = first.cpu()
        tensors["decode.tokens"] = torch.stack(tokens, 1).cpu()
        tensors["decode.step_logits"] = torch.stack(steps, 1).cpu()
        try:
            gen = model.generate(ids, attention_mask=mask, max_new_tokens=args.new_tokens,
                                 min_new_tokens=args.new_tokens, do_sample=False)
            tensors["generate.tokens"] = gen[:, ids.shape[1]:].cpu()
            record["generate"] = "ok"
            # fla 0.4.0's mixin can lose the prompt under transformers 5 (it slices the input to its
            # last token when generate hands it a pre-built DynamicCache): say whether generate
            # agrees with the greedy decode above (comparable only when that decode has no eos,
            # which generate's min_new_tokens suppresses)
            eos = model.config.eos_token_id
            if eos is not None and bool((tensors["decode.tokens"] == eos).any()):
                record["generate_vs_decode"] = "not comparable (eos in the greedy decode)"
            elif torch.equal(tensors["generate.tokens"], tensors["decode.tokens"]):
                record["generate_vs_decode"] = "equal"
            else:
                record["generate_vs_decode"] = "differs"
        except Exception as exc:
            record["generate"] = f"error: {type(exc).__name__}: {exc}"

    if CASES[name][2]:
        ckpt = out_dir_checkpoint(out, family)
        # fla 0.4.0 declares `_tied_weights_keys` as a list; transformers 5's save_pretrained reads
        # it as a mapping and fails ('list' object has no attribute 'keys'). Give the instance fla
        # 0.6.0's mapping (the same tie) so fla's own save_pretrained can write the checkpoint; the
        # files it writes do not depend on this attribute's form.
        if isinstance(getattr(model, "_tied_weights_keys", None), list) and _version("transformers", major=True) >= 5:
            model._tied_weights_keys = {"lm_head.weight": "model.embeddings.weight"}
            record["tied_weights_keys_patched"] = "fla 0.6.0's mapping form (transformers >= 5)"
        model.cpu().save_pretrained(str(ckpt), safe_serialization=True)
        record["checkpoint"] = str(ckpt.relative_to(out))

    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / f"{name}.safetensors"))
    record["file"] = f"{name}.safetensors"
    return record


def train_loss(family: str, config: dict) -> str:
    """The loss the causal LM trains with under ``config`` (each family's defaults)."""
    fused = config.get("fuse_cross_entropy", True)
    if family == "kda" and fused:
        loss = "fused linear cross entropy"
    elif config.get("fuse_linear_cross_entropy", False):
        loss = "fused linear cross entropy"
    else:
        loss = "fused cross entropy" if fused else "nn.CrossEntropyLoss"
    if family == "rwkv7" and config.get("use_l2warp", True):
        loss += " + L2Wrap"
    return loss


def out_dir_checkpoint(out: Path, family: str) -> Path:
    path = out / "checkpoints" / family
    path.mkdir(parents=True, exist_ok=True)
    return path


def _version(dist: str, major: bool = False):
    """The installed version of ``dist`` (None if absent), or its major number (0 if absent)."""
    try:
        from importlib.metadata import version
        found = version(dist)
    except Exception:
        found = None
    if major:
        return int(found.split(".")[0]) if found else 0
    return found


def _archive(src: Path, archive: Optional[Path]) -> None:
    if archive is None:
        return
    tmp = archive.with_name(archive.name + ".part")
    with tarfile.open(tmp, "w") as tf:
        tf.add(src, arcname=src.name)
    tmp.replace(archive)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("tests/fixtures/models_golden"))
    ap.add_argument("--cases", default=None, help="comma-separated subset of " + ",".join(CASES))
    ap.add_argument("--length", type=int, default=80, help="prompt length (> 64: fla trains in chunk mode only)")
    ap.add_argument("--pad", type=int, default=11, help="left padding of the second sequence")
    ap.add_argument("--new-tokens", type=int, default=20)
    ap.add_argument("--archive", type=Path, default=None, help="rewrite this .tar of --out after each case")
    ap.add_argument("--no-autotune-limit", action="store_true")
    args = ap.parse_args(argv)

    if not args.no_autotune_limit:
        limit_triton_autotune()
    import transformers
    notes: list = []
    patch_fla_for_transformers(notes)
    real_flash_attn = use_reference_attention_if_needed(notes)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda":
        print("warning: no CUDA device; fla's Triton kernels need one", flush=True)

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    index = {
        "format": "myfla-models-golden", "version": 1,
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "triton": _version("triton"), "transformers": transformers.__version__,
                        "fla-core": _version("fla-core"), "flash-linear-attention": _version("flash-linear-attention"),
                        "flash-attn": _version("flash-attn"), "cuda": torch.version.cuda,
                        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                        "tf32_note": "fla's Triton dots use TF32 for fp32 inputs"},
        "patches": notes, "flash_attn": "real" if real_flash_attn else "reference",
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cases": {},
    }
    wanted = list(CASES) if args.cases is None else args.cases.split(",")
    for name in wanted:
        family, overrides, _ = CASES[name]
        t0 = time.time()
        try:
            rec = run_case(name, family, overrides, out, device, args)
            rec["status"] = "ok"
            if "attn" in overrides:
                rec["attention"] = index["flash_attn"]
        except Exception as exc:
            rec = {"family": family, "status": "error", "error": f"{type(exc).__name__}: {exc}"}
            traceback.print_exc()
        rec["seconds"] = round(time.time() - t0, 1)
        index["cases"][name] = rec
        print(f"{name}: {rec['status']} ({rec['seconds']}s) generate={rec.get('generate')}", flush=True)
        (out / "index.json").write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
        _archive(out, args.archive)
    bad = [n for n, r in index["cases"].items() if r["status"] != "ok"]
    print(f"done: {len(index['cases']) - len(bad)} ok, errors: {bad}", flush=True)
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
