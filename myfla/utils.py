"""Helpers of ``fla.utils`` that the KDA/GDN closure uses, with CPU-meaningful behaviour.

fla probes the Triton driver for the device, multiprocessor count and shared memory; myfla has no
Triton, so the same names answer from ``torch`` (CUDA properties when a GPU is present, neutral
values on CPU). The decorators behave exactly as fla's.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import inspect
import os
import sys
import threading
import warnings
from enum import Enum
from functools import lru_cache
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.utils.checkpoint   # torch < 2 does not import this submodule with torch

from myfla._torch_compat import any_autocast_enabled, autocast_enabled, custom_bwd, custom_fwd, version_at_least

# Source: fla/utils.py:L18-L18 (fla 0.4.0)
logger = logging.getLogger(__name__)

# Source: fla/utils.py:L23-L23 (fla 0.4.0)
FLA_CI_ENV = os.getenv("FLA_CI_ENV") == "1"
# Source: fla/utils.py:L24-L24 (fla 0.4.0)
FLA_CACHE_RESULTS = os.getenv('FLA_CACHE_RESULTS', '1') == '1'

# Triton's autotuner result cache: there is no autotuner in a pure-torch port.
# Source: fla/utils.py:L27-L27 (fla 0.4.0)
supports_autotune_cache = False
# Source: fla/utils.py:L28-L28 (fla 0.4.0)
autotune_cache_kwargs: Dict[str, Any] = {}


@lru_cache(maxsize=1)
def check_environments():
    """Warn once when the interpreter is older than fla's recommended Python 3.11.

    fla also warns on Windows and on Triton older than 3.2.0; both checks concern Triton, which a
    pure-PyTorch port does not use, so only the Python check applies here.

    Source: fla/utils.py:L31-L66 (fla 0.4.0)
    """
    py_version = f"{sys.version_info.major}.{sys.version_info.minor}"

    if not version_at_least(py_version, "3.11"):
        logger.warning(
            f"Current Python version {py_version} is below the recommended 3.11 version. "
            "It is recommended to upgrade to Python 3.11 or higher for the best experience."
        )

    return None


check_environments()


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


def assert_close(prefix, ref, tri, ratio, warning=False, err_atol=1e-6):
    """fla's test assertion: pass when ``max|ref - tri| <= err_atol``, else require the RMS error
    ratio below ``ratio`` (only warn with ``warning``, or under ``FLA_CI_ENV`` when the error is
    small in absolute or relative terms).

    Source: fla/utils.py:L82-L93 (fla 0.4.0)
    """
    abs_atol = get_abs_err(ref, tri)
    msg = f"{prefix:>16} diff: {abs_atol:.6f} ratio: {get_err_ratio(ref, tri):.6f}"
    logger.info(msg)
    error_rate = get_err_ratio(ref, tri)
    if abs_atol <= err_atol:
        return
    if warning or (FLA_CI_ENV and (error_rate < 0.01 or abs_atol <= 0.3)):
        if error_rate > ratio:
            warnings.warn(msg)
    else:
        assert error_rate < ratio, msg


def tensor_cache(
    fn: Callable[..., torch.Tensor]
) -> Callable[..., torch.Tensor]:
    """Cache the most recent result of a function of tensors, keyed by argument identity.

    Source: fla/utils.py:L96-L132 (fla 0.4.0)
    """
    # (args, kwargs, result) of the last call, read and replaced as one tuple: fla 0.4.0 keeps three
    # variables, so a thread that compares the last arguments and then reads the last result can get
    # the result another thread stored in between, for other arguments (fla 0.6.0 keeps one tuple
    # per entry too)
    last: Optional[Tuple[Tuple, Dict, Any]] = None

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal last

        entry = last
        if entry is not None:
            last_args, last_kwargs, last_result = entry
            if len(args) == len(last_args) and len(kwargs) == len(last_kwargs):
                if all(a is b for a, b in zip(args, last_args)) and \
                        all(k in last_kwargs and v is last_kwargs[k] for k, v in kwargs.items()):
                    return last_result

        result = fn(*args, **kwargs)
        last = (args, kwargs, result)
        return result

    return wrapper


# CUDA autocast as the caller of the outermost kernel stand-in found it (see input_guard), per thread
_kernel_scope = threading.local()


def caller_autocast_enabled() -> bool:
    """``torch.is_autocast_enabled()`` (CUDA autocast) as the code calling the port's kernels sees it:
    inside ``input_guard``, which runs its function with autocast off, the state found on entry. fla's
    Functions that run a torch op in the autocast dtype themselves (the norm + linear layers) ask this.

    Port-only (fla has no counterpart)."""
    outer = getattr(_kernel_scope, 'cuda_autocast', None)
    return torch.is_autocast_enabled() if outer is None else outer


class autocast_off_like_kernels:
    """Context manager: autocast off on ``tensor``'s device inside (nothing where autocast is off, or
    for None), as for fla's Triton kernels, which autocast does not touch; ``caller_autocast_enabled``
    keeps telling what the caller had. ``input_guard`` enters it; so do the ops' no-grad fast paths
    that skip their Functions.

    Port-only (fla has no counterpart)."""

    __slots__ = ('device_type', 'outer', 'off')

    def __init__(self, tensor: Optional[torch.Tensor]):
        on = tensor is not None and autocast_enabled(tensor.device.type)
        self.device_type = tensor.device.type if on else None

    def __enter__(self) -> 'autocast_off_like_kernels':
        if self.device_type is not None:
            self.outer = getattr(_kernel_scope, 'cuda_autocast', None)
            _kernel_scope.cuda_autocast = torch.is_autocast_enabled() if self.outer is None else self.outer
            self.off = torch.autocast(device_type=self.device_type, enabled=False)
            self.off.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.device_type is not None:
            try:
                self.off.__exit__(*exc)
            finally:
                _kernel_scope.cuda_autocast = self.outer


def without_autocast(fn: Callable) -> Callable:
    """Decorator: ``fn`` inside ``autocast_off_like_kernels`` of its first tensor argument (for the
    no-grad fast paths that stand in for a Function's forward).

    Port-only (fla has no counterpart)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not any_autocast_enabled():                                     # the usual case
            return fn(*args, **kwargs)
        tensor = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
        with autocast_off_like_kernels(tensor):
            return fn(*args, **kwargs)
    return wrapper


def input_guard(
    fn: Callable[..., torch.Tensor]
) -> Callable[..., torch.Tensor]:
    """Make every tensor argument contiguous and run under the device of the first tensor.

    Port deviation: the function also runs with autocast off on that tensor's device. What it wraps
    stands in for fla's Triton kernels, which autocast does not touch (their dots take the input
    dtype with fp32 accumulation); the port's torch products would otherwise be cast to the autocast
    dtype (a KDA backward under CPU autocast failed with "Found dtype Float but expected BFloat16").
    ``caller_autocast_enabled`` tells what the caller had.

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

        device = tensor.device if tensor is not None else None
        autocast = device is not None and autocast_enabled(device.type)    # one C call when off everywhere
        if device is None or not _switches_device(device.index):
            # no device to switch to (CPU tensors, or the CUDA device current already): no `with`
            # block either, which torch.compile could not resume after a graph break inside ``fn``
            # (GatedDeltaNet's decoding failed so). Only booleans are decided before such a break:
            # torch 2.2's dynamo resumed with the class nullcontext in place of an instance made
            # earlier, and could not take isinstance() of one.
            if not autocast:
                return fn(*contiguous_args, **contiguous_kwargs)
            with autocast_off_like_kernels(tensor):
                return fn(*contiguous_args, **contiguous_kwargs)
        if not autocast:
            with custom_device_ctx(device.index):
                return fn(*contiguous_args, **contiguous_kwargs)
        with custom_device_ctx(device.index), autocast_off_like_kernels(tensor):
            return fn(*contiguous_args, **contiguous_kwargs)

    return wrapper


# Source: fla/utils.py:L169-L169 (fla 0.4.0)
contiguous = input_guard


def require_version(version, hint):
    """Decorator for autograd ``forward``/``backward`` methods: check a dependency version with pip's
    syntax (transformers' ``require_version``) at call time, and make tensor arguments contiguous.

    Source: fla/utils.py:L172-L185 (fla 0.4.0)
    """
    def decorator(fn):
        @functools.wraps(fn)
        def wrapper(ctx, *args, **kwargs):
            from transformers.utils.versions import require_version
            require_version(version, hint)
            return fn(ctx,
                      *(i if not isinstance(i, torch.Tensor) else i.contiguous() for i in args),
                      **{k: (v if not isinstance(v, torch.Tensor) else v.contiguous()) for k, v in kwargs.items()})
        return wrapper
    return decorator


class Action(Enum):
    """What :func:`deprecate_kwarg` does about a deprecated keyword.

    Source: fla/utils.py:L188-L192 (fla 0.4.0)
    """
    NONE = "none"
    NOTIFY = "notify"
    NOTIFY_ALWAYS = "notify_always"
    RAISE = "raise"


def deprecate_kwarg(
    old_name: str,
    version: str,
    new_name: Optional[str] = None,
    warn_if_greater_or_equal_version: bool = False,
    raise_if_greater_or_equal_version: bool = False,
    raise_if_both_names: bool = False,
    additional_message: Optional[str] = None,
):
    """Decorator that renames (``new_name``) or flags a deprecated keyword argument, with a
    ``FutureWarning`` or a ``ValueError`` depending on the flags and on whether the library version
    (fla's, ``myfla.UPSTREAM_VERSION``) has reached ``version``.

    fla 0.4.0 cannot run this decorator: ``__version__`` is imported only under ``TYPE_CHECKING`` and
    the ``version`` parameter shadows ``packaging.version``. The port reads the package version at
    decoration time, as fla 0.6.0 does; the version it compares is fla's (``myfla.UPSTREAM_VERSION``,
    the release ported), with ``packaging``'s order (without ``packaging`` installed, the same order
    for final releases: ``myfla._torch_compat.version_at_least``).

    Source: fla/utils.py:L195-L339 (fla 0.4.0)
    """
    from myfla import UPSTREAM_VERSION

    is_greater_or_equal_version = version_at_least(UPSTREAM_VERSION, version)

    if is_greater_or_equal_version:
        version_message = f"and removed starting from version {version}"
    else:
        version_message = f"and will be removed in version {version}"

    def wrapper(func):
        # the signature tells a method (self/cls) apart, for the warning text
        sig = inspect.signature(func)
        function_named_args = set(sig.parameters.keys())
        is_instance_method = "self" in function_named_args
        is_class_method = "cls" in function_named_args

        @functools.wraps(func)
        def wrapped_func(*args, **kwargs):
            func_name = func.__name__
            if is_instance_method:
                func_name = f"{args[0].__class__.__name__}.{func_name}"
            elif is_class_method:
                func_name = f"{args[0].__name__}.{func_name}"

            minimum_action = Action.NONE
            message = None

            # both names given: keep the new one
            if old_name in kwargs and new_name in kwargs:
                minimum_action = Action.RAISE if raise_if_both_names else Action.NOTIFY_ALWAYS
                message = (
                    f"Both `{old_name}` and `{new_name}` are set for `{func_name}`. "
                    f"Using `{new_name}={kwargs[new_name]}` and ignoring deprecated `{old_name}={kwargs[old_name]}`."
                )
                kwargs.pop(old_name)

            # only the old name given: rename it
            elif old_name in kwargs and new_name is not None and new_name not in kwargs:
                minimum_action = Action.NOTIFY
                message = (
                    f"`{old_name}` is deprecated {version_message} for `{func_name}`. "
                    f"Use `{new_name}` instead."
                )
                kwargs[new_name] = kwargs.pop(old_name)

            # the old name with no replacement: notify only
            elif old_name in kwargs:
                minimum_action = Action.NOTIFY
                message = f"`{old_name}` is deprecated {version_message} for `{func_name}`."

            if message is not None and additional_message is not None:
                message = f"{message} {additional_message}"

            # once the deprecation version is reached: raise if asked, or drop plain notifications
            if is_greater_or_equal_version:
                if raise_if_greater_or_equal_version and minimum_action != Action.NONE:
                    minimum_action = Action.RAISE
                elif not warn_if_greater_or_equal_version and minimum_action == Action.NOTIFY:
                    minimum_action = Action.NONE

            if minimum_action == Action.RAISE:
                raise ValueError(message)
            elif minimum_action in (Action.NOTIFY, Action.NOTIFY_ALWAYS):
                # DeprecationWarning is hidden by default, FutureWarning is not
                warnings.warn(message, FutureWarning, stacklevel=2)

            return func(*args, **kwargs)

        return wrapped_func

    return wrapper


def checkpoint(fn):
    """Decorator running ``fn`` under ``torch.utils.checkpoint.checkpoint`` (activations recomputed
    in the backward pass).

    Source: fla/utils.py:L342-L345 (fla 0.4.0)
    """
    def wrapper(*args, **kwargs):
        return torch.utils.checkpoint.checkpoint(fn, *args, **kwargs)
    return wrapper


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


def map_triton_backend_to_torch_device() -> str:
    """The torch device type of the backend (fla maps Triton's 'hip' to 'cuda').

    Source: fla/utils.py:L378-L380 (fla 0.4.0)
    """
    backend = get_available_device()
    return {'cuda': 'cuda', 'hip': 'cuda', 'xpu': 'xpu'}.get(backend, backend)


# Source: fla/utils.py:L386-L455 (fla 0.4.0)
device = get_available_device()
# Source: fla/utils.py:L387-L387 (fla 0.4.0)
device_torch_lib = getattr(torch, device)
# Source: fla/utils.py:L388-L388 (fla 0.4.0)
device_platform = get_available_device()
# Source: fla/utils.py:L389-L389 (fla 0.4.0)
device_name = map_triton_backend_to_torch_device()

# Source: fla/utils.py:L391-L391 (fla 0.4.0)
is_amd = (device_platform == 'cuda' and torch.version.hip is not None)
# Source: fla/utils.py:L392-L392 (fla 0.4.0)
is_intel = (device_platform == 'xpu')
# Source: fla/utils.py:L393-L393 (fla 0.4.0)
is_nvidia = (device_platform == 'cuda' and torch.version.hip is None)
# Source: fla/utils.py:L394-L394 (fla 0.4.0)
is_intel_alchemist = (is_intel and 'Intel(R) Arc(TM) A' in torch.xpu.get_device_name(0))
# Source: fla/utils.py:L395-L395 (fla 0.4.0)
is_nvidia_hopper = (is_nvidia and ('NVIDIA H' in torch.cuda.get_device_name(0) or torch.cuda.get_device_capability()[0] >= 9))
# CUDA graphs capture Triton launches in fla; the torch port runs eagerly.
# Source: fla/utils.py:L396-L396 (fla 0.4.0)
use_cuda_graph = False
# Source: fla/utils.py:L399-L399 (fla 0.4.0)
is_tf32_supported = (is_nvidia and torch.cuda.get_device_capability(0)[0] >= 8)
# fla asks whether Triton has tl.gather; the port's gather (myfla.ops.utils.op.gather) is torch.gather,
# which every supported torch has.
# Source: fla/utils.py:L400-L400 (fla 0.4.0)
is_gather_supported = True
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


def _switches_device(index: Optional[int]) -> bool:
    """Whether ``custom_device_ctx(index)`` changes the current device (a CUDA device other than the
    current one). Port-only: ``input_guard`` enters no ``with`` block otherwise."""
    return index is not None and device == 'cuda' and index != torch.cuda.current_device()


def custom_device_ctx(index: int):
    """The device context of CUDA device ``index``; a no-op for CPU tensors (index None), and (the
    same effect as fla's switch) for the device that is current already.

    Source: fla/utils.py:L459-L467 (fla 0.4.0)
    """
    if not _switches_device(index):
        return contextlib.nullcontext()
    return torch.cuda.device(index)
