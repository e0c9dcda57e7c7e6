"""A block that checkpoints its own forward pass when gradient checkpointing is on (for transformers
releases without ``transformers.modeling_layers``; the models import that one first)."""

from functools import partial

from torch import nn
from transformers.utils import logging

# Source: fla/models/modeling_layers.py:L8-L8 (fla 0.4.0)
logger = logging.get_logger(__name__)


class GradientCheckpointingLayer(nn.Module):
    """Base class for blocks that support gradient checkpointing.

    ``model.gradient_checkpointing_enable()`` sets ``gradient_checkpointing = True`` and a
    ``_gradient_checkpointing_func`` on each such block; in training mode a call then runs through
    that function, with caching turned off (``use_cache=False`` and every cache argument set to
    None, with a warning). With ``use_reentrant=True`` the tensors that need gradients must be passed
    positionally: ``layer(hidden_states, attention_mask=mask)``, not ``layer(hidden_states=...)``.

    Source: fla/models/modeling_layers.py:L11-L71 (fla 0.4.0)
    """

    gradient_checkpointing = False

    def __call__(self, *args, **kwargs):
        if self.gradient_checkpointing and self.training:
            do_warn = False
            layer_name = self.__class__.__name__
            message = f"Caching is incompatible with gradient checkpointing in {layer_name}. Setting"

            if "use_cache" in kwargs and kwargs["use_cache"]:
                kwargs["use_cache"] = False
                message += " `use_cache=False`,"
                do_warn = True

            # the same cache under the names different layers use
            if "past_key_value" in kwargs and kwargs["past_key_value"] is not None:
                kwargs["past_key_value"] = None
                message += " `past_key_value=None`,"
                do_warn = True

            if "past_key_values" in kwargs and kwargs["past_key_values"] is not None:
                kwargs["past_key_values"] = None
                message += " `past_key_values=None`,"
                do_warn = True

            if "layer_past" in kwargs and kwargs["layer_past"] is not None:
                kwargs["layer_past"] = None
                message += " `layer_past=None`,"
                do_warn = True

            if do_warn:
                message = message.rstrip(",") + "."
                logger.warning_once(message)

            return self._gradient_checkpointing_func(partial(super().__call__, **kwargs), *args)
        return super().__call__(*args, **kwargs)
