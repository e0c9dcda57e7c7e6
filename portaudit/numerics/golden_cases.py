"""A golden case: how to draw its inputs and how to run it through the upstream's API.

A case draws its inputs on the CPU from a generator seeded with ``crc32(name)``, so the inputs
do not depend on the device. ``run(case, impl, inputs, device)`` calls only upstream API paths
resolved by the implementation and returns a flat dict of output tensors (forward outputs, final
states, gradients of a fixed cotangent, decode steps). The recorder (:mod:`.record`) stores
inputs and outputs; the checker (:mod:`.golden`) feeds the recorded inputs to another
implementation and compares outputs. The cases themselves belong to a case registry
(:mod:`.case_registry`; fla 0.4.0's are in :mod:`.fla040.golden`).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch

from portaudit.numerics.impl import Implementation

Tensors = Dict[str, torch.Tensor]


@dataclass
class GoldenCase:
    name: str
    api: str
    kind: str                      # op | module | layer
    params: Dict[str, Any]
    make: Callable[["GoldenCase", torch.Generator, Implementation], Tensors]
    run: Callable[["GoldenCase", Implementation, Tensors, torch.device], Tensors]
    note: str = ""
    apis: List[str] = field(default_factory=list)

    @property
    def op(self) -> str:
        """The short op name tolerances are keyed by (``chunk_kda``, ``ShortConvolution``...)."""
        return self.api.rsplit(".", 1)[-1]

    @property
    def dtype(self) -> str:
        return self.params.get("dtype", "fp32")

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(zlib.crc32(self.name.encode()))

    def required_apis(self) -> List[str]:
        return [self.api] + [a for a in self.apis if a != self.api]


def find_cases(cases: List[GoldenCase], pattern: Optional[str] = None) -> List[GoldenCase]:
    """Cases whose name contains one of the comma-separated substrings of ``pattern`` (all when None)."""
    if not pattern:
        return list(cases)
    parts = [p.strip() for p in pattern.split(",") if p.strip()]
    return [c for c in cases if any(p in c.name for p in parts)]
