"""Model-level support of the port (mirrors ``fla.models``): the ``Cache`` the layers use through
``past_key_values`` lives in :mod:`myfla.models.utils`."""
