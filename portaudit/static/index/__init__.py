"""A static index of a source tree: :mod:`.tree` (lazy, cached) built by :mod:`.parse` (libcst)."""
