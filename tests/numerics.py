"""Error metrics shared by the numeric tests (fla's own definitions, fla/utils.py L72-79)."""

from __future__ import annotations

import torch


def max_abs(ref: torch.Tensor, x: torch.Tensor) -> float:
    return (ref.detach().double() - x.detach().double()).abs().max().item()


def rms_ratio(ref: torch.Tensor, x: torch.Tensor) -> float:
    """rms(x - ref) / (rms(ref) + 1e-8), ``ref`` being the oracle."""
    ref = ref.detach().double()
    err = (x.detach().double() - ref).square().mean().sqrt().item()
    base = ref.square().mean().sqrt().item()
    return err / (base + 1e-8)


def assert_rms(name: str, ref: torch.Tensor, x: torch.Tensor, tol: float, atol: float = 1e-6) -> None:
    """Pass when every element is within ``atol`` or the RMS error ratio is below ``tol``."""
    assert ref.shape == x.shape, f"{name}: shape {tuple(x.shape)} != reference {tuple(ref.shape)}"
    assert torch.isfinite(x).all(), f"{name}: non-finite values"
    err = max_abs(ref, x)
    if err <= atol:
        return
    ratio = rms_ratio(ref, x)
    assert ratio < tol, f"{name}: rms ratio {ratio:.3e} >= {tol:.1e} (max abs {err:.3e})"
