"""GatedDeltaNet language models (``model_type='gated_deltanet'``), registered with transformers'
Auto classes on import, as fla does.

Source: fla/models/gated_deltanet/__init__.py:L1-L12 (fla 0.4.0)
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from myfla.models.gated_deltanet.configuration_gated_deltanet import GatedDeltaNetConfig
from myfla.models.gated_deltanet.modeling_gated_deltanet import GatedDeltaNetForCausalLM, GatedDeltaNetModel

AutoConfig.register(GatedDeltaNetConfig.model_type, GatedDeltaNetConfig, exist_ok=True)
AutoModel.register(GatedDeltaNetConfig, GatedDeltaNetModel, exist_ok=True)
AutoModelForCausalLM.register(GatedDeltaNetConfig, GatedDeltaNetForCausalLM, exist_ok=True)

__all__ = ['GatedDeltaNetConfig', 'GatedDeltaNetForCausalLM', 'GatedDeltaNetModel']
