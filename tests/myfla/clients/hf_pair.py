"""Two copies of a transformers modeling module in one process: one bound to transformers' own torch
fallback, one bound to myfla through ``myfla.install_as_fla``.

transformers' ``use_kernel_func_from_hub_with_fallback(name, "fla")`` decides between fla and its
fallback when the modeling module is imported, so the first copy is imported while ``import fla``
is blocked, the second after the alias is installed. Both copies are taken out of ``sys.modules``
again and the alias is removed on exit, so nothing leaks into other tests.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import sys
from typing import Iterator, Tuple

import torch

from myfla.alias import install_as_fla, uninstall_as_fla


class _BlockFla(importlib.abc.MetaPathFinder):
    """``import fla`` fails (as on a machine without fla), whatever is installed."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "fla" or fullname.startswith("fla."):
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


def _import_fresh(modname: str):
    sys.modules.pop(modname, None)
    module = importlib.import_module(modname)
    sys.modules.pop(modname, None)
    return module


@contextlib.contextmanager
def fallback_and_myfla(modname: str) -> Iterator[Tuple[object, object]]:
    """Yield ``(fallback_module, myfla_module)`` for ``transformers.models.X.modeling_X``."""
    parent_name, _, child = modname.rpartition(".")
    saved_module = sys.modules.get(modname)
    saved_fla = {n: m for n, m in sys.modules.items() if n == "fla" or n.startswith("fla.")}
    saved_meta_path = list(sys.meta_path)
    try:
        for name in saved_fla:
            del sys.modules[name]
        uninstall_as_fla()
        blocker = _BlockFla()
        sys.meta_path.insert(0, blocker)
        fallback = _import_fresh(modname)
        sys.meta_path.remove(blocker)
        assert install_as_fla(force=True) == "myfla"
        served = _import_fresh(modname)
        yield fallback, served
    finally:
        uninstall_as_fla()
        sys.meta_path[:] = saved_meta_path
        for name in [n for n in sys.modules if n == "fla" or n.startswith("fla.")]:
            del sys.modules[name]
        sys.modules.update(saved_fla)
        parent = sys.modules.get(parent_name)
        if saved_module is not None:
            sys.modules[modname] = saved_module
            if parent is not None:
                setattr(parent, child, saved_module)
        elif parent is not None and child in vars(parent):
            delattr(parent, child)


def bound_implementation(wrapper):
    """What a transformers ``use_kernel_func_from_hub_with_fallback`` wrapper calls (its closure)."""
    cells = dict(zip(wrapper.__code__.co_freevars, (c.cell_contents for c in wrapper.__closure__)))
    return cells["implementation"]


def rms_ratio(ref: torch.Tensor, x: torch.Tensor) -> float:
    ref, x = ref.detach().double(), x.detach().double()
    return ((x - ref).square().mean().sqrt() / (ref.square().mean().sqrt() + 1e-12)).item()


def copy_weights(src: torch.nn.Module, dst: torch.nn.Module) -> None:
    missing, unexpected = dst.load_state_dict(src.state_dict(), strict=True)
    assert not missing and not unexpected


def forward_backward(model: torch.nn.Module, input_ids: torch.Tensor, **kwargs):
    """Logits, loss and every parameter's gradient of one training step (loss on the inputs)."""
    model.zero_grad(set_to_none=True)
    out = model(input_ids, labels=input_ids, use_cache=False, **kwargs)
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.logits.detach(), out.loss.detach(), grads


def packed_inputs(seqs):
    """One packed row of the sequences, with the keyword arguments a packing collator gives
    (transformers' DataCollatorWithFlattening with return_flash_attn_kwargs=True)."""
    lens = [s.shape[1] for s in seqs]
    cu = torch.tensor([0] + lens, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    kwargs = dict(position_ids=torch.cat([torch.arange(n) for n in lens])[None],
                  cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max(lens), max_length_k=max(lens))
    return torch.cat(seqs, 1), lens, kwargs
