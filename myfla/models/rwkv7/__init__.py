"""RWKV-7 language models (``model_type='rwkv7'``), registered with transformers' Auto classes on
import, as fla does: ``AutoConfig.for_model('rwkv7', ...)``, ``AutoModel`` and ``AutoModelForCausalLM``.

Source: fla/models/rwkv7/__init__.py:L1-L13 (fla 0.4.0)
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from myfla.models.rwkv7.configuration_rwkv7 import RWKV7Config
from myfla.models.rwkv7.modeling_rwkv7 import RWKV7ForCausalLM, RWKV7Model

AutoConfig.register(RWKV7Config.model_type, RWKV7Config, exist_ok=True)
AutoModel.register(RWKV7Config, RWKV7Model, exist_ok=True)
AutoModelForCausalLM.register(RWKV7Config, RWKV7ForCausalLM, exist_ok=True)

__all__ = ['RWKV7Config', 'RWKV7ForCausalLM', 'RWKV7Model']
