"""Helpers of ``fla.utils`` that the KDA/GDN closure uses, with CPU-meaningful behaviour.

fla probes the Triton driver for the device, multiprocessor count and shared memory; myfla has no
Triton, so the same names answer from ``torch`` (CUDA properties when a GPU is present, neutral
values on CPU). The decorators behave exactly as fla's.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import warnings
from enum import Enum
from functools import lru_cache
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from myfla._torch_compat import custom_bwd, custom_fwd, version_at_least

logger = logging.getLogger(__name__)

FLA_CI_ENV = os.getenv("FLA_CI_ENV") == "1"
# Source: fla/utils.py:L24-L24 (fla 0.4.0)
FLA_CACHE_RESULTS = os.getenv('FLA_CACHE_RESULTS', '1') == '1'

# Triton's autotuner result cache: there is no autotuner in a pure-torch port.
# Source: fla/utils.py:L27-L27 (fla 0.4.0)
supports_autotune_cache = False
# Source: fla/utils.py:L28-L28 (fla 0.4.0)
autotune_cache_kwargs: Dict[str, Any] = {}


def accumulation_dtype(*tensors: Optional[torch.Tensor]) -> torch.dtype:
    """Port-only: the dtype the kernels accumulate in for these inputs. fp32 for fp16/bf16/fp32
    inputs, as fla's Triton kernels; fp64 when an input is fp64 (fla would drop to fp32), so that fp64
    checks such as ``torch.autograd.gradcheck`` see the exact math."""
    dtype = torch.float32
    for t in tensors:
        if t is not None and t.is_floating_point():
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def get_abs_err(x, y):
    """Source: fla/utils.py:L72-L73 (fla 0.4.0)"""
    return (x.detach()-y.detach()).flatten().abs().max().item()


def get_err_ratio(x, y):
    """Source: fla/utils.py:L76-L79 (fla 0.4.0)"""
    err = (x.detach()-y.detach()).flatten().square().mean().sqrt().item()
    base = (x.detach()).flatten().square().mean().sqrt().item()
    return err / (base + 1e-8)


def tensor_cache(
    fn: Callable[..., torch.Tensor]
) -> Callable[..., torch.Tensor]:
    """Cache the most recent result of a function of tensors, keyed by argument identity.

    Source: fla/utils.py:L96-L132 (fla 0.4.0)
    """
    last_args: Optional[Tuple] = None
    last_kwargs: Optional[Dict] = None
    last_result: Any = None

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal last_args, last_kwargs, last_result

        if last_args is not None and last_kwargs is not None:
            if len(args) == len(last_args) and len(kwargs) == len(last_kwargs):
                if all(a is b for a, b in zip(args, last_args)) and \
                        all(k in last_kwargs and v is last_kwargs[k] for k, v in kwargs.items()):
                    return last_result

        result = fn(*args, **kwargs)
        last_args, last_kwargs, last_result = args, kwargs, result
        return result

    return wrapper


def input_guard(
    fn: Callable[..., torch.Tensor]
) -> Callable[..., torch.Tensor]:
    """Make every tensor argument contiguous and run under the device of the first tensor.

    Source: fla/utils.py:L135-L166 (fla 0.4.0)
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        contiguous_args = (i if not isinstance(i, torch.Tensor) else i.contiguous() for i in args)
        contiguous_kwargs = {k: (v if not isinstance(v, torch.Tensor) else v.contiguous()) for k, v in kwargs.items()}

        tensor = None
        for arg in args:
            if isinstance(arg, torch.Tensor):
                tensor = arg
                break
        if tensor is None:
            for value in kwargs.values():
                if isinstance(value, torch.Tensor):
                    tensor = value
                    break

        if tensor is not None:
            ctx = custom_device_ctx(tensor.device.index)
        else:
            ctx = contextlib.nullcontext()

        with ctx:
            return fn(*contiguous_args, **contiguous_kwargs)

    return wrapper


contiguous = input_guard


@lru_cache(maxsize=None)
def check_pytorch_version(version_s: str = '2.4') -> bool:
    """Source: fla/utils.py:L348-L350 (fla 0.4.0)"""
    return version_at_least(torch.__version__, version_s)


def _cpu_device_warning():
    """Source: fla/utils.py:L353-L354 (fla 0.4.0)"""
    warnings.warn(('Triton is not supported on current platform, roll back to CPU.'), stacklevel=1)


@lru_cache(maxsize=None)
def get_multiprocessor_count(tensor_idx: int = 0) -> int:
    """Number of streaming multiprocessors of CUDA device ``tensor_idx``; 1 without a GPU (as fla's
    fallback).

    Source: fla/utils.py:L357-L366 (fla 0.4.0)
    """
    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(tensor_idx).multi_processor_count
    return 1


@lru_cache(maxsize=None)
def get_available_device() -> str:
    """'cuda' when torch sees a GPU, else 'cpu' (fla asks the Triton driver and warns on CPU).

    Source: fla/utils.py:L369-L375 (fla 0.4.0)
    """
    if torch.cuda.is_available():
        return 'cuda'
    return 'cpu'


# Source: fla/utils.py:L386-L455 (fla 0.4.0)
device = get_available_device()
# Source: fla/utils.py:L387-L387 (fla 0.4.0)
device_torch_lib = getattr(torch, device)
# Source: fla/utils.py:L388-L388 (fla 0.4.0)
device_platform = get_available_device()

# Source: fla/utils.py:L391-L391 (fla 0.4.0)
is_amd = (device_platform == 'cuda' and torch.version.hip is not None)
# Source: fla/utils.py:L393-L393 (fla 0.4.0)
is_nvidia = (device_platform == 'cuda' and torch.version.hip is None)
# Source: fla/utils.py:L395-L395 (fla 0.4.0)
is_nvidia_hopper = (is_nvidia and ('NVIDIA H' in torch.cuda.get_device_name(0) or torch.cuda.get_device_capability()[0] >= 9))
# CUDA graphs capture Triton launches in fla; the torch port runs eagerly.
# Source: fla/utils.py:L396-L396 (fla 0.4.0)
use_cuda_graph = False
# Source: fla/utils.py:L399-L399 (fla 0.4.0)
is_tf32_supported = (is_nvidia and torch.cuda.get_device_capability(0)[0] >= 8)
# TMA descriptors are a Triton/Hopper feature with no meaning for torch code.
# Source: fla/utils.py:L401-L403 (fla 0.4.0)
is_tma_supported = False


def get_all_max_shared_mem():
    """Per-device opt-in shared memory in bytes; [-1] without a GPU (as fla's fallback).

    Source: fla/utils.py:L419-L427 (fla 0.4.0)
    """
    if torch.cuda.is_available():
        out = []
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            out.append(int(getattr(props, 'shared_memory_per_block_optin', -1)))
        return out
    return [-1]


class Backend(Enum):
    """Shared-memory sizes of GPU generations. Source: fla/utils.py:L430-L441 (fla 0.4.0)"""
    ADA = 101376       # RTX 4090
    AMPERE = 166912    # A100
    HOPPER = 232448    # H100
    DEFAULT = 102400   # Default

    @classmethod
    def get_shared_memory(cls, arch: str) -> int:
        try:
            return cls[arch.upper()].value
        except KeyError:
            return cls.DEFAULT.value


@lru_cache(maxsize=None)
def check_shared_mem(arch: str = "none", tensor_idx: int = 0) -> bool:
    """Source: fla/utils.py:L444-L451 (fla 0.4.0)"""
    try:
        device_shared_mem_list = get_all_max_shared_mem()
        max_shared_memory = device_shared_mem_list[tensor_idx]
        return max_shared_memory >= Backend.get_shared_memory(arch)
    except Exception:
        return False


# Source: fla/utils.py:L456-L463 (fla 0.4.0)
autocast_custom_fwd = functools.partial(custom_fwd, device_type=device)
# Source: fla/utils.py:L457-L464 (fla 0.4.0)
autocast_custom_bwd = functools.partial(custom_bwd, device_type=device)


def custom_device_ctx(index: int):
    """The device context of CUDA device ``index``; a no-op for CPU tensors (index None).

    Source: fla/utils.py:L459-L467 (fla 0.4.0)
    """
    if index is None or device != 'cuda':
        return contextlib.nullcontext()
    return torch.cuda.device(index)
