"""Kimi Delta Attention (KDA) layer: q/k/v projections with short convolutions, a channel-wise
(per key dimension) decay gate from a low-rank projection, the KDA delta rule, and a sigmoid-gated
RMS output norm."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Tuple

import torch
import torch.nn as nn
from einops import rearrange, repeat
from torch.nn import functional as F

from myfla.layers.utils import get_unpad_data, index_first_axis, pad_input
from myfla.modules import FusedRMSNormGated, ShortConvolution
from myfla.ops.kda import chunk_kda, fused_recurrent_kda
from myfla.ops.kda.gate import fused_kda_gate
from myfla.ops.utils.threads import layer_decoding_work, single_threaded_when_small
from myfla.ops.utils.validation import check_layer_inputs

if TYPE_CHECKING:
    from myfla.models.utils import Cache


class KimiDeltaAttention(nn.Module):
    """Kimi Delta Attention token mixer.

    Args:
        hidden_size: model width. Default 2048.
        expand_v: value head width as a multiple of ``head_dim``. Default 1.
        head_dim: query/key head width. Default 128.
        num_heads: query/key heads. Default 16.
        num_v_heads: value heads (``num_heads`` when None); more than ``num_heads`` is grouped value
            attention (GVA), and must then be a multiple of it.
        mode: ``'chunk'`` or ``'fused_recurrent'``. Inputs of at most 64 tokens always use
            ``'fused_recurrent'``, which has no backward (so training needs longer inputs).
        use_short_conv: depthwise causal convolutions on q, k, v (else SiLU only).
        allow_neg_eigval: scale beta to (0, 2) (https://arxiv.org/abs/2411.12537).
        conv_size, conv_bias: short convolution width and bias.
        layer_idx: index of this layer's entry in ``past_key_values``.
        norm_eps: epsilon of the output norm.

    Source: fla/layers/kda.py:L24-L268 (fla 0.4.0)
    """

    def __init__(
        self,
        hidden_size: int = 2048,
        expand_v: float = 1,
        head_dim: int = 128,
        num_heads: int = 16,
        num_v_heads: int = None,
        mode: str = 'chunk',
        use_short_conv: bool = True,
        allow_neg_eigval: bool = False,
        conv_size: int = 4,
        conv_bias: bool = False,
        layer_idx: int = None,
        norm_eps: float = 1e-5,
        **kwargs,
    ) -> KimiDeltaAttention:
        super().__init__()

        self.mode = mode
        self.allow_neg_eigval = allow_neg_eigval
        self.hidden_size = hidden_size
        self.expand_v = expand_v

        self.use_short_conv = use_short_conv
        self.conv_size = conv_size
        self.conv_bias = conv_bias

        self.head_dim = head_dim
        self.num_heads = num_heads
        self.num_v_heads = num_v_heads if num_v_heads is not None else num_heads

        self.head_k_dim = head_dim
        self.head_v_dim = int(self.head_dim * self.expand_v)
        self.key_dim = int(self.num_heads * self.head_k_dim)
        self.value_dim = int(self.num_v_heads * self.head_v_dim)
        self.layer_idx = layer_idx

        # expand_v must give whole numbers of value channels
        if not math.isclose(self.num_v_heads * self.head_dim * expand_v, self.value_dim, rel_tol=1e-5):
            raise ValueError(
                f"expand_v={expand_v} does not produce an integer value when multiplied by key_dim={self.key_dim}. "
                f"Resulting value_dim would be {self.num_v_heads * self.head_dim * expand_v}, which is invalid for nn.Linear.",
            )
        if self.num_v_heads > self.num_heads and self.num_v_heads % self.num_heads != 0:
            raise ValueError(
                f"num_v_heads={self.num_v_heads} must be divisible by num_heads={self.num_heads}.",
            )
        if not math.isclose(head_dim * expand_v, self.head_v_dim, rel_tol=1e-5):
            raise ValueError(
                f"expand_v={expand_v} does not produce an integer value when multiplied by head_dim={head_dim}. "
                f"Resulting head_v_dim would be {head_dim * expand_v}, which is invalid for FusedRMSNormGated.",
            )
        assert mode in ['chunk', 'fused_recurrent'], f"Not supported mode `{mode}`."

        self.q_proj = nn.Linear(hidden_size, self.key_dim, bias=False)
        self.k_proj = nn.Linear(hidden_size, self.key_dim, bias=False)
        self.v_proj = nn.Linear(hidden_size, self.value_dim, bias=False)

        if use_short_conv:
            self.q_conv1d = ShortConvolution(
                hidden_size=self.key_dim,
                kernel_size=conv_size,
                bias=conv_bias,
                activation='silu',
            )
            self.k_conv1d = ShortConvolution(
                hidden_size=self.key_dim,
                kernel_size=conv_size,
                bias=conv_bias,
                activation='silu',
            )
            self.v_conv1d = ShortConvolution(
                hidden_size=self.value_dim,
                kernel_size=conv_size,
                bias=conv_bias,
                activation='silu',
            )

        # low-rank (rank head_v_dim) projection to the per-key-channel gate logits
        self.f_proj = nn.Sequential(
            nn.Linear(hidden_size, self.head_v_dim, bias=False),
            nn.Linear(self.head_v_dim, self.key_dim, bias=False),
        )
        self.b_proj = nn.Linear(hidden_size, self.num_heads, bias=False)

        # per-head decay rate A ~ U(1, 16) stored as log A; gate bias per key channel
        self.A_log = nn.Parameter(torch.log(torch.empty(self.num_heads, dtype=torch.float32).uniform_(1, 16)))
        self.dt_bias = nn.Parameter(torch.zeros(self.key_dim, dtype=torch.float32))

        # low-rank output gate
        self.g_proj = nn.Sequential(
            nn.Linear(hidden_size, self.head_v_dim, bias=False),
            nn.Linear(self.head_v_dim, self.value_dim, bias=True),
        )
        self.o_norm = FusedRMSNormGated(self.head_v_dim, activation='sigmoid', eps=norm_eps)
        self.o_proj = nn.Linear(self.value_dim, hidden_size, bias=False)

    # decoding calls of a small layer run on one intra-op thread (myfla/ops/utils/threads.py)
    @single_threaded_when_small(layer_decoding_work)
    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool | None = False,
        output_attentions: bool | None = False,
        **kwargs,
    ) -> Tuple[torch.Tensor, torch.Tensor | None, Cache | None]:
        """Mix ``hidden_states`` ``[B, T, hidden_size]``; returns ``(o, None, past_key_values)``.

        ``attention_mask`` ``[B, T]`` (0 = padding) unpads the batch into one varlen sequence;
        ``kwargs['cu_seqlens']`` passes varlen boundaries for ``B == 1`` inputs directly. With
        ``past_key_values`` the layer resumes from, and stores, its conv and recurrent states.
        """
        if attention_mask is not None:
            assert len(attention_mask.shape) == 2, (
                "Expected attention_mask as a 0-1 matrix with shape [batch_size, seq_len] "
                "for padding purposes (0 indicating padding). "
                "Arbitrary attention masks of shape [batch_size, seq_len, seq_len] are not allowed."
            )
        check_layer_inputs(hidden_states, attention_mask, kwargs.get('cu_seqlens'))

        batch_size, q_len, _ = hidden_states.shape
        # short inputs (decoding) take the recurrent kernel
        mode = 'fused_recurrent' if q_len <= 64 else self.mode
        if self.training:
            assert mode == 'chunk', "Only chunk mode is supported in training."

        last_state = None
        if past_key_values is not None and len(past_key_values) > self.layer_idx:
            last_state = past_key_values[self.layer_idx]

        cu_seqlens = kwargs.get('cu_seqlens')
        if attention_mask is not None:
            indices, cu_seqlens, _ = get_unpad_data(attention_mask[:, -q_len:])
            hidden_states = index_first_axis(rearrange(hidden_states, "b s ... -> (b s) ..."), indices).unsqueeze(0)

        if self.use_short_conv:
            conv_state_q, conv_state_k, conv_state_v = None, None, None
            if last_state is not None:
                conv_state_q, conv_state_k, conv_state_v = last_state['conv_state']
            q, conv_state_q = self.q_conv1d(
                x=self.q_proj(hidden_states),
                cache=conv_state_q,
                output_final_state=use_cache,
                cu_seqlens=cu_seqlens,
            )
            k, conv_state_k = self.k_conv1d(
                x=self.k_proj(hidden_states),
                cache=conv_state_k,
                output_final_state=use_cache,
                cu_seqlens=cu_seqlens,
            )
            v, conv_state_v = self.v_conv1d(
                x=self.v_proj(hidden_states),
                cache=conv_state_v,
                output_final_state=use_cache,
                cu_seqlens=cu_seqlens,
            )
        else:
            q = F.silu(self.q_proj(hidden_states))
            k = F.silu(self.k_proj(hidden_states))
            v = F.silu(self.v_proj(hidden_states))

        # g: fp32 [B, T, num_heads, head_k_dim] log decays
        g = self.f_proj(hidden_states)
        g = fused_kda_gate(g, self.A_log, self.head_k_dim, g_bias=self.dt_bias)
        beta = self.b_proj(hidden_states).sigmoid()

        q, k = (rearrange(x, '... (h d) -> ... h d', d=self.head_k_dim) for x in (q, k))
        v = rearrange(v, '... (h d) -> ... h d', d=self.head_v_dim)

        if self.num_v_heads > self.num_heads:
            # GVA: each query/key head serves num_v_heads // num_heads consecutive value heads.
            # Deviation: fla 0.4.0 repeats only q and k, leaving g and beta with num_heads heads, which
            # the kernels cannot pair with num_v_heads value heads; fla 0.4.1 repeats g and beta too.
            groups = self.num_v_heads // self.num_heads
            q, k, g = (repeat(x, '... h d -> ... (h g) d', g=groups) for x in (q, k, g))
            beta = repeat(beta, '... h -> ... (h g)', g=groups)

        if self.allow_neg_eigval:
            beta = beta * 2.

        recurrent_state = last_state['recurrent_state'] if last_state is not None else None
        if mode == 'chunk':
            o, recurrent_state = chunk_kda(
                q=q,
                k=k,
                v=v,
                g=g,
                beta=beta,
                initial_state=recurrent_state,
                output_final_state=use_cache,
                use_qk_l2norm_in_kernel=True,
                cu_seqlens=cu_seqlens,
            )
        elif mode == 'fused_recurrent':
            o, recurrent_state = fused_recurrent_kda(
                q=q,
                k=k,
                v=v,
                g=g,
                beta=beta,
                initial_state=recurrent_state,
                output_final_state=use_cache,
                use_qk_l2norm_in_kernel=True,
                cu_seqlens=cu_seqlens,
            )
        else:
            # reachable only when `mode` is reassigned after construction (fla raises the same)
            raise NotImplementedError(f"Not supported mode `{mode}`.")

        if past_key_values is not None:
            past_key_values.update(
                recurrent_state=recurrent_state,
                conv_state=(conv_state_q, conv_state_k, conv_state_v) if self.use_short_conv else None,
                layer_idx=self.layer_idx,
                offset=q_len,
            )

        o = self.o_norm(o, rearrange(self.g_proj(hidden_states), '... (h d) -> ... h d', d=self.head_v_dim))
        o = rearrange(o, 'b t h d -> b t (h d)')
        o = self.o_proj(o)
        if attention_mask is not None:
            o = pad_input(o.squeeze(0), indices, batch_size, q_len)

        return o, None, past_key_values
