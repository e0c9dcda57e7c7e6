"""Error metrics: max-abs and fla's RMS error ratio ``rms(x - ref) / (rms(ref) + 1e-8)``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class Comparison:
    max_abs: float
    rms_ratio: float
    passed: bool
    reason: str = ""


def max_abs(ref: torch.Tensor, x: torch.Tensor) -> float:
    if ref.numel() == 0:
        return 0.0
    return (x.detach().double().cpu() - ref.detach().double().cpu()).abs().max().item()


def rms_ratio(ref: torch.Tensor, x: torch.Tensor) -> float:
    if ref.numel() == 0:
        return 0.0
    r = ref.detach().double().cpu()
    err = (x.detach().double().cpu() - r).square().mean().sqrt().item()
    base = r.square().mean().sqrt().item()
    return err / (base + 1e-8)


def compare(ref: Optional[torch.Tensor], x: Optional[torch.Tensor], tol: float, atol: float = 1e-6) -> Comparison:
    """Pass when every element is within ``atol`` or the RMS ratio is below ``tol`` (fla's
    ``assert_close`` rule). Shape/dtype-kind mismatches and non-finite values fail."""
    if ref is None and x is None:
        return Comparison(0.0, 0.0, True)
    if ref is None or x is None:
        return Comparison(math.inf, math.inf, False, "missing" if x is None else "unexpected output")
    if tuple(ref.shape) != tuple(x.shape):
        return Comparison(math.inf, math.inf, False, f"shape {tuple(x.shape)} != {tuple(ref.shape)}")
    if x.is_floating_point() and not torch.isfinite(x).all():
        return Comparison(math.inf, math.inf, False, "non-finite values")
    if not ref.is_floating_point():
        same = bool(torch.equal(ref.cpu(), x.detach().cpu().to(ref.dtype)))
        return Comparison(0.0 if same else math.inf, 0.0 if same else math.inf, same, "" if same else "integer mismatch")
    err = max_abs(ref, x)
    ratio = rms_ratio(ref, x)
    return Comparison(err, ratio, err <= atol or ratio < tol)
