"""Findings and the one table of stable finding codes (documented in docs/codes.md).

Codes are never renumbered: a retired code stays reserved. Severity ``error`` makes a symbol
incomplete; ``warning`` is reported and kept in the baseline but does not lower completeness.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

ERROR = "error"
WARNING = "warning"

# status of a finding after waivers and the baseline are applied
OPEN = "open"          # counts against the gate
WAIVED = "waived"      # a manifest waiver with a reason accepts it
BASELINE = "baseline"  # accepted by the committed ratchet baseline (still to be fixed)


@dataclass(frozen=True)
class Code:
    code: str
    family: str
    severity: str
    title: str
    help: str


_TABLE = [
    # presence and kind
    Code("PA101", "presence", ERROR, "port module missing",
         "the mirrored module file does not exist in the port"),
    Code("PA102", "presence", ERROR, "port symbol missing",
         "the mirrored module exists but does not define (or re-export) the symbol"),
    Code("PA103", "presence", ERROR, "kind mismatch",
         "the port symbol's kind differs (class vs function, nn.Module, autograd.Function, ...)"),
    Code("PA104", "presence", ERROR, "method missing",
         "a method of a listed upstream class is not defined on the port class"),
    Code("PA105", "presence", ERROR, "kernel not accounted for",
         "no port citation covers the @triton.jit kernel's lines and no same-named torch function "
         "exists in the mirrored module"),
    Code("PA106", "presence", WARNING, "unresolved base",
         "the upstream class is an nn.Module / autograd.Function; the port class derives from a base "
         "defined outside the trees, so its kind cannot be checked statically"),
    # signatures (stubtest's taxonomy)
    Code("PA201", "signature", ERROR, "parameter missing",
         "an upstream parameter (or *args/**kwargs) is absent from the port signature"),
    Code("PA202", "signature", ERROR, "extra parameter",
         "the port signature has a parameter the upstream does not"),
    Code("PA203", "signature", ERROR, "parameter order differs",
         "the shared parameters appear in a different order"),
    Code("PA204", "signature", ERROR, "parameter kind differs",
         "positional-only / positional-or-keyword / keyword-only / *args / **kwargs differ"),
    Code("PA205", "signature", ERROR, "default presence differs",
         "one side has a default value and the other does not"),
    Code("PA206", "signature", ERROR, "default value differs",
         "both have defaults but their normalised source differs"),
    Code("PA207", "signature", WARNING, "annotation differs",
         "a parameter or return annotation differs in meaning (PEP 585/604 spellings such as "
         "tuple[int] for Tuple[int] agree); lower severity"),
    # citations
    Code("PA301", "citation", ERROR, "citation missing",
         "the port definition has no 'Source: path:Lx-Ly (pkg version)' line"),
    Code("PA302", "citation", ERROR, "citation version mismatch",
         "the citation names another package label or version than the manifest's upstream"),
    Code("PA303", "citation", ERROR, "cited file missing upstream",
         "the cited path is not a file in the upstream tree"),
    Code("PA304", "citation", ERROR, "citation range outside file",
         "the cited line range is empty or runs past the end of the upstream file"),
    Code("PA305", "citation", ERROR, "citation does not cover the definition",
         "the first citation does not cover the upstream definition of the same name "
         "(run `portaudit fix-citations`)"),
    Code("PA306", "citation", ERROR, "malformed citation",
         "a 'Source:' line that does not parse as 'Source: path:Lx-Ly (pkg version)'"),
    # no simplification
    Code("PA401", "simplification", ERROR, "stub body",
         "the body is only pass, ..., a docstring or raise NotImplementedError"),
    Code("PA402", "simplification", ERROR, "NotImplementedError not raised upstream",
         "the port raises NotImplementedError where the upstream definition does not"),
    Code("PA403", "simplification", ERROR, "marker word",
         "TODO, FIXME, XXX, HACK, placeholder, simplified, simplification, MVP, stub or "
         "'not implemented' in the symbol's code, comments or docstring"),
    Code("PA404", "simplification", ERROR, "constant return",
         "the port returns a literal (or a tuple of literals) where the upstream computes"),
    Code("PA405", "simplification", ERROR, "literal constant",
         "a module constant the upstream computes (device probes, feature flags) is a plain literal "
         "in the port; waive it with the reason when the computation has no meaning for the port"),
    Code("PA406", "simplification", ERROR, "stand-in return",
         "the body only returns an argument unchanged, a fresh constant tensor (torch.zeros_like, "
         "new_zeros, ...) or a tuple of those and literals, where the upstream computes its result"),
    Code("PA407", "simplification", ERROR, "class attribute differs",
         "a class-level attribute the upstream sets to a literal (model_type, base_model_prefix, ...) "
         "has another literal value in the port"),
    # manifest hygiene
    Code("PA501", "manifest", ERROR, "symbol not found upstream",
         "the manifest lists a symbol the upstream tree does not define"),
    Code("PA502", "manifest", ERROR, "unused waiver",
         "a waiver matches no finding (remove it: stale waivers hide future regressions)"),
    Code("PA503", "manifest", ERROR, "waiver without reason",
         "a waiver must say why; a reasonless waiver is ignored"),
    Code("PA504", "manifest", ERROR, "symbol listed twice",
         "the same upstream symbol appears more than once in the manifest"),
    Code("PA505", "manifest", ERROR, "deviation matches nothing",
         "a deviation names a symbol that is not in the manifest (nor a method of one)"),
    Code("PA506", "manifest", WARNING, "declared kind differs",
         "the entry's 'kind:' option disagrees with the upstream index"),
    Code("PA507", "manifest", WARNING, "unused rename",
         "a declared rename (port.renames or an entry's renames) changed nothing: remove it"),
    # bodies of copies
    Code("PA601", "body", ERROR, "body differs",
         "a copy's definition (decorators and body, normalised: comments, docstrings, formatting and "
         "import spelling ignored, declared renames applied) differs from the upstream's; the "
         "finding carries the unified diff, and its key the pair of fingerprints, so the baseline "
         "accepts exactly this difference"),
    Code("PA602", "body", WARNING, "body not compared",
         "a copy's body could not be normalised on one side (source this Python cannot parse)"),
]

CODES: dict[str, Code] = {c.code: c for c in _TABLE}
FAMILIES = ("presence", "signature", "citation", "simplification", "body", "manifest")


@dataclass
class Finding:
    code: str
    symbol: str
    message: str
    file: str
    line: int
    end_line: Optional[int] = None
    param: Optional[str] = None
    upstream_ref: Optional[str] = None
    detail: Optional[str] = None            # extra discriminator for the baseline key
    manifest: str = ""
    stage: Optional[str] = None
    status: str = OPEN
    reason: Optional[str] = None            # waiver reason
    deviation: Optional[str] = None         # deviation reason when the symbol is a deviation
    location: Optional[str] = None          # the port location, when an entry has several
    diff: Optional[str] = None              # PA601: unified diff of the normalised bodies
    extra: dict = field(default_factory=dict)

    @property
    def severity(self) -> str:
        return CODES[self.code].severity

    @property
    def family(self) -> str:
        return CODES[self.code].family

    @property
    def key(self) -> str:
        """Line-independent identity used by the ratchet baseline."""
        parts = [self.code, self.symbol + (f"@{self.location}" if self.location else "")]
        if self.param:
            parts.append(self.param)
        if self.detail:
            parts.append(self.detail)
        return ":".join(parts)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("extra", None)
        d["severity"] = self.severity
        d["family"] = self.family
        d["title"] = CODES[self.code].title
        d["key"] = self.key
        return d
