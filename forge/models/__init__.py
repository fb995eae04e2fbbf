"""The Cognate model (TRM x Titans-MAG), registered with the transformers Auto classes on import."""
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .cache import CognateCache
from .cognate import (CognateCausalLMOutput, CognateDecoderLayer, CognateForCausalLM, CognateModel,
                      CognateModelOutput, CognatePreTrainedModel)
from .config import CognateConfig
from .size import estimate_flops_per_token, get_model_size

AutoConfig.register(CognateConfig.model_type, CognateConfig, exist_ok=True)
AutoModel.register(CognateConfig, CognateModel, exist_ok=True)
AutoModelForCausalLM.register(CognateConfig, CognateForCausalLM, exist_ok=True)

__all__ = [
    "CognateCache", "CognateCausalLMOutput", "CognateConfig", "CognateDecoderLayer", "CognateForCausalLM",
    "CognateModel", "CognateModelOutput", "CognatePreTrainedModel", "estimate_flops_per_token", "get_model_size",
]
