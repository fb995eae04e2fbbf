"""Agent Forge: create small language models from scratch and improve them phase by phase, on Ray."""
# Importing forge registers with transformers what its model directories need to load through the
# Auto classes: the Cognate architecture and the BitNet ternary quantizer.
from forge import models  # noqa: F401
from forge import quant  # noqa: F401
