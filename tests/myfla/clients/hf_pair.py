"""Two copies of a transformers modeling module in one process: one bound to transformers' own torch
fallback, one bound to myfla through ``myfla.install_as_fla`` (and ``myfla.install_as_causal_conv1d``
for the short convolution).

transformers' ``use_kernel_func_from_hub_with_fallback(name, "fla")`` (and ``"causal_conv1d"``)
decides between the package and its fallback when the modeling module is imported, so the first copy
is imported while ``import fla`` and ``import causal_conv1d`` are blocked, the second after the
aliases are installed. Both copies are taken out of ``sys.modules`` again and the aliases are removed
on exit, so nothing leaks into other tests.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import sys
from typing import Iterator, Tuple

import torch

from myfla.alias import install_as_causal_conv1d, install_as_fla, uninstall_as_causal_conv1d, uninstall_as_fla

_SERVED = ("fla", "causal_conv1d")


def _is_served_name(name: str) -> bool:
    return name.split(".")[0] in _SERVED


class _BlockFla(importlib.abc.MetaPathFinder):
    """``import fla`` and ``import causal_conv1d`` fail (as on a machine without them), whatever is
    installed."""

    def find_spec(self, fullname, path=None, target=None):
        if _is_served_name(fullname):
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


def _uninstall_aliases() -> None:
    uninstall_as_fla()
    uninstall_as_causal_conv1d()


def _import_fresh(modname: str):
    sys.modules.pop(modname, None)
    module = importlib.import_module(modname)
    sys.modules.pop(modname, None)
    return module


@contextlib.contextmanager
def _restored_import_state(modname: str):
    """Put ``sys.modules`` (the modeling module, ``fla.*``, ``causal_conv1d.*``) and ``sys.meta_path``
    back on exit; inside, no alias is installed and neither package is imported."""
    parent_name, _, child = modname.rpartition(".")
    saved_module = sys.modules.get(modname)
    saved_fla = {n: m for n, m in sys.modules.items() if _is_served_name(n)}
    saved_meta_path = list(sys.meta_path)
    try:
        for name in saved_fla:
            del sys.modules[name]
        _uninstall_aliases()
        yield
    finally:
        _uninstall_aliases()
        sys.meta_path[:] = saved_meta_path
        for name in [n for n in sys.modules if _is_served_name(n)]:
            del sys.modules[name]
        sys.modules.update(saved_fla)
        parent = sys.modules.get(parent_name)
        if saved_module is not None:
            sys.modules[modname] = saved_module
            if parent is not None:
                setattr(parent, child, saved_module)
        else:
            sys.modules.pop(modname, None)
            if parent is not None and child in vars(parent):
                delattr(parent, child)


def _import_without_fla(modname: str):
    blocker = _BlockFla()
    sys.meta_path.insert(0, blocker)
    try:
        return _import_fresh(modname)
    finally:
        sys.meta_path.remove(blocker)


@contextlib.contextmanager
def fallback_and_myfla(modname: str) -> Iterator[Tuple[object, object]]:
    """Yield ``(fallback_module, myfla_module)`` for ``transformers.models.X.modeling_X``: the second
    binds its fla ops and its short convolution (``causal_conv1d_fn`` / ``causal_conv1d_update``) to myfla."""
    with _restored_import_state(modname):
        fallback = _import_without_fla(modname)
        assert install_as_fla(force=True) == "myfla"
        assert install_as_causal_conv1d(force=True) == "myfla"
        served = _import_fresh(modname)
        yield fallback, served


@contextlib.contextmanager
def imported_before_the_alias(modname: str):
    """Yield the modeling module imported (bound to the fallback) and left in ``sys.modules``, with
    no alias installed yet: the import-order mistake ``install_as_fla`` warns about."""
    with _restored_import_state(modname):
        module = _import_without_fla(modname)
        sys.modules[modname] = module
        yield module


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


def collate_packed(seqs):
    """One packed row of the sequences (``[1, n]`` each) as transformers' packing collator gives it:
    ``DataCollatorWithFlattening(return_flash_attn_kwargs=True, return_seq_idx=True)`` (input_ids,
    labels with -100 at each sequence start, position_ids, seq_idx, cu_seq_lens_q/k, max_length_q/k)."""
    from transformers import DataCollatorWithFlattening
    collator = DataCollatorWithFlattening(return_flash_attn_kwargs=True, return_seq_idx=True)
    return collator([{"input_ids": s[0].tolist()} for s in seqs])


def packed_inputs(seqs):
    """``(input_ids, lengths, keyword arguments)`` of one packed row: the collator's batch without
    input_ids and labels."""
    batch = collate_packed(seqs)
    kwargs = {k: v for k, v in batch.items() if k not in ("input_ids", "labels")}
    return batch["input_ids"], [s.shape[1] for s in seqs], kwargs


def _gradients(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def packed_and_separate_steps(model, seqs, rename=(), drop=()):
    """One training step on the packed row (the collator's batch, ``use_cache=False``) and the same
    sequences run one by one. ``rename`` adds batch entries under other names (``(("cu_seq_lens_q",
    "cu_seqlens"),)``), ``drop`` leaves some out. Returns ``(packed, separate)``, each ``(logits per
    sequence, loss, gradients)``; the separate losses are weighted by their label counts, as the
    packed loss (a mean over every label that is not -100) weighs them, so both steps are equal
    when the sequences are kept apart."""
    batch = collate_packed(seqs)
    for old, new in rename:
        batch[new] = batch[old]
    for name in drop:
        batch.pop(name)
    lens = [s.shape[1] for s in seqs]
    model.zero_grad(set_to_none=True)
    out = model(**batch, use_cache=False)
    out.loss.backward()
    packed = (out.logits.detach().split(lens, 1), out.loss.detach(), _gradients(model))
    model.zero_grad(set_to_none=True)
    labels = sum(n - 1 for n in lens)
    logits, loss = [], torch.zeros(())
    for seq, n in zip(seqs, lens):
        if n == 1:                            # no label: logits only
            with torch.no_grad():
                logits.append(model(seq, use_cache=False).logits)
            continue
        alone = model(seq, labels=seq, use_cache=False)
        part = alone.loss * (n - 1) / labels
        part.backward()
        logits.append(alone.logits.detach())
        loss = loss + part.detach()
    return packed, (logits, loss, _gradients(model))


def max_abs_diff(a, b) -> float:
    return (a.detach().double() - b.detach().double()).abs().max().item()


def assert_packed_step_equals_separate_runs(ref, ours, seqs, conv_weight: str, rename=()) -> None:
    """One training step of ``ours`` on the packed row of ``seqs`` equals the sequences run one by one:
    logits (also against transformers' fallback ``ref`` run per sequence), loss and every gradient,
    the short convolution's weight (``conv_weight``, a parameter-name fragment) among them."""
    from tests.numerics import assert_rms
    ref.train(), ours.train()
    (logits, loss, grads), (logits_alone, loss_alone, grads_alone) = packed_and_separate_steps(
        ours, seqs, rename=rename)
    for i, (part, alone, seq) in enumerate(zip(logits, logits_alone, seqs)):
        assert max_abs_diff(alone, part) < 1e-5, f"sequence {i}: {max_abs_diff(alone, part):.2e}"
        with torch.no_grad():
            alone_ref = ref(seq, use_cache=False).logits
        assert rms_ratio(alone_ref, part) < 1e-5 and max_abs_diff(alone_ref, part) < 1e-5
    assert abs(loss.item() - loss_alone.item()) < 1e-6 * abs(loss_alone.item()) + 1e-7
    assert grads.keys() == grads_alone.keys()
    for name, g_alone in grads_alone.items():
        assert_rms(name, g_alone, grads[name], 1e-4)
    assert any(conv_weight in n for n in grads)


def hub_kernels_or_skip(package: str = "fla"):
    """transformers' ``hub_kernels`` module, or a module-level skip where this transformers binds
    ``package`` only when CUDA is available (before 5: tools/probe_transformers_457.py)."""
    import pytest
    hub = pytest.importorskip("transformers.integrations.hub_kernels")
    if not hasattr(hub, "use_kernel_func_from_hub_with_fallback"):
        pytest.skip(f"transformers < 5 binds {package} only when CUDA is available (tools/probe_transformers_457.py)",
                    allow_module_level=True)
    return hub


@contextlib.contextmanager
def recorded_keywords(module, names):
    """Record the keyword names a modeling module passes to its fla-backed functions (before
    transformers' wrapper filters them by the target's signature)."""
    seen = {name: set() for name in names}
    originals = {name: getattr(module, name) for name in names}

    def recorder(name):
        def call(*args, **kwargs):
            seen[name].update(kwargs)
            return originals[name](*args, **kwargs)
        return call

    try:
        for name in names:
            setattr(module, name, recorder(name))
        yield seen
    finally:
        for name, original in originals.items():
            setattr(module, name, original)


def upstream_parameters(root, relpath: str, function: str):
    """Parameter names of an upstream function, read statically (fla is never imported)."""
    import ast
    from pathlib import Path
    tree = ast.parse(Path(root, relpath).read_text())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == function:
            a = node.args
            return {p.arg for p in a.posonlyargs + a.args + a.kwonlyargs}
    raise LookupError(f"{relpath} defines no {function}")


def assert_no_keyword_dropped(model, served, ops, fla060_root, vocab: int):
    """Serve a packed row and a short generation through ``model`` (built from the modeling module
    ``served``, bound to myfla) and check that every keyword transformers passes to each of ``ops``
    (wrapper name -> (fla file, fla function, myfla function)) that fla 0.6.0's function accepts is
    one myfla's accepts too. Returns the keywords seen per wrapper."""
    import inspect
    ids, _, packing = packed_inputs([torch.randint(3, vocab, (1, n)) for n in (30, 50)])
    with recorded_keywords(served, list(ops)) as seen, torch.no_grad():
        model(ids, use_cache=False, **packing)
        model.generate(ids[:, :20], max_new_tokens=3, do_sample=False, pad_token_id=0)
    for name, (relpath, function, ours_fn) in ops.items():
        assert seen[name], f"{name} was not called"
        upstream = upstream_parameters(fla060_root, relpath, function)
        dropped = (seen[name] & upstream) - set(inspect.signature(ours_fn).parameters)
        assert not dropped, f"{function}: transformers passes {sorted(dropped)}, myfla would drop them"
    return seen


def assert_trains_under_bf16_autocast(model, vocab: int) -> None:
    """A training step of ``model`` under CPU bf16 autocast (what transformers' Trainer turns on for
    bf16=True): it runs, its loss stays within bf16 rounding (1e-3 relative) of the fp32 loss, and
    every gradient is finite."""
    model.train()
    ids = torch.randint(3, vocab, (2, 150))
    with torch.no_grad():
        loss32 = model(input_ids=ids, labels=ids).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss16 = model(input_ids=ids, labels=ids).loss
    loss16.backward()
    assert abs(loss16.item() - loss32.item()) < 1e-3 * abs(loss32.item())
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def assert_generates_alike_under_inference_mode(model, vocab: int) -> None:
    """Greedy generation inside ``torch.inference_mode()`` (where serving code runs models) gives the
    same tokens as under ``no_grad``; a training step runs afterwards."""
    model.eval()
    prompt = torch.randint(3, vocab, (2, 70))
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        expected = model.generate(prompt, **kwargs)
    with torch.inference_mode():
        got = model.generate(prompt, **kwargs)
    assert torch.equal(expected, got)
    model.train()
    loss = model(input_ids=prompt, labels=prompt).loss
    loss.backward()
    assert torch.isfinite(loss)


def assert_bf16_model_as_accurate_as_fallback(ref, ours, vocab: int) -> None:
    """Both models cast to bf16 (published checkpoints are bf16): myfla's logits are no further from the
    fp32 logits than transformers' own bf16 fallback is (with 25% slack; both about 5e-3 RMS), greedy
    generation runs, and a bf16 training step gives finite gradients."""
    import copy
    ids = torch.randint(3, vocab, (2, 150), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits32 = ours.eval()(ids, use_cache=False).logits
    ref16, ours16 = copy.deepcopy(ref).to(torch.bfloat16).eval(), copy.deepcopy(ours).to(torch.bfloat16).eval()
    with torch.no_grad():
        err_ref = rms_ratio(logits32, ref16(ids, use_cache=False).logits)
        err_ours = rms_ratio(logits32, ours16(ids, use_cache=False).logits)
        ours16.generate(ids[:, :70], max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert err_ours <= 1.25 * err_ref + 1e-4, f"bf16 logits: myfla {err_ours:.2e}, fallback {err_ref:.2e} RMS"
    ours16.train()
    ours16(ids, labels=ids, use_cache=False).loss.backward()
    grads = [p.grad for p in ours16.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def assert_training_step_matches_fallback(ref, ours, vocab: int, own_parameter: str) -> None:
    """One training step (B=2, T=150: three chunks, the last one partial) of ``ours`` against the
    fallback ``ref``: logits (RMS 1e-5), loss (1e-5 relative), every gradient (RMS 1e-4); a parameter
    whose name contains ``own_parameter`` (the fla layer's own) got one through myfla's backward."""
    from tests.numerics import assert_rms
    ref.train(), ours.train()
    ids = torch.randint(3, vocab, (2, 150))
    logits_ref, loss_ref, grads_ref = forward_backward(ref, ids)
    logits, loss, grads = forward_backward(ours, ids)
    assert rms_ratio(logits_ref, logits) < 1e-5
    assert abs(loss.item() - loss_ref.item()) < 1e-5 * abs(loss_ref.item())
    assert grads.keys() == grads_ref.keys()
    for name, g_ref in grads_ref.items():
        assert_rms(name, g_ref, grads[name], 1e-4)
    assert any(own_parameter in n for n in grads)


def assert_greedy_generation_matches_fallback(ref, ours, vocab: int, new_tokens: int = 40) -> None:
    """Greedy generation from a 70-token prompt (a chunked prefill, then one-token decode steps):
    the same tokens as the fallback, every step's scores within RMS 1e-5."""
    ref.eval(), ours.eval()
    prompt = torch.randint(3, vocab, (2, 70))
    kwargs = dict(max_new_tokens=new_tokens, do_sample=False, output_scores=True, return_dict_in_generate=True,
                  pad_token_id=0)
    with torch.no_grad():
        out_ref = ref.generate(prompt, **kwargs)
        out = ours.generate(prompt, **kwargs)
    assert torch.equal(out.sequences, out_ref.sequences)
    for s_ref, s in zip(out_ref.scores, out.scores):
        assert rms_ratio(s_ref, s) < 1e-5
