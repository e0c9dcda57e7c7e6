"""A static index of one source tree: :mod:`.model` (what is recorded), :mod:`.parse` (libcst, one
module at a time) and :mod:`.tree` (:class:`~.tree.TreeIndex`: lazy parsing, symbol resolution
through re-exports, the on-disk parse cache)."""
