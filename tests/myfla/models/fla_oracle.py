"""fla 0.4.0's own model code, run on CPU references: the oracle for myfla's models.

fla's ``modeling_kda.py`` / ``modeling_gated_deltanet.py``, their configurations, ``models/utils.py``,
``layers/attn.py``, ``modules/mlp.py``, ``modules/l2warp.py``, ``models/modeling_layers.py`` and the
``RotaryEmbedding`` class are executed from the fetched upstream tree by file path (nothing is
copied into the repository). What they import from fla's Triton-backed code is replaced by CPU
references written from the defining formulas, independently of myfla:

- the delta-rule ops and the gate: fla's ``naive_recurrent_kda`` / ``kda_gate_ref`` (through
  ``portaudit.numerics.reference.ReferenceOps``), and with ``layers='ref'`` the layers are fla's own
  layer files on those ops; with ``layers='myfla'`` they are myfla's layers (fast; for testing model
  glue: generation, caches, losses);
- ``flash_attn_func`` / ``flash_attn_varlen_func``: an explicit softmax with flash-attn's masks
  (bottom-right aligned causal mask, ``window_size=(left, right)``, GQA, varlen);
- ``rotary_embedding``: fla's ``rotary_embedding_ref`` applied to the table rows of each token's
  position (offsets and varlen as the Triton kernel reads them);
- ``swiglu`` / ``swiglu_linear``: ``silu(x) * y`` and a linear layer on it;
- ``FusedCrossEntropyLoss`` / ``FusedLinearCrossEntropyLoss``: ``F.cross_entropy`` (mean over the
  non-ignored targets), the latter on ``x @ W^T + b``;
- norms, ShortConvolution: the formulas of ``portaudit.numerics.reference``.

Two fla 0.4.0 incompatibilities with the transformers installed here are patched in the oracle
(and fixed in myfla, see manifests/models.yaml): ``FLALayer.get_max_length`` is added, and the
causal LMs' ``_tied_weights_keys`` becomes the mapping transformers 5 expects.
"""

from __future__ import annotations

import abc
import contextlib
import importlib.util
import sys
import types
import warnings
from pathlib import Path
from typing import Optional

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from myfla._torch_compat import version_at_least
from portaudit.numerics.fla040 import reference as R
from portaudit.numerics.upstream_code import load_function
from tests.myfla.models.attention_reference import ref_flash_attn_func, ref_flash_attn_varlen_func


# -- rotary: fla's rotary_embedding_ref on each token's table row -------------------------------------

def make_ref_rotary_embedding(rotary_embedding_ref):
    def rotary_embedding(x, cos, sin, interleaved=False, inplace=False, seqlen_offsets=0, cu_seqlens=None):
        B, T, H, D = x.shape
        TR = cos.shape[0]
        if cu_seqlens is None:
            pos = torch.arange(T).view(1, T).expand(B, T)
            seq = torch.arange(B).view(B, 1).expand(B, T)
        else:
            lens = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
            pos = torch.cat([torch.arange(n) for n in lens]).view(1, T)
            seq = torch.cat([torch.full((n,), i) for i, n in enumerate(lens)]).view(1, T)
        if isinstance(seqlen_offsets, torch.Tensor):
            pos = pos + seqlen_offsets.cpu()[seq]
        else:
            pos = pos + seqlen_offsets
        valid = (pos >= 0) & (pos < TR)
        idx = pos.clamp(0, TR - 1).to(cos.device)
        y = rotary_embedding_ref(x, cos[idx], sin[idx], interleaved)
        R2 = cos.shape[-1] * 2
        # the kernel writes nothing for positions outside the table; myfla leaves them unrotated
        y[..., :R2] = torch.where(valid.to(x.device).view(B, T, 1, 1), y[..., :R2], x[..., :R2])
        return y
    return rotary_embedding


# -- activations and losses ------------------------------------------------------------------------

def ref_swiglu(x, y):
    xf = x.float() if x.dtype != torch.float64 else x
    return (F.silu(xf) * y).to(x.dtype)


def ref_swiglu_linear(x, y, weight, bias):
    return F.linear(ref_swiglu(x, y), weight, bias)


class RefCrossEntropyLoss(nn.Module):
    def __init__(self, ignore_index=-100, reduction="mean", label_smoothing=0.0, logit_scale=1.0,
                 lse_square_scale=0.0, inplace_backward=False, process_group=None, return_z_loss=False, **kw):
        super().__init__()
        self.ignore_index, self.reduction, self.label_smoothing = ignore_index, reduction, label_smoothing
        self.logit_scale = logit_scale

    def forward(self, input, target):
        logits = input.float() if input.dtype != torch.float64 else input
        return F.cross_entropy(logits * self.logit_scale, target, ignore_index=self.ignore_index,
                               reduction=self.reduction, label_smoothing=self.label_smoothing)


class RefLinearCrossEntropyLoss(nn.Module):
    def __init__(self, ignore_index=-100, label_smoothing=0.0, logit_scale=1.0, num_chunks=8, reduction="mean",
                 use_l2warp=False, l2_penalty_factor=1e-4):
        super().__init__()
        self.ce = RefCrossEntropyLoss(ignore_index=ignore_index, reduction=reduction,
                                      label_smoothing=label_smoothing, logit_scale=logit_scale)
        self.ignore_index = ignore_index
        self.use_l2warp, self.l2_penalty_factor, self.reduction = use_l2warp, l2_penalty_factor, reduction

    def forward(self, x, target, weight, bias=None):
        x, target = x.view(-1, x.shape[-1]), target.view(-1)
        logits = F.linear(x, weight, bias)
        loss = self.ce(logits, target)
        if self.use_l2warp:
            # d loss / d logits gains (factor * max logit) at each row's argmax, as fla's chunks add
            total = target.ne(self.ignore_index).sum()
            factor = self.l2_penalty_factor / total if self.reduction == 'mean' else self.l2_penalty_factor
            maxx = logits.max(-1).values
            loss = loss + (0.5 * factor * maxx.square()).sum() - (0.5 * factor * maxx.square()).sum().detach()
        return loss


# -- loading fla's files under a fake ``fla`` package ----------------------------------------------

def _package(name, **attrs):
    m = types.ModuleType(name)
    m.__path__ = []
    m.__dict__.update(attrs)
    return m


def _exec_file(root: Path, relpath: str, name: str):
    spec = importlib.util.spec_from_file_location(name, Path(root) / relpath)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except ImportError as e:
        sys.modules.pop(name, None)
        if not version_at_least(torch.__version__, '2.5'):
            # fla 0.4.0 requires torch >= 2.5 (fla/modules/mlp.py imports torch.distributed.DeviceMesh)
            pytest.skip(f"the oracle is fla 0.4.0's own {relpath}, which needs torch >= 2.5 "
                        f"(torch {torch.__version__}: {e})")
        raise
    return module


@contextlib.contextmanager
def _swapped_modules(fakes: dict):
    saved = {k: sys.modules.get(k) for k in fakes}
    sys.modules.update(fakes)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def load_fla_models(root: Path, layers: str = 'ref', fp64: bool = False) -> types.SimpleNamespace:
    """fla 0.4.0's model classes on the references; ``layers`` is ``'ref'`` or ``'myfla'``."""
    root = Path(root)
    import transformers.generation  # noqa: F401  (import transformers' own modules before the fakes exist)
    import transformers.modeling_utils  # noqa: F401
    ops = R.ReferenceOps(root, fp64=fp64)
    rot = load_function(root, "fla/modules/rotary.py", ["rotate_half", "rotary_embedding_ref"])
    rotary = load_function(root, "fla/modules/rotary.py", "RotaryEmbedding",
                           extra_globals={"rotary_embedding": make_ref_rotary_embedding(rot["rotary_embedding_ref"])})
    unpad_input = load_function(root, "fla/layers/utils.py", "unpad_input",
                                extra_globals={"get_unpad_data": R.get_unpad_data,
                                               "index_first_axis": R.index_first_axis})

    def lens_from_mask(mask):
        return mask.sum(-1, dtype=torch.int32)

    names = {}
    fakes = {
        "fla": _package("fla"),
        "fla.layers": _package("fla.layers"),
        "fla.layers.utils": _package("fla.layers.utils", get_unpad_data=R.get_unpad_data,
                                     index_first_axis=R.index_first_axis, pad_input=R.pad_input,
                                     unpad_input=unpad_input),
        "fla.modules.activations": _package("fla.modules.activations", swiglu=ref_swiglu,
                                            swiglu_linear=ref_swiglu_linear),
        "fla.ops": _package("fla.ops"),
        "fla.ops.utils": _package("fla.ops.utils"),
        "fla.ops.utils.index": _package("fla.ops.utils.index", prepare_lens_from_mask=lens_from_mask),
        "fla.ops.kda": _package("fla.ops.kda", chunk_kda=ops.chunk_kda, fused_recurrent_kda=ops.fused_recurrent_kda),
        "fla.ops.kda.gate": _package("fla.ops.kda.gate", fused_kda_gate=ops.fused_kda_gate),
        "fla.ops.gated_delta_rule": _package(
            "fla.ops.gated_delta_rule", chunk_gated_delta_rule=ops.chunk_gated_delta_rule,
            fused_recurrent_gated_delta_rule=ops.fused_recurrent_gated_delta_rule),
        "fla.models": _package("fla.models"),
        "fla.models.kda": _package("fla.models.kda"),
        "fla.models.gated_deltanet": _package("fla.models.gated_deltanet"),
    }
    fakes["fla.modules"] = _package(
        "fla.modules", RMSNorm=R.RMSNorm, FusedRMSNormGated=R.FusedRMSNormGated,
        ShortConvolution=R.ShortConvolution, RotaryEmbedding=rotary,
        FusedCrossEntropyLoss=RefCrossEntropyLoss, FusedLinearCrossEntropyLoss=RefLinearCrossEntropyLoss)
    with _swapped_modules(fakes):
        mlp = _exec_file(root, "fla/modules/mlp.py", "fla.modules.mlp")
        fakes["fla.modules"].GatedMLP = mlp.GatedMLP
        l2warp = _exec_file(root, "fla/modules/l2warp.py", "fla.modules.l2warp")
        utils = _exec_file(root, "fla/models/utils.py", "fla.models.utils")
        if "get_max_length" in getattr(utils.FLALayer, "__abstractmethods__", ()):
            utils.FLALayer.get_max_length = lambda self: -1
            abc.update_abstractmethods(utils.FLALayer)
        _exec_file(root, "fla/models/modeling_layers.py", "fla.models.modeling_layers")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ImportWarning)
            attn = _exec_file(root, "fla/layers/attn.py", "fla.layers.attn")
        # the flash-attn package is absent here: its two functions are the explicit-softmax references
        attn.flash_attn_func = ref_flash_attn_func
        attn.flash_attn_varlen_func = ref_flash_attn_varlen_func
        if layers == 'ref':
            kda_layer = _exec_file(root, "fla/layers/kda.py", "fla.layers.kda")
            gdn_layer = _exec_file(root, "fla/layers/gated_deltanet.py", "fla.layers.gated_deltanet")
        else:
            import myfla.layers.gated_deltanet as gdn_layer
            import myfla.layers.kda as kda_layer
            sys.modules["fla.layers.kda"] = kda_layer
            sys.modules["fla.layers.gated_deltanet"] = gdn_layer
        kcfg = _exec_file(root, "fla/models/kda/configuration_kda.py", "fla.models.kda.configuration_kda")
        kmod = _exec_file(root, "fla/models/kda/modeling_kda.py", "fla.models.kda.modeling_kda")
        gcfg = _exec_file(root, "fla/models/gated_deltanet/configuration_gated_deltanet.py",
                          "fla.models.gated_deltanet.configuration_gated_deltanet")
        gmod = _exec_file(root, "fla/models/gated_deltanet/modeling_gated_deltanet.py",
                          "fla.models.gated_deltanet.modeling_gated_deltanet")
        loaded = [mlp, l2warp, utils, attn, kcfg, kmod, gcfg, gmod]
        if layers == 'ref':
            loaded += [kda_layer, gdn_layer]
        for m in loaded:
            names[m.__name__] = m
    _patch_tied_weights(kmod.KDAForCausalLM)
    _patch_tied_weights(gmod.GatedDeltaNetForCausalLM)
    return types.SimpleNamespace(
        KDAConfig=kcfg.KDAConfig, KDAModel=kmod.KDAModel, KDAForCausalLM=kmod.KDAForCausalLM,
        GatedDeltaNetConfig=gcfg.GatedDeltaNetConfig, GatedDeltaNetModel=gmod.GatedDeltaNetModel,
        GatedDeltaNetForCausalLM=gmod.GatedDeltaNetForCausalLM, Cache=utils.Cache, Attention=attn.Attention,
        RotaryEmbedding=rotary, GatedMLP=mlp.GatedMLP, l2_warp=l2warp.l2_warp, modules=names,
    )


def _patch_tied_weights(cls) -> None:
    """transformers 5 reads ``_tied_weights_keys`` as {target: source}; fla 0.4.0 gives a list."""
    import transformers
    from packaging import version
    if version.parse(transformers.__version__) >= version.parse("5.0.0"):
        cls._tied_weights_keys = {"lm_head.weight": "model.embeddings.weight"}


def param_shapes(model: nn.Module) -> dict:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def copy_weights(src: nn.Module, dst: nn.Module) -> None:
    """Load ``src``'s state_dict into ``dst`` (the key sets must be equal)."""
    missing, unexpected = dst.load_state_dict(src.state_dict(), strict=True)
    assert not missing and not unexpected


def config_kwargs(family: str, **overrides) -> dict:
    """A tiny configuration of either family (fp32, CPU)."""
    base = dict(hidden_size=64, num_hidden_layers=2, num_heads=2, head_dim=32, vocab_size=97,
                hidden_ratio=2, conv_size=4, use_cache=True, fuse_cross_entropy=False)
    if family == 'gated_deltanet':
        base.update(expand_v=1.0)
    base.update(overrides)
    return base


def family_classes(ns, family: str, kind: Optional[str] = None):
    prefix = 'KDA' if family == 'kda' else 'GatedDeltaNet'
    if kind is None:
        return getattr(ns, prefix + 'Config'), getattr(ns, prefix + 'Model'), getattr(ns, prefix + 'ForCausalLM')
    return getattr(ns, prefix + kind)


@contextlib.contextmanager
def as_fla_package(ns):
    """Expose the oracle under fla's module names (``fla.models.kda``, ``fla.models.utils``,
    ``fla.layers.attn``, ...) while the context is open, so code written against real fla (the GPU
    recording script) runs on it."""
    mods = ns.modules
    fakes = {
        "fla": _package("fla"),
        "fla.layers": _package("fla.layers"),
        "fla.models": _package("fla.models"),
        "fla.models.kda": _package("fla.models.kda", KDAConfig=ns.KDAConfig, KDAModel=ns.KDAModel,
                                   KDAForCausalLM=ns.KDAForCausalLM),
        "fla.models.gated_deltanet": _package(
            "fla.models.gated_deltanet", GatedDeltaNetConfig=ns.GatedDeltaNetConfig,
            GatedDeltaNetModel=ns.GatedDeltaNetModel, GatedDeltaNetForCausalLM=ns.GatedDeltaNetForCausalLM),
    }
    for name in ("fla.models.utils", "fla.layers.attn"):
        fakes[name] = mods[name]
    with _swapped_modules(fakes):
        yield
