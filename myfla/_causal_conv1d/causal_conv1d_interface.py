"""``causal_conv1d.causal_conv1d_interface``, the package module that defines its two functions
(causal-conv1d 1.6.1), served by myfla: both are myfla's re-expressions
(``myfla.modules.causal_conv1d_package``)."""

from myfla.modules.causal_conv1d_package import causal_conv1d_fn, causal_conv1d_update

__all__ = ["causal_conv1d_fn", "causal_conv1d_update"]
