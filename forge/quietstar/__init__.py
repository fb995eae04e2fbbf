"""Quiet-STaR techniques (plain PyTorch): the 12 thinking tokens, reasoning data (offline traces from
the local data, or an OpenAI-compatible service under a cost cap) with the spec's validation, the
thought reward / REINFORCE loss / mixing head, and the anti-theater checks."""
from forge.quietstar.api import ApiGeneratorConfig, ApiReasoningGenerator, CostCapReached
from forge.quietstar.data import (ReasoningExample, ReasoningGenerator, ValidationReport, read_dataset,
                                  validate_examples, write_dataset)
from forge.quietstar.offline import OfflineConfig, OfflineReasoningGenerator
from forge.quietstar.rewards import (AntiTheaterReport, MixingHead, ablation_drop, coherence_utility_correlation,
                                     reinforce_loss, sequence_logprob, thought_divergence, thought_rewards)
from forge.quietstar.tokens import (STRATEGY_TOKENS, THINK_END, THINK_START, THINKING_TOKENS, add_thinking_tokens,
                                    thinking_token_ids)

__all__ = [
    "ApiGeneratorConfig", "ApiReasoningGenerator", "CostCapReached", "OfflineConfig", "OfflineReasoningGenerator",
    "AntiTheaterReport", "MixingHead", "ReasoningExample", "ReasoningGenerator", "STRATEGY_TOKENS", "THINK_END",
    "THINK_START", "THINKING_TOKENS", "ValidationReport", "ablation_drop", "add_thinking_tokens",
    "coherence_utility_correlation", "read_dataset", "reinforce_loss", "sequence_logprob", "thinking_token_ids",
    "thought_divergence", "thought_rewards", "validate_examples", "write_dataset",
]
