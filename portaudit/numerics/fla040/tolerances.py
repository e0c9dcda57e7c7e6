"""fla 0.4.0's tolerance rules: invariants on the CPU, golden fixtures from Triton kernels (TF32)."""

from __future__ import annotations

from typing import List

from portaudit.numerics.tolerances import STRICT, Tolerance


# CPU-vs-CPU invariants: an fp32 implementation against fp64 references or against itself.
INVARIANT_RULES: List[Tolerance] = [
    Tolerance("*", "*", "fp32", 1e-5, STRICT),
    Tolerance("*", "d*", "fp32", 1e-4, "gradients of an fp32 implementation vs fp64 autograd (brief: 1e-4)"),
    Tolerance("*", "*", "fp64", 1e-10, "fp64 against fp64: only summation-order differences"),
    Tolerance("*", "*", "bf16", 2e-2, "bf16 inputs carry an 8-bit mantissa (fla's tests use 5e-3..2e-2)"),
    Tolerance("*", "*", "fp16", 5e-3, "fp16 inputs (fla's own tests: 5e-3 outputs, 8e-3 grads)"),
    Tolerance("*", "d*", "fp16", 8e-3, "fp16 inputs (fla's own tests: 8e-3 gradients)"),
    Tolerance("*Attention", "*", "fp32", 2e-5,
              "layers chain projections, conv, norm and the recurrence in fp32 (several rounding steps)"),
    Tolerance("GatedDeltaNet", "*", "fp32", 2e-5,
              "layers chain projections, conv, norm and the recurrence in fp32 (several rounding steps)"),
    Tolerance("*Attention", "d*", "fp32", 1e-4, "layer gradients of an fp32 implementation vs fp64 autograd"),
    Tolerance("GatedDeltaNet", "d*", "fp32", 1e-4, "layer gradients of an fp32 implementation vs fp64 autograd"),
]

# Golden fixtures: real fla on a GPU. Triton dots take TF32 for fp32 inputs (GPU.md).
TF32 = "fla's Triton dots use TF32 for fp32 inputs (GPU.md: ~1.5e-4 outputs, ~7e-4 states, ~1e-3 gradients)"
GOLDEN_RULES: List[Tolerance] = [
    Tolerance("*", "*", "fp32", 1e-5, "elementwise/recurrent fp32 kernels: rounding-order differences only"),
    Tolerance("chunk_*", "*", "fp32", 1e-3, TF32),
    Tolerance("chunk_*", "ht", "fp32", 3e-3, TF32),
    Tolerance("chunk_gated_delta_rule", "o", "fp32", 3e-3,
              TF32 + "; GDN's outputs are small next to their TF32 error (fla vs fp32 CPU reference: 1.4e-3)"),
    Tolerance("chunk_*", "d*", "fp32", 5e-3, TF32),
    Tolerance("chunk_*", "*", "bf16", 2e-2, "bf16 inputs on top of TF32 dots (fla's own tests: up to 2e-2)"),
    Tolerance("solve_tril", "*", "fp32", 1e-3, "fla inverts 16x16 blocks and merges them with TF32 dots"),
    Tolerance("chunk_local_cumsum", "*", "fp32", 1e-5, "fp32 prefix sums; summation order differs"),
    Tolerance("*Attention", "*", "fp32", 3e-3, TF32 + "; the layer runs the chunk kernels"),
    Tolerance("*Attention", "d*", "fp32", 1e-2, TF32 + "; layer gradients pass through the chunk backward"),
    Tolerance("*Attention", "dparam.A_log", "fp32", 5e-2,
              "an H-element gradient summing TF32-rounded terms over every token and channel with "
              "cancellation (fla vs the fp32 CPU reference: 1.1e-2..1.8e-2)"),
    Tolerance("GatedDeltaNet", "*", "fp32", 3e-3, TF32 + "; the layer runs the chunk kernels"),
    Tolerance("GatedDeltaNet", "d*", "fp32", 1e-2, TF32 + "; layer gradients pass through the chunk backward"),
]


def invariant_rules(precision: str) -> List[Tolerance]:
    """Built-in rules of ``invariants`` for an implementation's arithmetic. ``tf32`` (real fla on a
    GPU, ``--impl fla``) runs the chunk kernels with TF32 dots, so its chunk ops, ``solve_tril`` and
    the layers get the golden fixtures' TF32 bounds (measured on an H100: chunk outputs <= 1.5e-3,
    gradients <= 1.5e-3, KDA's ``dparam.A_log`` 4.6e-3); recurrent and elementwise kernels keep the
    fp32 bounds. ``fp32``: the CPU bounds everywhere."""
    if precision == "tf32":
        return [r for r in GOLDEN_RULES if r.op != "*"] + INVARIANT_RULES
    return list(INVARIANT_RULES)
