"""The configuration of a KDA causal language model."""

from typing import Dict, Optional

from transformers.configuration_utils import PretrainedConfig


class KDAConfig(PretrainedConfig):
    """Configuration of :class:`~myfla.models.kda.KDAModel` / ``KDAForCausalLM`` (``model_type='kda'``).

    The KimiDeltaAttention layers take ``attn_mode``, ``expand_v``, ``head_dim``, ``num_heads``,
    ``num_v_heads``, ``use_short_conv``, ``conv_size``, ``allow_neg_eigval``; the MLP takes
    ``hidden_ratio`` / ``intermediate_size`` / ``hidden_act``. ``attn``, when given, is a dict that
    makes the layers listed in ``attn['layers']`` softmax attention with ``attn['num_heads']`` heads
    (``num_kv_heads`` defaults to it, ``qkv_bias`` to False, ``window_size`` to None, ``rope_theta``
    to 10000). ``fuse_norm`` picks fla's RMSNorm (with the fused residual add) over ``nn.RMSNorm``;
    ``fuse_cross_entropy`` makes training with labels use the fused linear + cross-entropy loss;
    ``use_l2warp`` adds the L2Wrap logit penalty.

    Source: fla/models/kda/configuration_kda.py:L8-L87 (fla 0.4.0)
    """

    model_type = 'kda'
    keys_to_ignore_at_inference = ['past_key_values']

    def __init__(
        self,
        attn_mode: str = "chunk",
        hidden_size: int = 2048,
        expand_v: float = 1.0,
        use_short_conv: bool = True,
        allow_neg_eigval: bool = False,
        conv_size: int = 4,
        head_dim: int = 128,
        num_heads: int = 16,
        num_v_heads: Optional[int] = None,
        max_position_embeddings: int = 2048,
        hidden_ratio: Optional[int] = 4,
        intermediate_size: Optional[int] = None,
        hidden_act: str = "swish",
        num_hidden_layers: int = 24,
        norm_eps: float = 1e-6,
        attn: Optional[Dict] = None,
        use_cache: bool = True,
        pad_token_id: Optional[int] = None,
        bos_token_id: int = 1,
        eos_token_id: int = 2,
        tie_word_embeddings: bool = False,
        initializer_range: float = 0.02,
        fuse_norm: bool = True,
        fuse_swiglu: bool = True,
        fuse_cross_entropy: bool = True,
        use_l2warp: bool = False,
        vocab_size: int = 32000,
        **kwargs
    ):
        self.attn_mode = attn_mode
        self.hidden_size = hidden_size
        self.expand_v = expand_v
        self.use_short_conv = use_short_conv
        self.conv_size = conv_size
        self.head_dim = head_dim
        self.num_heads = num_heads
        self.num_v_heads = num_v_heads
        self.max_position_embeddings = max_position_embeddings

        self.hidden_ratio = hidden_ratio
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.num_hidden_layers = num_hidden_layers
        self.norm_eps = norm_eps
        self.attn = attn
        self.use_cache = use_cache
        self.initializer_range = initializer_range

        self.fuse_norm = fuse_norm
        self.fuse_swiglu = fuse_swiglu
        self.fuse_cross_entropy = fuse_cross_entropy
        self.use_l2warp = use_l2warp
        self.vocab_size = vocab_size
        self.allow_neg_eigval = allow_neg_eigval

        if attn is not None:
            if not isinstance(attn, Dict):
                raise ValueError("attn must be a dictionary")
            if 'layers' not in attn:
                raise ValueError("Layer indices must be provided to initialize hybrid attention layers")
            if 'num_heads' not in attn:
                raise ValueError("Number of heads must be provided to initialize hybrid attention layers")
            attn['num_kv_heads'] = attn.get('num_kv_heads', attn['num_heads'])
            attn['qkv_bias'] = attn.get('qkv_bias', False)
            attn['window_size'] = attn.get('window_size', None)
            attn['rope_theta'] = attn.get('rope_theta', 10000.)

        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
