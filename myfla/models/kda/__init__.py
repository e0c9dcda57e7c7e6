"""KDA language models (``model_type='kda'``), registered with transformers' Auto classes on import,
as fla does: ``AutoConfig.for_model('kda', ...)``, ``AutoModel`` and ``AutoModelForCausalLM``.

Source: fla/models/kda/__init__.py:L1-L12 (fla 0.4.0)
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from myfla.models.kda.configuration_kda import KDAConfig
from myfla.models.kda.modeling_kda import KDAForCausalLM, KDAModel

AutoConfig.register(KDAConfig.model_type, KDAConfig, exist_ok=True)
AutoModel.register(KDAConfig, KDAModel, exist_ok=True)
AutoModelForCausalLM.register(KDAConfig, KDAForCausalLM, exist_ok=True)

__all__ = ['KDAConfig', 'KDAForCausalLM', 'KDAModel']
