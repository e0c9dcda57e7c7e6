"""How real fla 0.4.0 behaves in the execution modes myfla has deviations or fixes for, side by side
with myfla on the same GPU: inference mode, autocast, reentrant gradient checkpointing of the RWKV-7
model. Writes one JSON record; needs CUDA and fla importable (``PYTHONPATH``, /work/shared/GPU.md).

    python tools/probe_fla_modes.py --out fla_modes.json

- inference mode: chunk GDN / KDA / RWKV-7 forward inside ``torch.inference_mode()`` against
  ``no_grad`` (does the op run, and is it bit-for-bit the same?);
- autocast: the same ops' forward and backward on fp32 inputs inside bf16 autocast against outside
  (myfla runs its kernels with autocast off, a manifest deviation that claims fla's Triton kernels
  ignore autocast);
- reentrant checkpointing: fla's ``RWKV7ForCausalLM`` with ``use_reentrant=True``; a block that runs
  more than twice in one step raises (else the backward nests without end).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _inputs(op, dev, T=256, H=2, K=64, seed=0):
    import torch
    import torch.nn.functional as F
    gen = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=gen).to(dev)
    if op == 'rwkv7':
        rr, w, k, v, a = (r(1, T, H, K) for _ in range(5))
        kk = F.normalize(k, dim=-1)
        return dict(args=[rr, -F.softplus(w) - 0.5, k, v, -kk, kk * a.sigmoid()])
    q, k, v = r(1, T, H, K), F.normalize(r(1, T, H, K), dim=-1), r(1, T, H, K)
    g = F.logsigmoid(r(1, T, H, K)) / 8 if op == 'kda' else F.logsigmoid(r(1, T, H))
    return dict(args=[q, k, v, g, r(1, T, H).sigmoid()])


def _op(package, op):
    if op == 'gdn':
        from importlib import import_module
        return import_module(f'{package}.ops.gated_delta_rule').chunk_gated_delta_rule
    if op == 'kda':
        from importlib import import_module
        return import_module(f'{package}.ops.kda').chunk_kda
    from importlib import import_module
    return import_module(f'{package}.ops.rwkv7').chunk_rwkv7


def _call(fn, args):
    o, s = fn(*args, output_final_state=True)
    return [o, s]


def _same(a, b):
    return all(x.dtype == y.dtype and bool((x == y).all()) for x, y in zip(a, b))


def probe_inference_mode(package, dev):
    import torch
    out = {}
    for op in ('gdn', 'kda', 'rwkv7'):
        fn, args = _op(package, op), _inputs(op, dev)['args']
        try:
            with torch.no_grad():
                ref = _call(fn, args)
            with torch.inference_mode():
                got = _call(fn, args)
            out[op] = 'runs, equal to no_grad' if _same(ref, got) else 'runs, DIFFERS from no_grad'
        except Exception as e:  # the record says what failed
            out[op] = f'fails: {type(e).__name__}: {e}'[:300]
    return out


def probe_autocast(package, dev):
    import torch
    out = {}
    for op in ('gdn', 'kda', 'rwkv7'):
        fn = _op(package, op)

        def step(autocast):
            args = [x.clone().requires_grad_() for x in _inputs(op, dev)['args']]
            with torch.autocast('cuda', dtype=torch.bfloat16, enabled=autocast):
                o, s = _call(fn, args)
            gen = torch.Generator().manual_seed(9)
            (o * torch.randn(o.shape, generator=gen).to(dev)).sum().backward()
            return [o.detach(), s.detach()] + [x.grad for x in args]
        try:
            ref, got = step(False), step(True)
            out[op] = ('equal inside and outside autocast' if _same(ref, got) else
                       'DIFFERS inside autocast: ' + ', '.join(f'{x.dtype}/{y.dtype}' for x, y in zip(ref, got)))
        except Exception as e:
            out[op] = f'fails: {type(e).__name__}: {e}'[:300]
    return out


def probe_rwkv7_reentrant_checkpointing(package, dev):
    import importlib

    import torch

    from tests.myfla.models.checkpoint_guard import guard_recomputation
    models = importlib.import_module(f'{package}.models')
    config = models.RWKV7Config(hidden_size=64, num_hidden_layers=2, vocab_size=97, head_dim=32)
    torch.manual_seed(0)
    model = models.RWKV7ForCausalLM(config).to(dev).train()
    ids = torch.randint(0, 97, (2, 64), device=dev)
    out = {}
    for reentrant in (False, True):
        model.zero_grad(set_to_none=True)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={'use_reentrant': reentrant})
        calls = guard_recomputation(model)
        try:
            model(ids, labels=ids, use_cache=False).loss.backward()
            out[f'use_reentrant={reentrant}'] = f'finishes ({len(calls)} block runs)'
        except Exception as e:
            out[f'use_reentrant={reentrant}'] = f'fails: {type(e).__name__}: {e}'[:300]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    from portaudit.numerics.record import limit_triton_autotune
    limit_triton_autotune()
    import torch
    if not torch.cuda.is_available():
        print("probe_fla_modes: needs a CUDA device", file=sys.stderr)
        return 2
    warnings.simplefilter('ignore')
    record = {'device': torch.cuda.get_device_name(), 'torch': torch.__version__, 'results': {}}
    for package in ('fla', 'myfla'):
        for name, probe in [('inference_mode', probe_inference_mode), ('autocast', probe_autocast),
                            ('rwkv7_reentrant_checkpointing', probe_rwkv7_reentrant_checkpointing)]:
            start = time.time()
            try:
                result = probe(package, torch.device('cuda'))
            except Exception:
                result = {'probe failed': traceback.format_exc()[-600:]}
            record['results'][f'{package} {name}'] = result
            print(f'{package} {name} ({time.time() - start:.0f} s): {result}', flush=True)
            args.out.write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
