"""Directory to put on PYTHONPATH so that ``import causal_conv1d`` is answered by myfla (see
``myfla.alias``).

It is a package only so that installers ship it; nothing imports it as ``myfla._causal_conv1d_shim``.
"""
