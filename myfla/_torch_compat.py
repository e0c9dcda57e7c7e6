"""Feature checks for the torch APIs myfla uses that are newer than its floor, torch 1.13 (port-only;
fla has no counterpart: fla 0.4.0 needs torch >= 2.4 on its CPU path).

Each name below is the newer torch API where this torch has it, and otherwise a re-expression with
torch 1.13's own calls that computes the same thing. Nothing here changes numbers: the fallbacks only
reproduce bookkeeping (autocast state, byte sizes, version order) or do nothing where the feature they
stand in for does not exist in the older torch (there is no ``torch.compile`` to disable in 1.13).

This module imports nothing beyond torch and the standard library, so that ``myfla/`` can be copied
into a project as a folder (Python 3.8, torch >= 1.13).
"""

from __future__ import annotations

import collections.abc
import functools
import re
from typing import Any, Callable, Optional, Tuple

import torch

__all__ = ['custom_fwd', 'custom_bwd', 'compiler_disable', 'dtype_itemsize', 'version_at_least',
           'all_gather_into_tensor', 'scaled_dot_product_attention', 'Version', 'softmax_attention',
           'HAS_TORCH_AMP_CUSTOM_FWD', 'HAS_TORCH_COMPILER', 'HAS_SDPA']

HAS_TORCH_AMP_CUSTOM_FWD = hasattr(torch, 'amp') and hasattr(torch.amp, 'custom_fwd')
HAS_TORCH_COMPILER = hasattr(torch, 'compiler') and hasattr(torch.compiler, 'disable')


def _autocast_state(device_type: str) -> Tuple[bool, torch.dtype]:
    """(enabled, dtype) of autocast on ``device_type``, with the per-device calls of torch < 2.4."""
    if device_type == 'cuda':
        return torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()
    if device_type == 'cpu':
        return torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()
    raise ValueError(f"autocast custom_fwd/custom_bwd: device_type '{device_type}' needs torch >= 2.4 "
                     f"(torch {torch.__version__} has autocast for 'cuda' and 'cpu' only)")


def _always() -> bool:
    return True


# ``any_autocast_enabled()``: whether autocast may be on for some device. torch's own C call where it
# has one (torch >= 2.0), so the usual case (autocast off everywhere) costs one call and skips the
# per-device query; always True before.
any_autocast_enabled: Callable[[], bool] = getattr(torch._C, '_is_any_autocast_enabled', _always)


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (False for a device autocast does not know, such as
    'meta')."""
    if not any_autocast_enabled():
        return False
    try:
        return torch.is_autocast_enabled(device_type)              # torch >= 2.4
    except RuntimeError:                                           # "unknown device type for autocast"
        return False
    except TypeError:
        if device_type == 'cuda':
            return torch.is_autocast_enabled()
        if device_type == 'cpu':
            return torch.is_autocast_cpu_enabled()
        return False


def _cast(value: Any, device_type: str, dtype: torch.dtype) -> Any:
    """Floating-point, non-fp64 tensors on ``device_type`` cast to ``dtype``, through containers."""
    if isinstance(value, torch.Tensor):
        eligible = value.is_floating_point() and value.device.type == device_type and value.dtype is not torch.float64
        return value.to(dtype) if eligible else value
    if isinstance(value, (str, bytes)):
        return value
    if isinstance(value, collections.abc.Mapping):
        return {_cast(k, device_type, dtype): _cast(v, device_type, dtype) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cast(v, device_type, dtype) for v in value)
    return value


def _custom_fwd_fallback(fwd: Optional[Callable] = None, *, device_type: str,
                         cast_inputs: Optional[torch.dtype] = None) -> Callable:
    """``torch.amp.custom_fwd`` (torch >= 2.4) for torch 1.13: records the forward's autocast state on
    ``ctx`` for :func:`_custom_bwd_fallback`; with ``cast_inputs``, inside an autocast region, casts
    the floating-point inputs and runs the forward with autocast off (torch/amp/autocast_mode.py)."""
    if not isinstance(device_type, str):
        raise ValueError(f"Expected `device_type` of type `str`, got: `{type(device_type)}`")
    if fwd is None:
        return functools.partial(_custom_fwd_fallback, device_type=device_type, cast_inputs=cast_inputs)

    @functools.wraps(fwd)
    def decorate_fwd(*args, **kwargs):
        enabled, dtype = _autocast_state(device_type)
        args[0]._dtype = dtype
        if cast_inputs is None:
            args[0]._fwd_used_autocast = enabled
            return fwd(*args, **kwargs)
        args[0]._fwd_used_autocast = False
        if not enabled:
            return fwd(*args, **kwargs)
        with torch.autocast(device_type=device_type, enabled=False):
            return fwd(*_cast(args, device_type, cast_inputs), **_cast(kwargs, device_type, cast_inputs))

    return decorate_fwd


def _custom_bwd_fallback(bwd: Optional[Callable] = None, *, device_type: str) -> Callable:
    """``torch.amp.custom_bwd`` (torch >= 2.4) for torch 1.13: the backward runs with the autocast
    state and dtype that the forward saw."""
    if not isinstance(device_type, str):
        raise ValueError(f"Expected `device_type` of type `str`, got: `{type(device_type)}`")
    if bwd is None:
        return functools.partial(_custom_bwd_fallback, device_type=device_type)

    @functools.wraps(bwd)
    def decorate_bwd(*args, **kwargs):
        with torch.autocast(device_type=device_type, enabled=args[0]._fwd_used_autocast, dtype=args[0]._dtype):
            return bwd(*args, **kwargs)

    return decorate_bwd


if HAS_TORCH_AMP_CUSTOM_FWD:
    custom_fwd = torch.amp.custom_fwd
    custom_bwd = torch.amp.custom_bwd
else:
    custom_fwd = _custom_fwd_fallback
    custom_bwd = _custom_bwd_fallback


def _no_compiler_disable(fn: Optional[Callable] = None, recursive: bool = True) -> Callable:
    """``torch.compiler.disable`` where torch has no compiler (< 2.1): nothing to keep out of it."""
    if fn is None:
        return functools.partial(_no_compiler_disable, recursive=recursive)
    return fn


compiler_disable = torch.compiler.disable if HAS_TORCH_COMPILER else _no_compiler_disable


def dtype_itemsize(dtype: torch.dtype) -> int:
    """Bytes per element: ``dtype.itemsize`` (torch >= 2.1), else an empty tensor's element size."""
    size = getattr(dtype, 'itemsize', None)
    if size is None:
        size = torch.empty(0, dtype=dtype).element_size()
    return size


def all_gather_into_tensor(output: torch.Tensor, input: torch.Tensor, group: Any = None) -> None:
    """``torch.distributed.all_gather_into_tensor`` (``_all_gather_base`` before torch 2.0): every rank's
    ``input`` laid end to end in ``output``. Gloo process groups of older torch (1.13) have no
    ``_allgather_base``; with gloo the same bytes are gathered by ``all_gather`` into views of ``output``
    (what gloo's own implementation does where it has one), so the result is identical."""
    dist = torch.distributed
    if dist.get_backend(group) == 'gloo':
        world_size = dist.get_world_size(group)
        dist.all_gather(list(output.view(world_size, -1).unbind(0)), input.reshape(-1), group=group)
        return
    gather = getattr(dist, 'all_gather_into_tensor', None) or dist._all_gather_base
    gather(output, input, group=group)


_RELEASE = re.compile(r'\s*v?(\d+(?:\.\d+)*)(.*)$', re.IGNORECASE)
_PRE = re.compile(r'[-_.]?(a|b|c|rc|alpha|beta|pre|preview|dev)\d*', re.IGNORECASE)


def _release_key(v: str) -> Tuple[Tuple[int, ...], int]:
    """(release numbers without trailing zeros, 0 for a pre/dev release else 1); a local '+...' or a
    post-release suffix keeps the release's place."""
    match = _RELEASE.match(v)
    if match is None:
        raise ValueError(f"Invalid version: '{v}'")
    numbers = [int(n) for n in match.group(1).split('.')]
    while len(numbers) > 1 and numbers[-1] == 0:
        numbers.pop()
    rest = match.group(2).split('+', 1)[0]
    return tuple(numbers), 0 if _PRE.match(rest) else 1


try:
    from packaging.version import Version
except ImportError:
    @functools.total_ordering
    class Version:
        """``packaging.version.Version`` without the ``packaging`` distribution, for the final
        releases myfla compares (Python and torch versions): ordered as packaging orders them."""

        def __init__(self, version: str):
            self._key = _release_key(version)
            self._text = str(version)

        def __eq__(self, other: object) -> bool:
            return isinstance(other, Version) and self._key == other._key

        def __lt__(self, other: 'Version') -> bool:
            return self._key < other._key

        def __hash__(self) -> int:
            return hash(self._key)

        def __str__(self) -> str:
            return self._text

        def __repr__(self) -> str:
            return f"<Version('{self._text}')>"


def version_at_least(installed: str, required: str) -> bool:
    """``packaging.version.parse(installed) >= packaging.version.parse(required)``; without the
    ``packaging`` distribution, the same answer for a final-release ``required`` such as '2.4'
    (the only kind myfla asks about): a pre-release or dev build of that release is older."""
    try:
        from packaging import version
    except ImportError:
        return _release_key(installed) >= _release_key(required)
    return version.parse(installed) >= version.parse(required)


# torch 2.0 added scaled_dot_product_attention, torch 2.1 its ``scale`` argument.
HAS_SDPA = hasattr(torch.nn.functional, 'scaled_dot_product_attention') and version_at_least(torch.__version__, '2.1')


def softmax_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attn_mask: Optional[torch.Tensor] = None, dropout_p: float = 0.0,
                      scale: Optional[float] = None) -> torch.Tensor:
    """``softmax(query key^T * scale + mask) value`` written out, as torch documents
    ``scaled_dot_product_attention`` (a boolean ``attn_mask`` says which keys each query sees; a float
    one is added to the scores; ``scale`` defaults to ``1 / sqrt(E)``)."""
    if scale is None:
        scale = query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(-1, -2)) * scale
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float('-inf')) if attn_mask.dtype == torch.bool else scores + attn_mask
    p = torch.softmax(scores, dim=-1)
    if dropout_p > 0.0:
        p = torch.nn.functional.dropout(p, p=dropout_p)
    return torch.matmul(p, value)


def scaled_dot_product_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                 attn_mask: Optional[torch.Tensor] = None, dropout_p: float = 0.0,
                                 scale: Optional[float] = None) -> torch.Tensor:
    """``torch.nn.functional.scaled_dot_product_attention`` (torch >= 2.1, with ``scale``), else
    :func:`softmax_attention`, the formula it computes (the same numbers up to rounding order)."""
    if HAS_SDPA:
        return torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask,
                                                                dropout_p=dropout_p, scale=scale)
    return softmax_attention(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)
