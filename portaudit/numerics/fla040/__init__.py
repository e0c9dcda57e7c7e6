"""fla 0.4.0's case registry (``numerics.cases: fla-0.4.0``): invariants and golden cases of the
KDA and GatedDeltaNet closures, fla's CPU references as oracles, and their tolerances."""

from portaudit.numerics.case_registry import CaseRegistry
from portaudit.numerics.fla040.golden import golden_cases
from portaudit.numerics.fla040.invariants import declared_invariants, hypothesis_cases
from portaudit.numerics.fla040.reference import reference_implementation
from portaudit.numerics.fla040.tolerances import GOLDEN_RULES, invariant_rules

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
                "the gated norms, RMSNorm, l2norm, cumsum, solve_tril, index helpers, both layers",
)
