"""Data for Agent Forge: the GPT-2 / trained BPE tokenizers, readers of the local reference data, the
train / held-out partition, the Cognate curriculum sources and mix, and causal-LM block packing."""
