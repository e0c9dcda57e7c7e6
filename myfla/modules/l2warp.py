"""L2Wrap: a logit penalty that keeps a model from becoming over-confident (helps bf16 training).

The loss value passes through unchanged (as a copy); backward adds ``l2_penalty_factor / (B * T) *
max(logits)``, times the loss's incoming gradient, to the gradient of each row's largest logit (the
gradient of ``factor / 2 * max^2``), without saving the logits themselves.
"""

import torch


class L2Wrap(torch.autograd.Function):
    """Identity on ``loss``; a gradient for ``logits`` ``[B, T, V]`` at each row's argmax.

    Source: fla/modules/l2warp.py:L6-L35 (fla 0.4.0)
    """

    @staticmethod
    def forward(ctx, loss, logits, l2_penalty_factor=1e-4):
        maxx, ids = torch.max(logits, dim=-1, keepdim=True)
        ctx.logits_shape = logits.shape
        factor = l2_penalty_factor / (logits.shape[0] * logits.shape[1])
        maxx = maxx * factor
        ctx.save_for_backward(maxx, ids)
        # a copy, not ``loss`` itself: an input returned as-is comes out as a view, which autograd
        # refuses to see modified in place, and transformers 5's Trainer scales the loss in place
        # (``loss *= ...``: "Output 0 of L2Wrap is a view and is being modified inplace")
        return loss.clone()

    @staticmethod
    def backward(ctx, grad_output):
        # as fla 0.6.0 (a manifest deviation): the logits' gradient in the logits' dtype and scaled by
        # the loss's incoming gradient. fla 0.4.0 made it in the loss's dtype (bf16 logits under
        # autocast with an fp32 loss: "scatter(): Expected self.dtype to be equal to src.dtype") and
        # unscaled (a loss divided for gradient accumulation kept the whole penalty).
        maxx, ids = ctx.saved_tensors
        glogits = torch.zeros(ctx.logits_shape, device=grad_output.device, dtype=maxx.dtype)
        glogits.scatter_(-1, ids, (maxx * grad_output).to(maxx.dtype))
        return grad_output, glogits, None


# Source: fla/modules/l2warp.py:L38-L38 (fla 0.4.0)
l2_warp = L2Wrap.apply
