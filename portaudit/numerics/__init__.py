"""Numeric half of portaudit: implementations behind fla's API, invariants and golden fixtures.

Everything here talks to an implementation only through fla's public API paths
(``fla.ops.kda.chunk.chunk_kda``), resolved by an :class:`~portaudit.numerics.impl.Implementation`:
the port (``myfla``), the real upstream (``fla``, needs CUDA + Triton) or the CPU reference built
from the upstream's own pure-torch oracles (``ref``). Only torch and the standard library are
imported at module level, so the recorder runs on a bare GPU machine. :mod:`.upstream_code`
loads upstream pure-torch code by file path (the oracles); :mod:`.registry` picks an
implementation by name. The commands are in :mod:`portaudit.cli.numerics`.
"""
