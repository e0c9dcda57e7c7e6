"""The language models of the port (mirrors ``fla.models`` for the KDA, GatedDeltaNet and RWKV-7 families)
and the ``Cache`` the layers use through ``past_key_values`` (:mod:`myfla.models.utils`).

As in fla, the models need ``transformers`` (``pip install 'portaudit-myfla[hf]'``) and importing
this package registers them with transformers' Auto classes (``AutoConfig.for_model('kda')``,
``AutoModel``, ``AutoModelForCausalLM``). The layers, ops and the Cache work without transformers:
then this package imports without the model classes, and asking for one raises ImportError.

Source: fla/models/__init__.py:L1-L67 (fla 0.4.0)
"""

try:
    import transformers  # noqa: F401
except ImportError:
    _MODELS_ERROR = ("myfla's model classes need the `transformers` package "
                     "(pip install 'portaudit-myfla[hf]'); the layers and ops do not")
else:
    _MODELS_ERROR = None
    from myfla.models.gated_deltanet import GatedDeltaNetConfig, GatedDeltaNetForCausalLM, GatedDeltaNetModel
    from myfla.models.kda import KDAConfig, KDAForCausalLM, KDAModel
    from myfla.models.rwkv7 import RWKV7Config, RWKV7ForCausalLM, RWKV7Model

__all__ = [
    'GatedDeltaNetConfig', 'GatedDeltaNetForCausalLM', 'GatedDeltaNetModel',
    'KDAConfig', 'KDAForCausalLM', 'KDAModel',
    'RWKV7Config', 'RWKV7ForCausalLM', 'RWKV7Model',
]


def __getattr__(name):
    if _MODELS_ERROR is not None and name in __all__:
        raise ImportError(_MODELS_ERROR)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
