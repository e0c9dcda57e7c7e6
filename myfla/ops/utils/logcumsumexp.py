"""Log-cumsum-exp over time, as ``fla.ops.utils.logcumsumexp``.

fla 0.4.0 ships only the Triton kernel (no Python wrapper, and no caller inside fla). The port keeps
its name for the torch function that computes the same thing.
"""

from __future__ import annotations

import torch

from myfla.utils import accumulation_dtype


def logcumsumexp_fwd_kernel(s: torch.Tensor) -> torch.Tensor:
    """``z[n, t, :] = log(sum_{i <= t} exp(s[n, i, :]))`` for ``s`` ``[BH, T, S]``, in fp32 (fp64 for
    fp64 ``s``), returned in ``s``'s dtype.

    The kernel keeps a running maximum per column and a normaliser rescaled to it block by block
    (``BT`` tokens at a time, ``BT`` chosen by the autotuner), and clamps a zero sum to 1e-20
    before the log; ``torch.logcumsumexp`` evaluates the same quantity with its own stable
    rescaling, so results agree to rounding wherever the kernel's sum does not underflow.

    Source: fla/ops/utils/logcumsumexp.py:L10-L54 (fla 0.4.0)
    """
    acc = accumulation_dtype(s)
    return torch.logcumsumexp(s.to(acc), dim=1).to(s.dtype)
