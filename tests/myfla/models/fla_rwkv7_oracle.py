"""fla 0.4.0's RWKV-7 model code, run on CPU references: the oracle for myfla's RWKV-7 models.

``fla/models/rwkv7/configuration_rwkv7.py`` and ``modeling_rwkv7.py`` are executed from the fetched
upstream tree by file path (nothing is copied into the repository), on:

- ``RWKV7Attention``: fla's own ``fla/layers/rwkv7.py`` on fla's torch references
  (``portaudit.numerics.fla040.reference_rwkv7``: the DPLR recurrence of ``naive.py``, fla's
  ``*_ref`` functions, ``LoRA`` and ``GroupNormRef``); ``token_shift`` from the same place;
- ``Attention``, ``Cache`` / ``FLAGenerationMixin``, ``l2_warp`` and the losses: fla's files on the
  references of ``fla_oracle`` (which also patches fla 0.4.0's two incompatibilities with
  transformers 5, see there);
- ``LayerNorm``: fla's ``LayerNorm`` class with its ``layer_norm`` call served by fla's
  ``layer_norm_ref``; ``ACT2FN``: the activations' formulas (``sqrelu = relu(x)^2``).

With ``fp64`` the references compute in float64 for float64 inputs.
"""

from __future__ import annotations

import contextlib
import types
from pathlib import Path

import torch
import torch.nn.functional as F

from portaudit.numerics.fla040.reference_rwkv7 import RWKV7Reference
from portaudit.numerics.upstream_code import load_function
from tests.myfla.models.fla_oracle import (
    RefCrossEntropyLoss,
    RefLinearCrossEntropyLoss,
    _exec_file,
    _package,
    _patch_tied_weights,
    _swapped_modules,
    load_fla_models,
)

ACTIVATIONS = {
    'sqrelu': lambda x: F.relu(x).square(),
    'relu': F.relu,
    'gelu': F.gelu,
    'silu': F.silu,
    'swish': F.silu,
    'sigmoid': torch.sigmoid,
}


def _layer_norm_class(root: Path, fp64: bool):
    """fla's ``LayerNorm`` module, its fused ``layer_norm`` replaced by ``layer_norm_ref`` (fp32 upcast,
    or fp64 for the fp64 oracle; with a residual, the prenorm output is the sum)."""
    ref = load_function(root, "fla/modules/layernorm.py", "layer_norm_ref", fp64_casts=fp64)

    def layer_norm(x, weight, bias, residual=None, eps=1e-5, prenorm=False, residual_in_fp32=False,
                   is_rms_norm=False):
        return ref(x, weight, bias, residual=residual, eps=eps, prenorm=prenorm, upcast=True)

    return load_function(root, "fla/modules/layernorm.py", "LayerNorm", extra_globals={"layer_norm": layer_norm})


def load_fla_rwkv7_models(root: Path, fp64: bool = False) -> types.SimpleNamespace:
    """fla 0.4.0's ``RWKV7Config``, ``RWKV7Model``, ``RWKV7ForCausalLM`` on the references."""
    root = Path(root)
    base = load_fla_models(root, layers='myfla', fp64=fp64)
    rref = RWKV7Reference(root, fp64=fp64)
    layer_module = _package("fla.layers.rwkv7", RWKV7Attention=rref.layer_class())
    fakes = {
        "fla": _package("fla"),
        "fla.layers": _package("fla.layers"),
        "fla.layers.attn": base.modules["fla.layers.attn"],
        "fla.layers.rwkv7": layer_module,
        "fla.models": _package("fla.models"),
        "fla.models.utils": base.modules["fla.models.utils"],
        "fla.models.rwkv7": _package("fla.models.rwkv7"),
        "fla.modules": _package("fla.modules", FusedCrossEntropyLoss=RefCrossEntropyLoss,
                                FusedLinearCrossEntropyLoss=RefLinearCrossEntropyLoss,
                                LayerNorm=_layer_norm_class(root, fp64)),
        "fla.modules.activations": _package("fla.modules.activations", ACT2FN=ACTIVATIONS),
        "fla.modules.l2warp": base.modules["fla.modules.l2warp"],
        "fla.modules.token_shift": _package("fla.modules.token_shift", token_shift=rref.token_shift),
    }
    with _swapped_modules(fakes):
        cfg = _exec_file(root, "fla/models/rwkv7/configuration_rwkv7.py", "fla.models.rwkv7.configuration_rwkv7")
        mod = _exec_file(root, "fla/models/rwkv7/modeling_rwkv7.py", "fla.models.rwkv7.modeling_rwkv7")
    _patch_tied_weights(mod.RWKV7ForCausalLM)
    return types.SimpleNamespace(
        RWKV7Config=cfg.RWKV7Config, RWKV7Model=mod.RWKV7Model, RWKV7ForCausalLM=mod.RWKV7ForCausalLM,
        RWKV7Block=mod.RWKV7Block, RWKV7FeedForward=mod.RWKV7FeedForward, Cache=base.Cache, modules=mod,
        fla_modules={name: base.modules[name] for name in ("fla.models.utils", "fla.layers.attn")},
    )


@contextlib.contextmanager
def as_fla_rwkv7_package(ns):
    """Expose the oracle as ``fla.models.rwkv7`` (with the ``fla.models.utils`` Cache and the
    ``fla.layers.attn`` its model code was loaded with) while the context is open, so code written
    against real fla (the GPU recording script) runs on it."""
    fakes = {
        "fla": _package("fla"),
        "fla.layers": _package("fla.layers"),
        "fla.models": _package("fla.models"),
        "fla.models.rwkv7": _package("fla.models.rwkv7", RWKV7Config=ns.RWKV7Config, RWKV7Model=ns.RWKV7Model,
                                     RWKV7ForCausalLM=ns.RWKV7ForCausalLM),
    }
    fakes.update(ns.fla_modules)
    with _swapped_modules(fakes):
        yield


def rwkv7_config_kwargs(**overrides) -> dict:
    """A tiny RWKV-7 configuration (fp32, CPU)."""
    base = dict(hidden_size=64, num_hidden_layers=2, head_dim=16, vocab_size=97, decay_low_rank_dim=8,
                gate_low_rank_dim=16, a_low_rank_dim=8, v_low_rank_dim=8, hidden_ratio=2, use_cache=True,
                fuse_cross_entropy=False)
    base.update(overrides)
    return base
