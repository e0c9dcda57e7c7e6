"""RWKV-6 ops (``fla.ops.rwkv6``): only what the RWKV-7 closure reaches is ported, the chunk-local
gate cumsum ``chunk_rwkv6_fwd_cumsum`` of ``fla.ops.rwkv6.chunk`` (used by the DPLR delta rule).
``chunk_rwkv6`` and ``fused_recurrent_rwkv6`` are not part of this port."""
