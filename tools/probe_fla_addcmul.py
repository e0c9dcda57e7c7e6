"""RWKV-7's fused_addcmul_rwkv7 backward (addcmul_bwd2, which fla compiles with fullgraph=True) met
with more dtype / use_xg / determinism combinations than dynamo's recompile limit (8), on CUDA tensors;
with ``fla``, also fla's compiled sums against myfla's eager ones on the same inputs. Prints one JSON
object a line; needs CUDA, and fla importable for ``fla`` (``PYTHONPATH``, /work/shared/GPU.md).

    python tools/probe_fla_addcmul.py fla     # or: myfla
"""
import json, sys, time, warnings
import torch
warnings.simplefilter('ignore')
which = sys.argv[1]
if which == 'fla':
    from fla.ops.rwkv7.fused_addcmul import fused_addcmul_rwkv7, addcmul_bwd2
    from myfla.ops.rwkv7.fused_addcmul import _addcmul_bwd2_eager
    gen = torch.Generator().manual_seed(1)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        xs = [torch.randn(4, 512, 256, generator=gen).to('cuda', dtype) for _ in range(7)]
        want = addcmul_bwd2(*xs[:6], xs[6], True)
        got = _addcmul_bwd2_eager(*xs[:6], xs[6], True)
        rel = max(((w - g).abs().max() / w.abs().max()).item() for w, g in zip(want, got))
        print(json.dumps({'compare': str(dtype), 'fla_compiled_dtype': str(want[0].dtype), 'myfla_eager_dtype': str(got[0].dtype), 'max_rel_err': rel}), flush=True)
    torch._dynamo.reset()
else:
    from myfla.ops.rwkv7.fused_addcmul import fused_addcmul_rwkv7
print(json.dumps({'impl': which, 'torch': torch.__version__, 'device': torch.cuda.get_device_name()}), flush=True)
def once(dtype, use_xg, det):
    torch.use_deterministic_algorithms(det, warn_only=True)
    gen = torch.Generator().manual_seed(0)
    B, T, D = 2, 64, 256
    leaves = [torch.randn(s, generator=gen).to('cuda', dtype).requires_grad_() for s in [(B, T, D)] * 2 + [(1, 1, D)] * (6 if use_xg else 5)]
    outs = fused_addcmul_rwkv7(leaves[0], leaves[1], *leaves[2:], *([] if use_xg else [None]))
    loss = sum(o.float().square().sum() for o in outs if o is not None)
    loss.backward()
for det in (False, True):
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for use_xg in (True, False):
            start = time.time()
            try:
                once(dtype, use_xg, det); result = 'ok'
            except Exception as e:
                result = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:160]}"
            print(json.dumps({'dtype': str(dtype), 'use_xg': use_xg, 'deterministic': det, 'result': result, 's': round(time.time() - start, 1)}), flush=True)
torch.use_deterministic_algorithms(False)
