"""Agent Forge: create small language models from scratch and improve them phase by phase, on Ray."""
from forge import models  # noqa: F401  (registers the Cognate architecture with the transformers Auto classes)
