"""fla 0.4.0's case registry (``numerics.cases: fla-0.4.0``): invariants and golden cases of the
KDA, GatedDeltaNet and RWKV-7 closures, fla's CPU references as oracles, and their tolerances."""

from typing import List

from portaudit.numerics.case_registry import CaseRegistry
from portaudit.numerics.fla040 import golden, invariants
from portaudit.numerics.fla040.golden_rwkv7 import rwkv7_golden_cases
from portaudit.numerics.fla040.invariants import hypothesis_cases
from portaudit.numerics.fla040.invariants_rwkv7 import rwkv7_invariants
from portaudit.numerics.fla040.reference import reference_implementation
from portaudit.numerics.fla040.tolerances import GOLDEN_RULES, invariant_rules
from portaudit.numerics.golden_cases import GoldenCase
from portaudit.numerics.invariants import Invariant


def golden_cases() -> List[GoldenCase]:
    """The KDA/GDN cases, then RWKV-7's (named rwkv7/..., recorded in a run of their own)."""
    return golden.golden_cases() + rwkv7_golden_cases()


def declared_invariants() -> List[Invariant]:
    """The KDA/GDN invariants, then RWKV-7's (the DPLR delta rule, its ops, token shift, the layer)."""
    return invariants.declared_invariants() + rwkv7_invariants()

REGISTRY = CaseRegistry(
    name="fla-0.4.0",
    upstream_package="fla",
    upstream=("fla-core==0.4.0", "flash-linear-attention==0.4.0"),
    invariants=declared_invariants,
    golden_cases=golden_cases,
    reference=lambda root, fp64=False: reference_implementation(root, fp64=fp64),
    invariant_rules=invariant_rules,
    golden_rules=lambda: list(GOLDEN_RULES),
    hypothesis_cases=hypothesis_cases,
    description="fla 0.4.0: chunk/fused_recurrent KDA and GDN, the KDA gate, ShortConvolution, causal_conv1d, "
                "the gated norms, RMSNorm, l2norm, cumsum, solve_tril, index helpers, both layers; the DPLR delta "
                "rule, RWKV-7's ops, token_shift and RWKV7Attention",
)
