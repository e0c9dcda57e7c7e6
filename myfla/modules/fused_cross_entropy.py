"""Cross entropy with label smoothing, logit scaling, z-loss and an in-place backward (fla's
``FusedCrossEntropyLoss``, from flash-attn's Triton cross entropy).

fla's forward kernel computes, per row, ``lse = logsumexp(logit_scale * logits)`` and the loss
``lse - logit_scale * logits[label]`` (with smoothing: ``lse - s * sum(scaled logits) / C - (1 - s) *
scaled logits[label]``) plus the z-loss ``lse_square_scale * lse^2``; ignored rows give 0. With
tensor parallelism (``process_group``) or more than 64K classes the vocabulary is split into blocks
whose partial results are merged with a logsumexp. The backward kernel writes
``dloss * logit_scale * (softmax + 2 * lse_square_scale * lse * softmax - onehot_smoothed)``, into
the logits' own memory when ``inplace_backward``. Here each kernel is one batched torch expression
over all rows (fp32, fp64 for fp64 logits).
"""

from typing import Any, Tuple

import torch
import torch.nn as nn

from myfla._torch_compat import all_gather_into_tensor
from myfla.utils import input_guard


def _row_losses(
    logits: torch.Tensor,
    target: torch.Tensor,
    label_smoothing: float,
    logit_scale: float,
    lse_square_scale: float,
    ignore_index: int,
    total_classes: int,
    class_start_idx: int,
    split: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The forward kernel over one block of classes (all of them here): per-row loss, z-loss, lse.

    Source: fla/modules/fused_cross_entropy.py:L23-L89 (fla 0.4.0)
    """
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    n_cols = logits.shape[-1]
    scaled = logits.to(acc) * logit_scale
    lse = torch.logsumexp(scaled, dim=-1)
    ignored = target == ignore_index
    label = target - class_start_idx
    in_block = (label >= 0) & (label < n_cols) & ~ignored
    label_logit = scaled.gather(-1, label.clamp(0, n_cols - 1).unsqueeze(-1)).squeeze(-1)
    lse_term = lse if not split else torch.zeros_like(lse)
    if label_smoothing > 0.0:
        sum_logits = scaled.sum(-1)
        # a label outside this block of classes still pays the smoothing part
        loss = torch.where(in_block,
                           lse_term - label_smoothing * sum_logits / total_classes - (1 - label_smoothing) * label_logit,
                           label_smoothing * (lse_term - sum_logits / total_classes))
    else:
        loss = torch.where(in_block, lse_term - label_logit, torch.zeros_like(lse))
    if not split:
        z_loss = lse_square_scale * lse * lse
        loss = loss + z_loss
    else:
        z_loss = torch.zeros_like(lse)
    zero = torch.zeros_like(lse)
    return torch.where(ignored, zero, loss), torch.where(ignored, zero, z_loss), lse


def fused_cross_entropy_forward(
    logits: torch.Tensor,
    target: torch.Tensor,
    label_smoothing: float = 0.0,
    logit_scale: float = 1.0,
    lse_square_scale: float = 0.0,
    ignore_index: int = -100,
    process_group=None,
):
    """Per-row ``(losses, z_losses, lse, total_classes, class_start_idx)`` of ``logits`` ``[N, C]``
    (this rank's slice of the classes under tensor parallelism).

    Source: fla/modules/fused_cross_entropy.py:L140-L228 (fla 0.4.0)
    """
    n_rows, n_cols = logits.shape
    assert target.shape == (n_rows,)
    world_size = 1 if process_group is None else torch.distributed.get_world_size(process_group)
    total_classes = world_size * n_cols
    rank = 0 if process_group is None else torch.distributed.get_rank(process_group)
    class_start_idx = rank * n_cols

    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    # fla splits rows over blocks of at most 64K classes and merges them (the same numbers up to
    # rounding); the split result leaves the lse out of the loss until the merge below
    MAX_BLOCK_SIZE = 64 * 1024
    split = world_size > 1 or n_cols > MAX_BLOCK_SIZE
    losses, z_losses, lse = _row_losses(logits, target, label_smoothing, logit_scale, lse_square_scale,
                                        ignore_index, total_classes, class_start_idx, split)

    if split:
        if world_size > 1:
            lse_allgather = torch.empty(world_size, n_rows, dtype=lse.dtype, device=lse.device)
            # gathered through a flat view of the same memory: gloo (CPU) splits the output along
            # dim 0, NCCL takes either layout
            all_gather_into_tensor(lse_allgather.view(world_size * n_rows), lse, group=process_group)
            handle_losses = torch.distributed.all_reduce(
                losses, op=torch.distributed.ReduceOp.SUM, group=process_group, async_op=True
            )
            lse = torch.logsumexp(lse_allgather, dim=0)
            handle_losses.wait()
        # the partial losses hold -predicted logit (and the smoothing term); add the global lse
        losses += lse
        if lse_square_scale != 0.0:
            z_losses = lse_square_scale * lse.square()
            z_losses.masked_fill_(target == ignore_index, 0.0)
            losses += z_losses
        else:
            z_losses = torch.zeros_like(losses)
        losses.masked_fill_(target == ignore_index, 0.0)

    return losses, z_losses, lse, total_classes, class_start_idx


def _cross_entropy_grad(
    logits: torch.Tensor,
    grad_losses: torch.Tensor,
    lse: torch.Tensor,
    target: torch.Tensor,
    label_smoothing: float,
    logit_scale: float,
    lse_square_scale: float,
    ignore_index: int,
    total_classes: int,
    class_start_idx: int,
) -> torch.Tensor:
    """The backward kernel: ``dlogits`` for all rows, in fp32 (fp64 for fp64 logits).

    Source: fla/modules/fused_cross_entropy.py:L92-L137 (fla 0.4.0)
    """
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    n_cols = logits.shape[-1]
    dloss = torch.where(target != ignore_index, grad_losses.to(acc), torch.zeros((), dtype=acc, device=logits.device))
    probs = torch.exp(logits.to(acc) * logit_scale - lse.to(acc).unsqueeze(-1))
    probs = probs + 2.0 * lse_square_scale * lse.to(acc).unsqueeze(-1) * probs
    cols = torch.arange(n_cols, device=logits.device)
    is_label = cols == (target - class_start_idx).unsqueeze(-1)
    if label_smoothing > 0.0:
        smooth_negative = label_smoothing / total_classes
        probs = torch.where(is_label, probs - (1 - label_smoothing), probs) - smooth_negative
    else:
        probs = torch.where(is_label, probs - 1.0, probs)
    return (dloss * logit_scale).unsqueeze(-1) * probs


class CrossEntropyLossFunction(torch.autograd.Function):
    """Per-row losses and z-losses forward; ``dlogits`` backward (written into the logits with
    ``inplace_backward``, saving memory: the logits are overwritten by their gradient).

    Source: fla/modules/fused_cross_entropy.py:L231-L297 (fla 0.4.0)
    """

    @staticmethod
    @input_guard
    def forward(
        ctx,
        logits,
        target,
        label_smoothing=0.0,
        logit_scale=1.0,
        lse_square_scale=0.0,
        ignore_index=-100,
        inplace_backward=False,
        process_group=None,
    ):
        losses, z_losses, lse, total_classes, class_start_idx = fused_cross_entropy_forward(
            logits,
            target,
            label_smoothing,
            logit_scale,
            lse_square_scale,
            ignore_index,
            process_group,
        )
        ctx.save_for_backward(logits, lse, target)
        ctx.mark_non_differentiable(z_losses)
        ctx.label_smoothing = label_smoothing
        ctx.logit_scale = logit_scale
        ctx.lse_square_scale = lse_square_scale
        ctx.ignore_index = ignore_index
        ctx.total_classes = total_classes
        ctx.class_start_idx = class_start_idx
        ctx.inplace_backward = inplace_backward

        return losses, z_losses

    @staticmethod
    @input_guard
    def backward(ctx, grad_losses, grad_z_losses):
        del grad_z_losses  # z_losses are only for logging

        logits, lse, target = ctx.saved_tensors
        grad = _cross_entropy_grad(logits, grad_losses, lse, target, ctx.label_smoothing, ctx.logit_scale,
                                   ctx.lse_square_scale, ctx.ignore_index, ctx.total_classes,
                                   ctx.class_start_idx)
        if ctx.inplace_backward:
            dlogits = logits.copy_(grad)
        else:
            dlogits = grad.to(logits.dtype)
        return dlogits, None, None, None, None, None, None, None, None


def cross_entropy_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    label_smoothing: float = 0.0,
    logit_scale: float = 1.0,
    lse_square_scale: float = 0.0,
    ignore_index=-100,
    inplace_backward: bool = False,
    process_group=None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-row cross entropy of ``logits`` ``[N, C]`` against ``target`` ``[N]``.

    ``logit_scale`` multiplies the logits first; ``lse_square_scale > 0`` adds the z-loss
    ``lse_square_scale * lse^2``; rows whose target is ``ignore_index`` give 0;
    ``inplace_backward`` writes the gradient into the logits' memory; ``process_group`` makes each
    rank hold one slice of the classes (tensor parallelism). Returns ``(losses, z_losses)``, fp32.

    Source: fla/modules/fused_cross_entropy.py:L300-L341 (fla 0.4.0)
    """
    return CrossEntropyLossFunction.apply(
        logits,
        target,
        label_smoothing,
        logit_scale,
        lse_square_scale,
        ignore_index,
        inplace_backward,
        process_group,
    )


class FusedCrossEntropyLoss(nn.Module):
    """``nn.CrossEntropyLoss`` with fla's extras (logit scale, z-loss, in-place backward, tensor
    parallelism); ``reduction`` is ``'mean'`` (over non-ignored targets), ``'sum'`` or ``'none'``;
    ``return_z_loss`` also returns the z-loss part (for logging, no gradient).

    Deviation: fla 0.4.0 asserts CUDA tensors (its kernels are Triton); this runs on any device.

    Source: fla/modules/fused_cross_entropy.py:L344-L419 (fla 0.4.0)
    """

    def __init__(
        self,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        logit_scale: float = 1.0,
        lse_square_scale: float = 0.0,
        inplace_backward: bool = False,
        process_group: Any = None,
        return_z_loss: bool = False,
    ):
        super().__init__()
        if reduction not in ["mean", "none", "sum"]:
            raise NotImplementedError("Only support reduction = 'mean' or 'none' or 'sum'")
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.logit_scale = logit_scale
        self.lse_square_scale = lse_square_scale
        self.inplace_backward = inplace_backward
        self.process_group = process_group
        self.return_z_loss = return_z_loss

    def forward(self, input, target):
        """``input`` ``[N, C]``, ``target`` ``[N]`` -> the reduced loss (and z-loss if asked)."""
        loss, z_loss = cross_entropy_loss(
            input,
            target,
            label_smoothing=self.label_smoothing,
            logit_scale=self.logit_scale,
            lse_square_scale=self.lse_square_scale,
            ignore_index=self.ignore_index,
            inplace_backward=self.inplace_backward,
            process_group=self.process_group,
        )
        if self.reduction == "mean":
            loss = loss.sum() / (target != self.ignore_index).sum()
        elif self.reduction == "sum":
            loss = loss.sum()

        if not self.return_z_loss:
            return loss

        if self.reduction == "mean":
            z_loss = z_loss.sum() / (target != self.ignore_index).sum()
        elif self.reduction == "sum":
            z_loss = z_loss.sum()

        return loss, z_loss
