"""myfla: a pure-PyTorch port of flash-linear-attention (fla) 0.4.0's KimiDeltaAttention and
GatedDeltaNet layers and everything they use. ``myfla.X.Y`` mirrors ``fla.X.Y``.

``myfla.install_as_fla()`` makes ``import fla`` give myfla in this process, and
``myfla.install_as_causal_conv1d()`` makes ``import causal_conv1d`` give myfla's re-expression of the
causal-conv1d package (see ``myfla.alias``).
"""

# Version scheme: X.Y.Z is the fla release whose API and numerics this port reproduces, .postN the
# N-th release of the port of that fla release. The ``myfla`` distribution's version is read from
# here (distributions/myfla/pyproject.toml), so the two never disagree.
__version__ = "0.4.0.post1"
# The fla release ported (the one every ``Source:`` citation names).
UPSTREAM_VERSION = "0.4.0"

_ALIAS_API = ("active_fla", "install_as_fla", "uninstall_as_fla",
              "active_causal_conv1d", "install_as_causal_conv1d", "uninstall_as_causal_conv1d")
__all__ = list(_ALIAS_API)


def __getattr__(name):
    # imported on first use, so that `python -m myfla.alias` runs the module once
    if name in _ALIAS_API:
        from myfla import alias
        return getattr(alias, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
