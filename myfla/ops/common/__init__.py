"""Chunked building blocks shared by the delta-rule ops (``fla.ops.common``)."""
