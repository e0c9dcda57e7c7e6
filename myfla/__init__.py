"""myfla: a pure-PyTorch port of flash-linear-attention (fla) 0.4.0's KimiDeltaAttention and
GatedDeltaNet layers and everything they use. ``myfla.X.Y`` mirrors ``fla.X.Y``.

``myfla.install_as_fla()`` makes ``import fla`` give myfla in this process (see ``myfla.alias``).
"""

__version__ = "0.4.0"
UPSTREAM_VERSION = "0.4.0"

_ALIAS_API = ("active_fla", "install_as_fla", "uninstall_as_fla")
__all__ = list(_ALIAS_API)


def __getattr__(name):
    # imported on first use, so that `python -m myfla.alias` runs the module once
    if name in _ALIAS_API:
        from myfla import alias
        return getattr(alias, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
