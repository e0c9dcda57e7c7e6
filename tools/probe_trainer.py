#!/usr/bin/env python3
"""transformers' ``Trainer`` training myfla's three causal LMs on CPU, in fp32 and with ``bf16=True``
(autocast), as a user would set it up (run from a checkout; needs ``accelerate``, which the test
extra does not install):

    pip install accelerate && OMP_NUM_THREADS=1 python tools/probe_trainer.py

Tiny random models (hidden 64, two layers, vocabulary 300), 16 sequences of 96 tokens, batches of 4,
six steps; prints each run's losses, or the error and the myfla line it came from. This is how the
two failures fixed on 2026-11-27 showed up: KDA / GatedDeltaNet under bf16 autocast ("Found dtype
Float but expected BFloat16") and RWKV-7 in any dtype (transformers 5 scales the loss in place, which
fla's L2Wrap output does not allow).
"""

from __future__ import annotations

import sys
import traceback
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from transformers import Trainer, TrainingArguments  # noqa: E402

import myfla.models as models  # noqa: E402

FAMILIES = [("KDA", {"head_dim": 16, "num_heads": 4}),
            ("GatedDeltaNet", {"head_dim": 16, "num_heads": 4}),
            ("RWKV7", {"head_dim": 16})]


def main() -> int:
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    data = []
    for _ in range(16):
        ids = torch.randint(0, 300, (96,))
        data.append({"input_ids": ids, "labels": ids.clone()})
    failed = 0
    for family, kw in FAMILIES:
        for bf16 in (False, True):
            torch.manual_seed(0)
            config = getattr(models, f"{family}Config")(hidden_size=64, num_hidden_layers=2, vocab_size=300, **kw)
            model = getattr(models, f"{family}ForCausalLM")(config)
            args = TrainingArguments(output_dir="/tmp/myfla_probe_trainer", per_device_train_batch_size=4,
                                     max_steps=6, learning_rate=1e-3, bf16=bf16, use_cpu=True, report_to=[],
                                     logging_steps=1, save_strategy="no", disable_tqdm=True)
            label = f"{family:14s} {'bf16' if bf16 else 'fp32'}"
            try:
                trainer = Trainer(model=model, args=args, train_dataset=data)
                trainer.train()
                losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
                print(f"{label} ok, losses {' '.join(f'{x:.3f}' for x in losses)}", flush=True)
            except Exception as err:                               # noqa: BLE001 - the probe reports it
                failed += 1
                frames = traceback.extract_tb(err.__traceback__)
                site = next((f"{f.filename}:{f.lineno}" for f in reversed(frames) if "myfla" in f.filename), "?")
                print(f"{label} FAILED {type(err).__name__}: {str(err)[:160]} (at {site})", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
