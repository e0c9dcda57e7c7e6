"""What the model classes need to run on every supported transformers and torch release
(port-only; fla 0.4.0 targets the transformers 4.x of its day and torch >= 2.4).

- ``tied_lm_head_keys()``: transformers 5 reads ``_tied_weights_keys`` as a mapping
  ``{tied parameter: source parameter}`` and fails on fla 0.4.0's list (``'list' object has no
  attribute 'keys'`` when ``tie_word_embeddings=True``); transformers 4 reads the list. fla 0.6.0
  switched to the mapping.
- ``TorchRMSNorm``: ``torch.nn.RMSNorm`` (torch >= 2.4, used when ``fuse_norm=False``), or on older
  torch a module with the same parameter, defaults and formula.
"""

from __future__ import annotations

import numbers
from typing import List, Optional, Tuple, Union

import torch
import torch.nn as nn
import transformers

from myfla._torch_compat import version_at_least

TRANSFORMERS_5 = version_at_least(transformers.__version__, "5.0.0")


def tied_lm_head_keys() -> Union[List[str], dict]:
    """``lm_head.weight`` tied to the input embeddings, in the form this transformers reads."""
    if TRANSFORMERS_5:
        return {"lm_head.weight": "model.embeddings.weight"}
    return ["lm_head.weight"]


class _RMSNorm(nn.Module):
    """``torch.nn.RMSNorm`` for torch < 2.4: ``x / sqrt(mean(x^2) + eps) * weight`` over the trailing
    ``normalized_shape`` dims, ``eps`` defaulting to the input dtype's machine epsilon."""

    def __init__(
        self,
        normalized_shape: Union[int, Tuple[int, ...]],
        eps: Optional[float] = None,
        elementwise_affine: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if isinstance(normalized_shape, numbers.Integral):
            normalized_shape = (normalized_shape,)
        self.normalized_shape = tuple(normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        if elementwise_affine:
            self.weight = nn.Parameter(torch.ones(self.normalized_shape, device=device, dtype=dtype))
        else:
            self.register_parameter('weight', None)

    def reset_parameters(self) -> None:
        if self.weight is not None:
            nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        eps = self.eps if self.eps is not None else torch.finfo(x.dtype).eps
        dims = tuple(range(-len(self.normalized_shape), 0))
        y = x * torch.rsqrt(x.pow(2).mean(dims, keepdim=True) + eps)
        return y * self.weight if self.weight is not None else y


TorchRMSNorm = getattr(nn, 'RMSNorm', _RMSNorm)
