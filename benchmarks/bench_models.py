"""Language-model speed on CPU: myfla's KDA and GatedDeltaNet causal LMs (~100M parameters: hidden 768,
12 layers) side by side, in one run, with transformers' own torch paths for the same architectures
(Kimi Linear for KDA, Qwen3-Next for GatedDeltaNet) at matched sizes.

Measured (fp32, eval, no grad, ``--threads`` threads, medians over repeats):
- prefill: tokens/s of one forward over a ``--prefill`` token prompt (batch 1) that also fills the
  cache and keeps only the last position's logits, as generation's first step does;
- decode: ms per step of single-token steps through the cache after a ``--prompt`` token prefill,
  at batch 1 and 8.

Matching: every model has hidden 768, 12 layers, all of them linear-attention layers (transformers'
hybrid and MoE options off: Kimi Linear's ``layer_types`` all ``linear_attention`` and
``mlp_layer_types`` all ``dense``; Qwen3-Next's ``layer_types`` all ``linear_attention`` and
``mlp_only_layers`` every layer), a dense SwiGLU MLP of 2048, vocabulary 16384, untied embeddings, a
width-4 short convolution. KDA: 6 heads of 128 for q, k and v (fla's expand_v 1; Kimi Linear's
``linear_num_heads=6, linear_head_dim=128``). GatedDeltaNet: 6 key and 6 value heads of 128 (fla's
``head_dim=128, expand_v=1``; Qwen3-Next's ``linear_num_key_heads=6, linear_key_head_dim=128,
linear_num_value_heads=6, linear_value_head_dim=128``). Each pair comes out at the same parameter
count (KDA 115.0M, GatedDeltaNet 117.4M), printed with the results.

transformers' modeling modules are imported before anything else, so their kernels resolve to the
torch fallbacks (``chunk_kimi_delta_attention``, ``torch_chunk_gated_delta_rule`` and the recurrent
ones) rather than to an installed fla; fla itself is never imported.

    python benchmarks/bench_models.py                 # 2 threads, prefill 2048, decode batch 1 and 8
    python benchmarks/bench_models.py --quick         # a smoke run: prefill 256, few steps
    python benchmarks/bench_models.py --threads 8 --models myfla-kda hf-kimi-linear
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

# transformers' torch paths first: nothing named fla exists yet
import transformers  # noqa: I001
from transformers.models.kimi_linear import configuration_kimi_linear, modeling_kimi_linear
from transformers.models.qwen3_next import configuration_qwen3_next, modeling_qwen3_next

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "bench_models.json"

HIDDEN, LAYERS, MLP, VOCAB, CONV = 768, 12, 2048, 16384, 4


def myfla_kda():
    from myfla.models import KDAConfig, KDAForCausalLM
    return KDAForCausalLM(KDAConfig(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_heads=6, head_dim=128,
                                    expand_v=1.0, intermediate_size=MLP, vocab_size=VOCAB, conv_size=CONV,
                                    tie_word_embeddings=False, fuse_cross_entropy=False))


def myfla_gdn():
    from myfla.models import GatedDeltaNetConfig, GatedDeltaNetForCausalLM
    return GatedDeltaNetForCausalLM(GatedDeltaNetConfig(
        hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_heads=6, head_dim=128, expand_v=1.0,
        intermediate_size=MLP, vocab_size=VOCAB, conv_size=CONV, tie_word_embeddings=False,
        fuse_cross_entropy=False))


def hf_kimi_linear():
    cfg = configuration_kimi_linear.KimiLinearConfig(
        hidden_size=HIDDEN, num_hidden_layers=LAYERS, intermediate_size=MLP, vocab_size=VOCAB,
        linear_num_heads=6, linear_head_dim=128, linear_conv_kernel_dim=CONV,
        layer_types=["linear_attention"] * LAYERS, mlp_layer_types=["dense"] * LAYERS,
        tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return modeling_kimi_linear.KimiLinearForCausalLM(cfg)


def hf_qwen3_next():
    cfg = configuration_qwen3_next.Qwen3NextConfig(
        hidden_size=HIDDEN, num_hidden_layers=LAYERS, intermediate_size=MLP, vocab_size=VOCAB,
        linear_num_key_heads=6, linear_key_head_dim=128, linear_num_value_heads=6, linear_value_head_dim=128,
        linear_conv_kernel_dim=CONV, layer_types=["linear_attention"] * LAYERS,
        mlp_only_layers=list(range(LAYERS)), tie_word_embeddings=False)
    return modeling_qwen3_next.Qwen3NextForCausalLM(cfg)


MODELS = {
    "myfla-kda": ("KDA", myfla_kda),
    "hf-kimi-linear": ("KDA", hf_kimi_linear),
    "myfla-gated-deltanet": ("GatedDeltaNet", myfla_gdn),
    "hf-qwen3-next": ("GatedDeltaNet", hf_qwen3_next),
}


class Runner:
    """Calls a causal LM with its own name for the cache (transformers 5 models take ``cache``,
    myfla's and transformers 4's ``past_key_values``)."""

    def __init__(self, model):
        self.model = model
        params = inspect.signature(model.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        # transformers' models derive positions and the full-attention mask from the cache's
        # attention layers, which a linear-attention-only cache lacks (a ValueError in 5.x): they get
        # explicit positions and a prepared (empty: no padding) mask per layer type
        self.hf = "position_ids" in params

    def __call__(self, ids, cache=None, start=0):
        kwargs = {"use_cache": True, "logits_to_keep": 1}
        if cache is not None:
            kwargs[self.cache_arg] = cache
        if self.hf:
            kwargs["position_ids"] = torch.arange(start, start + ids.shape[1]).unsqueeze(0)
            kwargs["attention_mask"] = {"full_attention": None, "linear_attention": None}
        out = self.model(input_ids=ids, **kwargs)
        new_cache = getattr(out, "cache", None)
        if new_cache is None:
            new_cache = out.past_key_values
        return out.logits, new_cache


@torch.no_grad()
def measure(model, prefill: int, prompt: int, batches, steps: int, repeats: int) -> dict:
    run = Runner(model)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, VOCAB, (max(batches), max(prefill, prompt + steps + 8)), generator=gen)
    run(ids[:1, :16])                                     # one-time costs out of the timings
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        logits, _ = run(ids[:1, :prefill])
        times.append(time.perf_counter() - t0)
    assert logits.shape == (1, 1, VOCAB)
    prefill_s = statistics.median(times)
    result = {"prefill_tokens": prefill, "prefill_s": prefill_s, "prefill_tokens_per_s": prefill / prefill_s,
              "decode": {}}
    for batch in batches:
        _, cache = run(ids[:batch, :prompt])
        step_times = []
        for t in range(prompt, prompt + 4 + steps):      # 4 warm-up steps
            t0 = time.perf_counter()
            logits, cache = run(ids[:batch, t:t + 1], cache, start=t)
            if t >= prompt + 4:
                step_times.append(time.perf_counter() - t0)
        result["decode"][str(batch)] = {"prompt": prompt, "steps": steps,
                                        "ms_per_step": 1e3 * statistics.median(step_times),
                                        "ms_per_token": 1e3 * statistics.median(step_times) / batch}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="prefill 256, prompt 32, 4 steps, 1 repeat")
    parser.add_argument("--prefill", type=int, default=2048)
    parser.add_argument("--prompt", type=int, default=128, help="prompt length before decoding")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.prefill, args.prompt, args.steps, args.repeats = 256, 32, 4, 1
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    rows = []
    for name in args.models:
        family, build = MODELS[name]
        model = build().eval()
        n_params = sum(p.numel() for p in model.parameters())
        res = measure(model, args.prefill, args.prompt, args.batches, args.steps, args.repeats)
        res.update(model=name, family=family, parameters=n_params)
        rows.append(res)
        decode = "  ".join(f"b{b}: {res['decode'][str(b)]['ms_per_step']:.1f} ms/step" for b in args.batches)
        print(f"{name:22s} {n_params / 1e6:6.1f}M  prefill {res['prefill_tokens_per_s']:8.1f} tok/s  {decode}",
              flush=True)
        del model

    header = (f"| model | family | params | prefill T={args.prefill} tok/s | "
              + " | ".join(f"decode b={b} ms/token" for b in args.batches) + " |")
    print()
    print(header)
    print("|" + "---|" * (4 + len(args.batches)))
    for r in rows:
        cells = [r["model"], r["family"], f"{r['parameters'] / 1e6:.1f}M", f"{r['prefill_tokens_per_s']:.1f}"]
        cells += [f"{r['decode'][str(b)]['ms_per_token']:.2f}" for b in args.batches]
        print("| " + " | ".join(cells) + " |")

    meta = {"threads": args.threads, "quick": args.quick, "prefill": args.prefill, "prompt": args.prompt,
            "steps": args.steps, "repeats": args.repeats, "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "cpu_count": os.cpu_count(), "dtype": "float32",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": rows}, indent=1) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
