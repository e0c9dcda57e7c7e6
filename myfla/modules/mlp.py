"""The gated MLP of fla's models: ``down_proj(swish(gate_proj(x)) * up_proj(x))``.

With ``fuse_swiglu`` the activation and ``down_proj`` run as one autograd function
(:func:`myfla.modules.activations.swiglu_linear`), which recomputes the activation in the backward
pass instead of saving it, as fla's does. ``SwiGLULinearParallel`` is fla's tensor-parallel plan for
that fused function (DTensor; needs ``torch.distributed.tensor``).
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from myfla.modules.activations import swiglu, swiglu_fwd, swiglu_linear
from myfla.ops.utils.calls import autograd_records

try:
    from torch.distributed import DeviceMesh
    from torch.distributed.tensor import Placement, Replicate, Shard, distribute_module
    from torch.distributed.tensor.parallel import ParallelStyle
except (ImportError, AttributeError):
    # torch without DTensor (public from torch 2.4): only the tensor-parallel plan is unavailable
    DeviceMesh = Placement = Replicate = Shard = distribute_module = None
    ParallelStyle = object

try:
    from torch.distributed.tensor import DTensor
except (ImportError, AttributeError):
    DTensor = None

if TYPE_CHECKING:
    from transformers.processing_utils import Unpack


class GatedMLP(nn.Module):
    """SwiGLU feed-forward block.

    ``intermediate_size`` defaults to ``hidden_size * hidden_ratio * 2 / 3`` rounded up to a multiple
    of 256 (so the parameter count is about ``hidden_ratio * hidden_size^2``); ``hidden_ratio``
    defaults to 4. Only ``hidden_act='swish'`` is supported.

    Source: fla/modules/mlp.py:L26-L69 (fla 0.4.0)
    """

    def __init__(
        self,
        hidden_size: int,
        hidden_ratio: Optional[int] = None,
        intermediate_size: Optional[int] = None,
        hidden_act: str = 'swish',
        fuse_swiglu: bool = True
    ) -> GatedMLP:
        super().__init__()

        self.hidden_size = hidden_size
        if hidden_ratio is None:
            hidden_ratio = 4
        if intermediate_size is None:
            intermediate_size = int(hidden_size * hidden_ratio * 2 / 3)
            intermediate_size = 256 * ((intermediate_size + 256 - 1) // 256)
        self.hidden_ratio = hidden_ratio
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.fuse_swiglu = fuse_swiglu

        if hidden_act != 'swish':
            raise ValueError(f'Unsupported hidden_act: {hidden_act}')

        self.gate_proj = nn.Linear(self.hidden_size, self.intermediate_size, bias=False)
        self.up_proj = nn.Linear(self.hidden_size, self.intermediate_size, bias=False)
        self.down_proj = nn.Linear(self.intermediate_size, self.hidden_size, bias=False)
        if self.fuse_swiglu:
            self.swiglu_linear = SwiGLULinear()

    def forward(
        self,
        x: torch.Tensor,
        **kwargs: Unpack[Any]
    ) -> torch.Tensor:
        gate, y = self.gate_proj(x), self.up_proj(x)
        if self.fuse_swiglu:
            return self.swiglu_linear(gate, y, self.down_proj.weight, self.down_proj.bias)
        return self.down_proj(swiglu(gate, y))


class SwiGLULinear(nn.Module):
    """``swiglu_linear`` as a module (so a tensor-parallel plan can attach to it).

    Source: fla/modules/mlp.py:L72-L75 (fla 0.4.0)
    """

    def forward(self, x, y, weight, bias):
        records = autograd_records(x, y, weight, bias)
        if not records and type(x) is torch.Tensor and type(y) is torch.Tensor:
            # nothing for autograd to record (decoding): the Function's forward without its per-call
            # cost, about a third of a one-token call's
            return F.linear(swiglu_fwd(x, y), weight, bias)
        return swiglu_linear(x, y, weight, bias)


class SwiGLULinearParallel(ParallelStyle):
    """Tensor-parallel plan for :class:`SwiGLULinear`: ``x``/``y`` sharded on the last dim, the
    weight sharded on its input dim (row-wise), the partial outputs reduced to ``output_layouts``
    (replicated by default).

    Source: fla/modules/mlp.py:L78-L132 (fla 0.4.0)
    """

    def __init__(
        self,
        *,
        input_layouts: Optional[Placement] = None,
        output_layouts: Optional[Placement] = None,
        use_local_output: bool = True,
    ):
        if ParallelStyle is object:
            raise ImportError("SwiGLULinearParallel needs DTensor tensor parallelism (torch.distributed.tensor, "
                              "torch >= 2.4), which this torch does not provide")
        super().__init__()
        self.input_layouts = (input_layouts or Shard(-1),)
        self.output_layouts = (output_layouts or Replicate(),)
        self.desired_input_layouts = (Shard(-1),)
        self.use_local_output = use_local_output

    @staticmethod
    def _prepare_input_fn(
        input_layouts, desired_input_layouts, mod, inputs, device_mesh
    ):
        x, y, weight, bias = inputs
        if not isinstance(x, DTensor):
            x = DTensor.from_local(x, device_mesh, input_layouts, run_check=False)
        if x.placements != desired_input_layouts:
            x = x.redistribute(placements=desired_input_layouts, async_op=True)

        if not isinstance(y, DTensor):
            y = DTensor.from_local(y, device_mesh, input_layouts, run_check=False)
        if y.placements != desired_input_layouts:
            y = y.redistribute(placements=desired_input_layouts, async_op=True)

        if not isinstance(weight, DTensor):
            weight = DTensor.from_local(weight, device_mesh, (Shard(1),))

        if bias is not None and not isinstance(bias, DTensor):
            bias = DTensor.from_local(bias, device_mesh, (Replicate(),))

        return x, y, weight, bias

    @staticmethod
    def _prepare_output_fn(output_layouts, use_local_output, mod, outputs, device_mesh):
        # row-wise sharding leaves partial sums: all-reduce to Replicate, reduce-scatter to Shard
        if outputs.placements != output_layouts:
            outputs = outputs.redistribute(placements=output_layouts, async_op=True)
        return outputs.to_local() if use_local_output else outputs

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        return distribute_module(
            module,
            device_mesh,
            partition_fn=None,
            input_fn=partial(self._prepare_input_fn, self.input_layouts, self.desired_input_layouts),
            output_fn=partial(self._prepare_output_fn, self.output_layouts, self.use_local_output)
        )
