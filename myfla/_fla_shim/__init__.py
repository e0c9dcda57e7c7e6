"""Directory to put on PYTHONPATH so that ``import fla`` is answered by myfla (see ``myfla.alias``).

It is a package only so that installers ship it; nothing imports it as ``myfla._fla_shim``.
"""
