"""Token-mixing layers (mirrors ``fla.layers`` for the layers this port carries)."""
