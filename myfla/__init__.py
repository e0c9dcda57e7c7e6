"""myfla: a pure-PyTorch port of flash-linear-attention (fla) 0.4.0's KimiDeltaAttention and
GatedDeltaNet layers and everything they use. ``myfla.X.Y`` mirrors ``fla.X.Y``."""

__version__ = "0.4.0"
UPSTREAM_VERSION = "0.4.0"
