"""The ``fla`` package of myfla's PYTHONPATH shim: hands ``import fla`` to ``myfla.alias``, which
replaces this module in ``sys.modules`` with myfla (or with a real fla that can run; ``MYFLA_AS_FLA``
= ``auto`` | ``force`` | ``off``)."""

from myfla.alias import activate_from_shim

activate_from_shim(__name__)
