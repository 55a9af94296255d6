"""Model loading: `load_model(ModelConfig(name=...))` -> a plain trainable torch model.

`name` may be an offline preset (`oel models list`), a local `.gguf` file, a Hugging Face
model directory, or a hub id (only where the machine has network). Example:

    from oel.models import ModelConfig, load_model
    lm = load_model(ModelConfig(name="qwen2.5-coder-0.5b-instruct"))
    lm.model, lm.tokenizer, lm.model_id
"""

from oel.models.load import LoadedModel, ModelConfig, check_model_name, load_model
from oel.models.presets import DEFAULT_PRESET, PRESETS

__all__ = ["ModelConfig", "LoadedModel", "check_model_name", "load_model", "PRESETS", "DEFAULT_PRESET"]
