"""The ``causal_conv1d`` package of myfla's PYTHONPATH shim: hands ``import causal_conv1d`` to
``myfla.alias``, which replaces this module in ``sys.modules`` with ``myfla._causal_conv1d`` (or with
a real causal_conv1d that can run; ``MYFLA_AS_CAUSAL_CONV1D`` = ``auto`` | ``force`` | ``off``)."""

from myfla.alias import activate_causal_conv1d_from_shim

activate_causal_conv1d_from_shim(__name__)
