"""The last linear layer and the cross entropy in one pass that never holds all the logits
(fla's ``FusedLinearCrossEntropyLoss``, after Liger-Kernel).

The tokens are processed in chunks: for each chunk the logits ``x W^T + b`` are computed, their
logsumexp taken, and the chunk's logits are turned in place into ``d loss / d logits`` (fla's
``cross_entropy_kernel``), from which the chunk's contributions to ``dx``, ``dW`` and ``db`` are
accumulated; the gradients are therefore computed in the forward pass and only scaled by the
incoming gradient in the backward pass. With ``use_l2warp`` each row's largest logit also receives
the L2Wrap gradient ``l2_penalty_factor / total * max``. Here each chunk's kernel is one batched
torch expression (fp32 lse; dW, db accumulated in fp32 as fla does).
"""

from functools import partial
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from myfla._torch_compat import compiler_disable
from myfla.ops.utils import logsumexp_fwd
from myfla.utils import input_guard, is_amd

try:
    from torch.distributed import DeviceMesh
    from torch.distributed.tensor import Replicate, Shard, distribute_module
    from torch.distributed.tensor.parallel import ParallelStyle
except (ImportError, AttributeError):
    # torch without DTensor (public from torch 2.4): only the parallel plan is unavailable
    DeviceMesh = Replicate = Shard = distribute_module = None
    ParallelStyle = object

try:
    from torch.distributed.tensor import DTensor
except (ImportError, AttributeError):
    DTensor = None

# fla's largest vocabulary block per Triton program (the kernel's loop step; here a whole row at once).
# Source: fla/modules/fused_linear_cross_entropy.py:L31-L31 (fla 0.4.0)
MAX_FUSED_SIZE = 65536 // 2
# Source: fla/modules/fused_linear_cross_entropy.py:L32-L32 (fla 0.4.0)
STATIC_WARPS = 32 if not is_amd else 16


def _next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def _cdiv(a: int, b: int) -> int:
    return -(a // -b)


def cross_entropy_kernel(
    logits: torch.Tensor,
    lse: torch.Tensor,
    target: torch.Tensor,
    loss: torch.Tensor,
    total: int,
    ignore_index: int,
    label_smoothing: float,
    logit_scale: float,
    reduction: str,
) -> None:
    """Per-row loss into ``loss`` and ``d loss / d logits`` into ``logits`` (in place), for a chunk
    ``logits`` ``[C, V]`` with its fp32 ``lse`` ``[C]``.

    For a kept row: ``loss = lse - s * x_y`` (``s = logit_scale``; with smoothing ``eps = ls / V``:
    ``(1 - ls) * loss - eps * sum(s * x) + ls * lse``), ``dx_i = (softmax_i - eps) * s`` and
    ``dx_y += (ls - 1) * s``, both divided by ``total`` for ``reduction='mean'``. An ignored row
    gets zero gradient and (as in fla, whose kernel returns early) keeps the zero its loss buffer
    was created with.

    Source: fla/modules/fused_linear_cross_entropy.py:L35-L160 (fla 0.4.0)
    """
    V = logits.shape[-1]
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    keep = target != ignore_index
    y = torch.where(keep, target, torch.zeros_like(target)).unsqueeze(-1)
    b_logits = logits.to(acc) * logit_scale
    b_lse = lse.to(acc).unsqueeze(-1)
    b_loss = b_lse.squeeze(-1) - b_logits.gather(-1, y).squeeze(-1)
    eps = label_smoothing / V
    b_p = (torch.exp(b_logits - b_lse) - eps) * logit_scale
    if reduction == "mean":
        b_p = b_p / total
    if label_smoothing > 0:
        b_z = (-eps * b_logits).sum(-1)
        b_loss = b_loss * (1 - label_smoothing) + (b_z + label_smoothing * b_lse.squeeze(-1))
    if reduction == 'mean':
        b_loss = b_loss / total
        label_step = (label_smoothing - 1) / total * logit_scale
    else:
        label_step = (label_smoothing - 1) * logit_scale
    # the kernel stores the label's gradient in the logits' dtype before adding its step
    b_p = b_p.to(logits.dtype).to(acc)
    b_p = b_p.scatter_add(-1, y, torch.full_like(b_loss, label_step).unsqueeze(-1))
    b_p = torch.where(keep.unsqueeze(-1), b_p, torch.zeros_like(b_p))
    logits.copy_(b_p)
    loss.copy_(torch.where(keep, b_loss.to(loss.dtype), loss))


def elementwise_mul_kernel(x: torch.Tensor, g: torch.Tensor) -> None:
    """``x *= g`` in place (``g`` a one-element tensor).

    Source: fla/modules/fused_linear_cross_entropy.py:L163-L192 (fla 0.4.0)
    """
    x.mul_(g.to(x.dtype))


def fused_linear_cross_entropy_forward(
    x: torch.Tensor,
    target: torch.LongTensor,
    weight: torch.Tensor,
    bias: torch.Tensor = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    logit_scale: float = 1.0,
    num_chunks: int = 8,
    reduction: str = "mean",
    use_l2warp: bool = False,
    l2_penalty_factor: float = 1e-4
):
    """Loss and the gradients ``dx``, ``dW``, ``db`` for ``x`` ``[N, H]``, ``weight`` ``[V, H]``.

    The ``N`` tokens go in ``NC = cdiv(N, C)`` chunks of ``C = next_power_of_2(cdiv(N, min(num_chunks,
    cdiv(V, H))))`` rows, so that a chunk's logits take about as much memory as ``x``.

    Source: fla/modules/fused_linear_cross_entropy.py:L195-L309 (fla 0.4.0)
    """
    device = x.device
    N, H, V = *x.shape, weight.shape[0]
    NC = min(num_chunks, _cdiv(V, H))
    C = _next_power_of_2(_cdiv(N, NC))
    NC = _cdiv(N, C)

    # fp32 for the lse, the loss and the dW/db accumulators (fp64 for fp64 inputs)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float
    # [N, H]
    dx = torch.zeros_like(x, device=device)
    # [V, H], [V]
    dw = torch.zeros_like(weight, device=device, dtype=acc) if weight is not None else None
    db = torch.zeros_like(bias, device=device, dtype=acc) if bias is not None else None
    # [N]
    loss = torch.zeros(N, device=device, dtype=acc)

    total = target.ne(ignore_index).sum().item()

    for ic in range(NC):
        start, end = ic * C, min((ic + 1) * C, N)
        c_x = x[start:end]
        # the matmul in the inputs' precision
        c_logits = F.linear(c_x, weight, bias)
        c_target = target[start:end]
        c_lse = logsumexp_fwd(c_logits, scale=logit_scale, dtype=acc)

        c_loss = loss[start:end]
        if use_l2warp:
            c_maxx, c_ids = torch.max(c_logits, -1, keepdim=True)

        # the chunk's logits become their gradient
        cross_entropy_kernel(c_logits, c_lse, c_target, c_loss, total, ignore_index, label_smoothing,
                             logit_scale, reduction)
        if use_l2warp:
            # L2Wrap: the argmax logit of each row gets factor * max, normalised like the loss
            g_logits_l2 = torch.zeros_like(c_logits)
            l2_factor = l2_penalty_factor / total if reduction == 'mean' else l2_penalty_factor
            penalty_grad = c_maxx * l2_factor
            g_logits_l2.scatter_(-1, c_ids, penalty_grad)
            if weight is not None:
                dw.add_(g_logits_l2.t() @ c_x)
            if bias is not None:
                db.add_(g_logits_l2.sum(0))
            dx_l2_contribution = torch.mm(g_logits_l2, weight)
        else:
            dx_l2_contribution = 0.0

        dx[start:end] = torch.mm(c_logits, weight) + dx_l2_contribution

        if weight is not None:
            dw += c_logits.t() @ c_x

        if bias is not None:
            torch.add(input=db, other=c_logits.sum(0), out=db)

    loss = loss.sum()
    if dw is not None:
        dw = dw.to(weight)
    if db is not None:
        db = db.to(bias)
    return loss, dx, dw, db


def fused_linear_cross_entropy_backward(
    do: torch.Tensor,
    dx: torch.Tensor,
    dw: torch.Tensor,
    db: torch.Tensor
):
    """Scale the gradients computed in the forward pass by the loss's incoming gradient ``do``
    (skipped when it is 1, the usual case of a loss at the end of the graph).

    Source: fla/modules/fused_linear_cross_entropy.py:L312-L353 (fla 0.4.0)
    """
    if torch.ne(do, torch.tensor(1.0, device=do.device)):
        elementwise_mul_kernel(dx, do)
        if dw is not None:
            elementwise_mul_kernel(dw, do)
        if db is not None:
            elementwise_mul_kernel(db, do)
    return dx, dw, db


class FusedLinearCrossEntropyFunction(torch.autograd.Function):
    """The chunked loss forward (which also computes the gradients); their scaling backward.

    Source: fla/modules/fused_linear_cross_entropy.py:L356-L436 (fla 0.4.0)
    """

    @staticmethod
    @input_guard
    def forward(
        ctx,
        x: torch.Tensor,
        target: torch.LongTensor,
        weight: torch.Tensor,
        bias: torch.Tensor = None,
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
        logit_scale: float = 1.0,
        num_chunks: int = 8,
        reduction: str = "mean",
        use_l2warp: bool = False,
        l2_penalty_factor: float = 1e-4,
    ):
        loss, dx, dw, db = fused_linear_cross_entropy_forward(
            x,
            target,
            weight,
            bias,
            ignore_index,
            label_smoothing,
            logit_scale,
            num_chunks,
            reduction,
            use_l2warp,
            l2_penalty_factor
        )
        ctx.save_for_backward(
            dx.detach(),
            dw.detach() if weight is not None else None,
            db.detach() if bias is not None else None,
        )
        return loss

    @staticmethod
    @input_guard
    def backward(ctx, do):
        dx, dw, db = ctx.saved_tensors
        dx, dw, db = fused_linear_cross_entropy_backward(do, dx, dw, db)
        return dx, None, dw, db, None, None, None, None, None, None, None


def fused_linear_cross_entropy_loss(
    x: torch.Tensor,
    target: torch.LongTensor,
    weight: torch.Tensor,
    bias: torch.Tensor = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    logit_scale: float = 1.0,
    num_chunks: int = 8,
    reduction: str = "mean",
    use_l2warp: bool = False,
    l2_penalty_factor: float = 1e-4,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Cross entropy of ``x @ weight^T + bias`` (``x`` ``[N, H]``, ``weight`` ``[V, H]``) against
    ``target`` ``[N]``, reduced by ``'mean'`` (over non-ignored targets) or ``'sum'``.

    Source: fla/modules/fused_linear_cross_entropy.py:L439-L490 (fla 0.4.0)
    """
    return FusedLinearCrossEntropyFunction.apply(
        x,
        target,
        weight,
        bias,
        ignore_index,
        label_smoothing,
        logit_scale,
        num_chunks,
        reduction,
        use_l2warp,
        l2_penalty_factor
    )


class FusedLinearCrossEntropyLoss(nn.Module):
    """Loss module: ``forward(x [B, T, H], target [B, T], weight [V, H], bias=None)``.

    Source: fla/modules/fused_linear_cross_entropy.py:L493-L567 (fla 0.4.0)
    """

    def __init__(
        self,
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
        logit_scale: float = 1.0,
        num_chunks: int = 8,
        reduction: str = "mean",
        use_l2warp: bool = False,
        l2_penalty_factor: float = 1e-4,
    ):
        super().__init__()

        assert reduction in ["mean", "sum"], f"reduction: {reduction} is not supported"

        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.logit_scale = logit_scale
        self.num_chunks = num_chunks
        self.reduction = reduction
        self.use_l2warp = use_l2warp
        self.l2_penalty_factor = l2_penalty_factor

    @compiler_disable          # torch.compiler must not trace the chunk loop
    def forward(
        self,
        x: torch.Tensor,
        target: torch.LongTensor,
        weight: torch.Tensor,
        bias: Optional[torch.Tensor] = None
    ):
        loss = fused_linear_cross_entropy_loss(
            x.view(-1, x.shape[-1]),
            target.view(-1),
            weight=weight,
            bias=bias,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            logit_scale=self.logit_scale,
            num_chunks=self.num_chunks,
            reduction=self.reduction,
            use_l2warp=self.use_l2warp,
            l2_penalty_factor=self.l2_penalty_factor
        )
        return loss


class LinearLossParallel(ParallelStyle):
    """Sequence-parallel plan for the fused loss: ``x`` and ``target`` sharded on the sequence dim,
    weight and bias replicated.

    Source: fla/modules/fused_linear_cross_entropy.py:L570-L620 (fla 0.4.0)
    """

    def __init__(
        self,
        *,
        sequence_dim: int = 1,
        use_local_output: bool = False,
    ):
        if ParallelStyle is object:
            raise ImportError("LinearLossParallel needs DTensor tensor parallelism (torch.distributed.tensor, "
                              "torch >= 2.4), which this torch does not provide")
        super().__init__()

        self.sequence_sharding = (Shard(sequence_dim),)
        self.use_local_output = use_local_output

    @staticmethod
    def _prepare_input_fn(sequence_sharding, mod, inputs, device_mesh):
        x, target, weight, bias = inputs

        if not isinstance(x, DTensor):
            # the input is taken as already sharded on the sequence dim
            x = DTensor.from_local(x, device_mesh, sequence_sharding)
        if x.placements != sequence_sharding:
            x = x.redistribute(placements=sequence_sharding, async_op=True)
        if not isinstance(target, DTensor):
            target = DTensor.from_local(target, device_mesh, [Replicate()])
        if target.placements != sequence_sharding:
            target = target.redistribute(placements=sequence_sharding, async_op=True)

        if not isinstance(weight, DTensor):
            weight = DTensor.from_local(weight, device_mesh, [Replicate()])
        if weight.placements != [Replicate()]:
            # the loss needs the whole weight and bias on every rank
            weight = weight.redistribute(placements=[Replicate()], async_op=True)

        if bias is not None and not isinstance(bias, DTensor):
            bias = DTensor.from_local(bias, device_mesh, [Replicate()])
        if bias is not None and bias.placements != [Replicate()]:
            bias = bias.redistribute(placements=[Replicate()], async_op=True)

        return x.to_local(), target.to_local(), weight.to_local(), bias.to_local() if bias is not None else bias

    @staticmethod
    def _prepare_output_fn(use_local_output, mod, outputs, device_mesh):
        return outputs.to_local() if use_local_output else outputs

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        return distribute_module(
            module,
            device_mesh,
            partition_fn=None,
            input_fn=partial(self._prepare_input_fn, self.sequence_sharding),
            output_fn=partial(self._prepare_output_fn, self.use_local_output)
        )
