"""RWKV-7 language models: a stack of RWKV7Attention (time mixing; or, where ``config.attn`` says so,
softmax attention) + RWKV-7 feed-forward (channel mixing) blocks, as a transformers
``PreTrainedModel``. The blocks hand each other ``v_first``, the values of layer 0 that every later
layer mixes into its own (RWKV-7's value residual)."""

from __future__ import annotations

import inspect
import math
import warnings
from typing import TYPE_CHECKING, Dict, Optional, Tuple, Union

import torch
import torch.nn as nn
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import PreTrainedModel
from transformers.utils import logging
from transformers.utils.deprecation import deprecate_kwarg

from myfla.layers.attn import Attention
from myfla.layers.rwkv7 import RWKV7Attention
from myfla.models.compat import tied_lm_head_keys
from myfla.models.rwkv7.configuration_rwkv7 import RWKV7Config
from myfla.models.utils import Cache, FLAGenerationMixin
from myfla.modules import FusedCrossEntropyLoss, FusedLinearCrossEntropyLoss, LayerNorm
from myfla.modules.activations import ACT2FN
from myfla.modules.l2warp import l2_warp
from myfla.modules.token_shift import token_shift

if TYPE_CHECKING:
    from transformers.processing_utils import Unpack

try:
    from transformers.modeling_layers import GradientCheckpointingLayer
except ImportError:
    from myfla.models.modeling_layers import GradientCheckpointingLayer

# Source: fla/models/rwkv7/modeling_rwkv7.py:L34-L34 (fla 0.4.0)
logger = logging.get_logger(__name__)


class _LayerNormWithoutBiasSwitch(nn.LayerNorm):
    """Port-only: ``torch.nn.LayerNorm`` for torch < 2.1, which has no ``bias`` argument; with
    ``bias=False`` the module has no bias parameter, as on newer torch (same state_dict keys)."""

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True,
                 device=None, dtype=None):
        super().__init__(normalized_shape, eps=eps, elementwise_affine=elementwise_affine, device=device, dtype=dtype)
        if not bias:
            self.register_parameter('bias', None)

    def reset_parameters(self) -> None:
        if self.elementwise_affine:
            nn.init.ones_(self.weight)
            if self.bias is not None:
                nn.init.zeros_(self.bias)


# the LayerNorm used when fuse_norm=False: torch's own, or the stand-in where it lacks `bias`
TorchLayerNorm = nn.LayerNorm if 'bias' in inspect.signature(nn.LayerNorm.__init__).parameters \
    else _LayerNormWithoutBiasSwitch


def _norm(config: RWKV7Config) -> nn.Module:
    return (LayerNorm if config.fuse_norm else TorchLayerNorm)(
        config.hidden_size,
        bias=config.norm_bias,
        eps=config.norm_eps
    )


class RWKV7FeedForward(nn.Module):
    """RWKV-7 channel mixing: ``value(act(key(x + (x_prev - x) * x_k)))``, with ``x_prev`` the previous
    token's input (token shift; carried across calls as the cache's ``ffn_state``). Padding positions
    (``attention_mask`` 0) are zeroed first.

    Initialised as RWKV-7's ``CMix_x070``: ``x_k = 1 - (i / hidden_size) ** ((1 - layer_idx /
    num_hidden_layers) ** 4)`` per channel ``i``, an orthogonal ``key`` and a zero ``value``. Every
    submodule is marked ``_in_rwkv_module`` so the model's ``_init_weights`` leaves it alone.

    Source: fla/models/rwkv7/modeling_rwkv7.py:L37-L110 (fla 0.4.0)
    """

    def __init__(
        self,
        hidden_size: int,
        hidden_ratio: Optional[int] = None,
        intermediate_size: Optional[int] = None,
        hidden_act: str = 'sqrelu',
        layer_idx: int = None,
        num_hidden_layers: int = None,
    ) -> RWKV7FeedForward:
        super().__init__()

        self.hidden_size = hidden_size
        if hidden_ratio is None:
            hidden_ratio = 4
        if intermediate_size is None:
            # hidden_size * hidden_ratio, rounded up to a multiple of 32
            intermediate_size = int(hidden_size * hidden_ratio)
            intermediate_size = 32 * ((intermediate_size + 32 - 1) // 32)
        self.hidden_ratio = hidden_ratio
        self.intermediate_size = intermediate_size

        self.time_shift = nn.ZeroPad2d((0, 0, 1, -1))

        self.x_k = nn.Parameter(torch.zeros(hidden_size))

        self.key = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.value = nn.Linear(intermediate_size, hidden_size, bias=False)
        self.act_fn = ACT2FN[hidden_act]

        self.layer_idx = layer_idx
        self.num_hidden_layers = num_hidden_layers

        # transformers 4.x turns initialisation off (this flag False) while loading pretrained weights
        try:
            from transformers.modeling_utils import _init_weights
        except ImportError:
            _init_weights = True
        if _init_weights:
            self.apply(self._initialize_weights)
        for name, module in self.named_modules():
            module._in_rwkv_module = True

    def _initialize_weights(self, module: nn.Module):
        if isinstance(module, RWKV7FeedForward):
            with torch.no_grad():
                depth = 1.0 - (module.layer_idx / module.num_hidden_layers)      # 1 at layer 0, ~0 at the top
                # channel position i / hidden_size, rounded to fp32 from the exact quotient
                position = (torch.arange(module.hidden_size, dtype=torch.float64) / module.hidden_size).float()
                module.x_k.data = 1.0 - torch.pow(position, depth ** 4)

            # the key's orthogonal init is drawn in fp32 whatever the weight's dtype
            original_dtype = module.key.weight.dtype
            module.key.weight.data = nn.init.orthogonal_(module.key.weight.data.to(torch.float32)).to(original_dtype)
            module.value.weight.data.zero_()

    def forward(
        self,
        x: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        state: Optional[Cache] = None,
        cu_seqlens: Optional[torch.LongTensor] = None,
        **kwargs
    ) -> torch.Tensor:
        if attention_mask is not None:
            x = x.mul(attention_mask[:, -x.shape[-2]:, None])
        if state is not None:
            delta, ffn_state = token_shift(x, cu_seqlens, cache=state[self.layer_idx]['ffn_state'], output_cache=True)
            # the attention layer of this block has already advanced the cache's token count
            state.update(ffn_state=ffn_state, layer_idx=self.layer_idx, offset=0)
        else:
            delta, ffn_state = token_shift(x, cu_seqlens, output_cache=True)
        return self.value(self.act_fn(self.key(x.addcmul(delta, self.x_k)))), state


class RWKV7Block(GradientCheckpointingLayer):
    """Pre-norm block: ``h = x + time_mix(norm(x))``, ``out = h + channel_mix(norm(h))``; layer 0 of a
    ``norm_first`` model first normalises its input (``pre_norm``), which then is the residual. The time
    mixer is RWKV7Attention, or softmax :class:`Attention` for the layers in ``config.attn['layers']``.
    With ``fuse_norm`` the norms are fla's LayerNorm (the second also doing the residual add),
    else ``torch.nn.LayerNorm``. Returns ``(hidden_states, attentions, past_key_values, v_first)``.

    As in fla 0.4.0 (and 0.6.0), the block unpacks four values from its time mixer, while
    :class:`Attention` returns three: a model with ``config.attn`` layers builds and loads, and its
    forward raises fla's ``ValueError: not enough values to unpack (expected 4, got 3)``.

    Deviation: with ``fuse_norm=False`` on torch < 2.1, whose ``nn.LayerNorm`` has no ``bias``
    argument, the norms are a subclass that takes it (same parameters and numbers).

    Source: fla/models/rwkv7/modeling_rwkv7.py:L113-L213 (fla 0.4.0)
    """

    def __init__(
        self,
        config: RWKV7Config,
        layer_idx: int
    ) -> RWKV7Block:
        super().__init__()

        self.config = config
        self.layer_idx = layer_idx

        if config.norm_first and layer_idx == 0:
            self.pre_norm = _norm(config)
        self.attn_norm = _norm(config)
        if config.attn is not None and layer_idx in config.attn['layers']:
            self.attn = Attention(
                hidden_size=config.hidden_size,
                num_heads=config.attn['num_heads'],
                num_kv_heads=config.attn['num_kv_heads'],
                qkv_bias=config.attn['qkv_bias'],
                window_size=config.attn['window_size'],
                rope_theta=config.attn['rope_theta'],
                max_position_embeddings=config.max_position_embeddings,
                layer_idx=layer_idx
            )
        else:
            self.attn = RWKV7Attention(
                mode=config.attn_mode,
                hidden_size=config.hidden_size,
                head_dim=config.head_dim,
                num_heads=config.num_heads,
                decay_low_rank_dim=config.decay_low_rank_dim,
                gate_low_rank_dim=config.gate_low_rank_dim,
                a_low_rank_dim=config.a_low_rank_dim,
                v_low_rank_dim=config.v_low_rank_dim,
                norm_eps=config.norm_eps,
                fuse_norm=config.fuse_norm,
                layer_idx=layer_idx,
                value_dim=config.value_dim[layer_idx],
                num_hidden_layers=config.num_hidden_layers
            )
        self.ffn_norm = _norm(config)
        self.ffn = RWKV7FeedForward(
            hidden_size=config.hidden_size,
            hidden_ratio=config.hidden_ratio,
            intermediate_size=config.intermediate_size,
            hidden_act=config.hidden_act,
            layer_idx=layer_idx,
            num_hidden_layers=config.num_hidden_layers
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        past_key_values: Optional[Cache] = None,
        use_cache: Optional[bool] = False,
        output_attentions: Optional[bool] = False,
        v_first: torch.Tensor = None,
        cu_seqlens: Optional[torch.LongTensor] = None,
        **kwargs,
    ) -> Tuple[torch.FloatTensor, Optional[Tuple[torch.FloatTensor, torch.FloatTensor]]]:
        residual = self.pre_norm(hidden_states) if hasattr(self, 'pre_norm') else hidden_states
        hidden_states = self.attn_norm(residual)
        hidden_states, attentions, past_key_values, v_first = self.attn(
            hidden_states=hidden_states,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            use_cache=use_cache,
            output_attentions=output_attentions,
            v_first=v_first,
            cu_seqlens=cu_seqlens,
            **kwargs
        )
        if self.config.fuse_norm:
            hidden_states, residual = self.ffn_norm(hidden_states, residual, True)
        else:
            hidden_states = residual + hidden_states
            residual = hidden_states
            hidden_states = self.ffn_norm(hidden_states)
        hidden_states, past_key_values = self.ffn(
            hidden_states, attention_mask, past_key_values, cu_seqlens, **kwargs
        )
        hidden_states = residual + hidden_states

        outputs = (hidden_states, attentions, past_key_values, v_first)

        return outputs


class RWKV7PreTrainedModel(PreTrainedModel):
    """Weight initialisation and the transformers plumbing shared by the RWKV-7 models.

    Source: fla/models/rwkv7/modeling_rwkv7.py:L216-L278 (fla 0.4.0)
    """

    config_class = RWKV7Config
    base_model_prefix = 'model'
    supports_gradient_checkpointing = True
    _no_split_modules = ['RWKV7Block']
    _supports_cache_class = True
    _skip_keys_device_placement = ["past_key_values"]

    def __init__(self, *inputs, **kwargs):
        super().__init__(*inputs, **kwargs)

    @torch.no_grad()
    def _init_weights(
        self,
        module: nn.Module,
        rescale_prenorm_residual: bool = True,
        num_residuals_per_layer: int = 2,
    ):
        """RWKV-7's scheme (BlinkDL's RWKV-LM ``RWKV-v7/train_temp/src/model.py``): embeddings
        ``U(-1e-4, 1e-4)``; the LM head orthogonal with gain ``0.5 * sqrt(vocab / hidden)`` (0.5 when
        the vocabulary is not larger); linear and conv layers outside the RWKV modules (softmax
        attention) ``N(0, initializer_range)`` with zero biases; other modules outside them their own
        ``reset_parameters`` (the RWKV modules initialise themselves). With
        ``rescale_prenorm_residual``, every ``o_proj`` / ``down_proj`` weight is re-drawn (Kaiming
        uniform) and divided by ``sqrt(num_residuals_per_layer * num_hidden_layers)`` (GPT-2's
        residual scaling)."""
        if isinstance(module, nn.Embedding):
            scale = -1e-4
            nn.init.uniform_(module.weight, a=scale, b=-scale)
        elif isinstance(module, nn.Linear) and hasattr(self, 'lm_head') and module is self.lm_head:
            if self.config.vocab_size > self.config.hidden_size:
                scale = 0.5 * math.sqrt(self.config.vocab_size / self.config.hidden_size)
            else:
                scale = 0.5
            original_dtype = module.weight.dtype
            module.weight.data = nn.init.orthogonal_(module.weight.data.to(torch.float32), gain=scale).to(original_dtype)
        elif isinstance(module, (nn.Linear, nn.Conv1d)) and getattr(module, '_in_rwkv_module', False) is False:
            # a plain normal, not TF's truncated normal (cf. https://github.com/pytorch/pytorch/pull/5617)
            nn.init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Parameter):
            nn.init.normal_(module, mean=0.0, std=self.config.initializer_range)
        elif hasattr(module, 'reset_parameters') and getattr(module, '_in_rwkv_module', False) is False:
            module.reset_parameters()

        if rescale_prenorm_residual:
            # GPT-2's scheme for the residual path (https://openai.com/blog/better-language-models/,
            # Megatron-LM's gpt_model.py): scale the residual projections by 1/sqrt(N residual layers);
            # re-drawn rather than scaled in place, since this may run more than once
            p = None
            if hasattr(module, 'o_proj'):
                p = module.o_proj.weight
            elif hasattr(module, 'down_proj'):
                p = module.down_proj.weight
            if p is not None:
                nn.init.kaiming_uniform_(p, a=math.sqrt(5))
                with torch.no_grad():
                    p /= math.sqrt(num_residuals_per_layer * self.config.num_hidden_layers)


class RWKV7Model(RWKV7PreTrainedModel):
    """Embeddings, the RWKV-7 blocks and a final LayerNorm; returns the last hidden states and the
    cache.

    Deviation: under gradient checkpointing the blocks get ``v_first`` positionally
    (``_checkpointed_block``), so that reentrant checkpointing finishes.

    Source: fla/models/rwkv7/modeling_rwkv7.py:L281-L425 (fla 0.4.0)
    """

    def __init__(self, config: RWKV7Config):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size

        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList([RWKV7Block(config, layer_idx) for layer_idx in range(config.num_hidden_layers)])
        self.norm = _norm(config)

        self.gradient_checkpointing = False

        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings

    def set_input_embeddings(self, value):
        self.embeddings = value

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """``nn.Module.load_state_dict`` after migrating version-1 RWKV7Attention weights: for every
        ``model.layers.{i}.attn.x_x`` (the six token-shift mixes stacked) the entry gains
        ``x_r, x_w, x_k, x_v, x_a, x_g`` ``[1, 1, hidden]`` (``x_x[0]`` ... ``x_x[5]``) next to it, in
        the given dict. As in fla, only keys with the ``model.`` prefix (a causal LM's) are looked at,
        and nothing is returned."""
        layer_indices = set()
        for key in state_dict.keys():
            if key.startswith("model.layers."):
                try:
                    layer_idx = int(key.split(".")[2])
                    layer_indices.add(layer_idx)
                except ValueError:
                    continue

        for layer_idx in sorted(layer_indices):
            attn_prefix = f"model.layers.{layer_idx}.attn"
            if f"{attn_prefix}.x_x" in state_dict:
                logger.info(f"Migrating weights for layer {layer_idx} from RWKV7Attention version 1 to version 2...")
                x_x = state_dict[f"{attn_prefix}.x_x"]
                with torch.no_grad():
                    for i, name in enumerate(("x_r", "x_w", "x_k", "x_v", "x_a", "x_g")):
                        state_dict[f"{attn_prefix}.{name}"] = x_x[i].unsqueeze(0).unsqueeze(0)

        try:
            super().load_state_dict(state_dict, strict=strict, assign=assign)
        except TypeError:
            # torch < 2.1: no `assign`
            logger.warning(
                "`assign` parameter is not supported by the parent `load_state_dict` method. "
                "Falling back to default behavior."
            )
            super().load_state_dict(state_dict, strict=strict)

    @staticmethod
    def _checkpointed_block(layer, hidden_states, attention_mask, past_key_values, use_cache,
                            output_attentions, v_first, cu_seqlens, **kwargs):
        """A block call under gradient checkpointing with ``v_first`` passed positionally, so that it
        is an input of the checkpoint (fla's ``GradientCheckpointingLayer`` asks tensors that need
        gradients to be positional; fla 0.4.0 and 0.6.0 pass ``v_first`` by keyword). By keyword, a
        reentrant checkpoint (``use_reentrant=True``, transformers 4's default) closes over it: every
        block after the first returns that very tensor, the checkpoint rewires it to its own backward
        node, and that block's recomputation in the backward then reaches its own node again, nesting
        backward passes without end (it took all of a 24 GiB machine's memory). Caching is turned off
        as the block's own checkpointing turns it off (the same warning)."""
        if use_cache or past_key_values is not None:
            turned_off = (" `use_cache=False`," if use_cache else "") + (
                " `past_key_values=None`," if past_key_values is not None else "")
            logger.warning_once(f"Caching is incompatible with gradient checkpointing in "
                                f"{layer.__class__.__name__}. Setting{turned_off.rstrip(',')}.")
        return layer(hidden_states, attention_mask, None, False, output_attentions, v_first,
                     cu_seqlens=cu_seqlens, **kwargs)

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,  # noqa
        inputs_embeds: Optional[torch.FloatTensor] = None,
        past_key_values: Optional[Cache] = None,
        use_cache: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        cu_seqlens: Optional[torch.LongTensor] = None,
        **kwargs: Unpack[Dict]
    ) -> Union[Tuple, BaseModelOutputWithPast]:
        """``input_ids`` ``[B, T]`` (or ``inputs_embeds`` ``[B, T, hidden]``), an optional ``[B, T]``
        0/1 padding mask, a cache to continue from, and ``cu_seqlens`` for packed sequences
        (``B == 1``). Attention weights are never returned."""
        if output_attentions:
            warnings.warn("`RWKV7Model` does not `output_attentions` now, setting it to `False`.")
            output_attentions = False
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        use_cache = use_cache if use_cache is not None else (self.config.use_cache if not self.training else False)
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict

        if input_ids is not None and inputs_embeds is not None:
            raise ValueError("You cannot specify both input_ids and inputs_embeds at the same time")
        if input_ids is None and inputs_embeds is None:
            raise ValueError("You have to specify either input_ids or inputs_embeds")

        if inputs_embeds is None:
            inputs_embeds = self.embeddings(input_ids)
        hidden_states = inputs_embeds

        if use_cache and not isinstance(past_key_values, Cache):
            past_key_values = Cache.from_legacy_cache(past_key_values)

        all_hidden_states = () if output_hidden_states else None
        all_attns = () if output_attentions else None

        # layer 0 replaces it with its values, which every later layer mixes in
        v_first = torch.zeros_like(hidden_states)
        for layer in self.layers:
            if output_hidden_states:
                all_hidden_states += (hidden_states,)

            if getattr(layer, 'gradient_checkpointing', False) and layer.training and torch.is_grad_enabled():
                hidden_states, attentions, past_key_values, v_first = self._checkpointed_block(
                    layer, hidden_states, attention_mask, past_key_values, use_cache, output_attentions, v_first,
                    cu_seqlens, **kwargs
                )
            else:
                hidden_states, attentions, past_key_values, v_first = layer(
                    hidden_states,
                    attention_mask=attention_mask,
                    past_key_values=past_key_values,
                    use_cache=use_cache,
                    output_attentions=output_attentions,
                    v_first=v_first,
                    cu_seqlens=cu_seqlens,
                    **kwargs
                )

            if output_attentions:
                all_attns += (attentions,)

        hidden_states = self.norm(hidden_states)

        # the last block's output, normalised
        if output_hidden_states:
            all_hidden_states += (hidden_states,)

        if not return_dict:
            return tuple(i for i in [hidden_states, past_key_values, all_hidden_states, all_attns] if i is not None)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            past_key_values=past_key_values,
            hidden_states=all_hidden_states,
            attentions=all_attns
        )


class RWKV7ForCausalLM(RWKV7PreTrainedModel, FLAGenerationMixin):
    """:class:`RWKV7Model` with a language-model head. Given ``labels`` ``[B, T]`` (shifted left inside
    ``forward``; ``-100`` ignored) or ``shift_labels`` (already aligned with the positions), the loss is
    the fused linear + cross-entropy loss with ``fuse_linear_cross_entropy`` (the logits are then not
    returned), else the fused cross entropy (``fuse_cross_entropy``, in-place backward) or
    ``nn.CrossEntropyLoss`` on the logits, with the L2Wrap penalty when ``use_l2warp``.

    Deviation: ``_tied_weights_keys`` is the mapping transformers 5 reads (fla 0.6.0) and fla's list
    before it (fla 0.4.0's list fails to build a tied model under transformers 5).

    Source: fla/models/rwkv7/modeling_rwkv7.py:L428-L547 (fla 0.4.0)
    """

    _tied_weights_keys = tied_lm_head_keys()

    def __init__(self, config):
        super().__init__(config)
        self.model = RWKV7Model(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.criterion = None

        self.post_init()

    def get_input_embeddings(self):
        return self.model.embeddings

    def set_input_embeddings(self, value):
        self.model.embeddings = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def set_decoder(self, decoder):
        self.model = decoder

    def get_decoder(self):
        return self.model

    def generate(self, *args, **kwargs):
        try:
            return super().generate(*args, **kwargs)
        except AttributeError as exception:
            if 'past_key_values' in str(exception):
                raise AttributeError(
                    f"You tried to call `generate` with a decoding strategy that manipulates `past_key_values`, "
                    f"which is not supported for {self.__class__.__name__}. "
                    f"Try another generation strategy instead. "
                    f"For the available generation strategies, check this doc: "
                    f"https://huggingface.co/docs/transformers/en/generation_strategies#decoding-strategies"
                )
            else:
                raise exception

    @deprecate_kwarg("num_logits_to_keep", version="4.50", new_name="logits_to_keep")
    def forward(
        self,
        input_ids: torch.LongTensor = None,
        attention_mask: Optional[torch.Tensor] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        past_key_values: Optional[Cache] = None,
        labels: Optional[torch.LongTensor] = None,
        shift_labels: Optional[torch.LongTensor] = None,
        use_cache: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        logits_to_keep: Optional[int] = 0,
        **kwargs: Unpack[Dict]
    ) -> Union[Tuple, CausalLMOutputWithPast]:
        """Logits of the last ``logits_to_keep`` positions (all when 0) and, given labels, the
        next-token loss."""
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict

        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            past_key_values=past_key_values,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=return_dict,
            **kwargs
        )

        hidden_states = outputs[0]

        loss, logits = None, None
        has_labels = (labels is not None) or (shift_labels is not None)
        if not (self.config.fuse_linear_cross_entropy and has_labels):
            logits = self.lm_head(hidden_states if logits_to_keep is None else hidden_states[:, -logits_to_keep:])
        if has_labels:
            if getattr(self, 'criterion', None) is None:
                if self.config.fuse_linear_cross_entropy:
                    criterion = FusedLinearCrossEntropyLoss(use_l2warp=self.config.use_l2warp)
                elif self.config.fuse_cross_entropy:
                    criterion = FusedCrossEntropyLoss(inplace_backward=True)
                else:
                    criterion = nn.CrossEntropyLoss()
            else:
                criterion = self.criterion

            # predict token t + 1 at position t; the last position has no target
            # (shift_labels: https://github.com/huggingface/transformers/pull/36607)
            if shift_labels is None:
                shift_labels = torch.cat((labels[..., 1:], torch.full_like(labels[:, :1], criterion.ignore_index)), 1)
            shift_labels = shift_labels.to(hidden_states.device)

            if self.config.fuse_linear_cross_entropy:
                loss = criterion(hidden_states, shift_labels, self.lm_head.weight, self.lm_head.bias)
            else:
                loss = criterion(logits.view(shift_labels.numel(), -1), shift_labels.view(-1))
                loss = l2_warp(loss, logits) if self.config.use_l2warp else loss

        if not return_dict:
            output = (logits,) + outputs[1:]
            return (loss,) + output if loss is not None else output

        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
