"""The ``causal_conv1d`` package's API (Dao-AILab/causal-conv1d), served by myfla (port-only).

``myfla.install_as_causal_conv1d()`` (or the PYTHONPATH shim, ``python -m myfla.alias --shim-dir
causal_conv1d``) answers ``import causal_conv1d`` with this package: the same two functions as the
package's root (``causal_conv1d/__init__.py``, causal-conv1d 1.6.1), computed by myfla's torch
re-expression of its kernels (``myfla.modules.causal_conv1d_package``), so that clients binding them
(transformers' Qwen3-Next, Kimi Linear and other hybrid models) keep packed sequences apart through
``seq_idx`` on any device. The compiled extension and the package's torch references are not served.
"""

from myfla._causal_conv1d.causal_conv1d_interface import causal_conv1d_fn, causal_conv1d_update

__all__ = ["causal_conv1d_fn", "causal_conv1d_update"]
