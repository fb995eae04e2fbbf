"""The Cognate model: a TRM-style recursive decoder whose layers are Titans-MAG blocks, with ACT halting.

Layer (Titans "memory as a gate"): ``h = x + SWA(norm(x)) * sigmoid(Memory(norm(x)))``, then a SwiGLU MLP.
Recursion (Tiny Recursive Model): with x the normalised token embedding, a latent z and an answer y,
one refinement is ``n`` latent updates ``z <- f(x + y + z)`` followed by ``y <- f(y + z)``, where f is the
layer stack plus a final RMSNorm. A supervision step runs T refinements, the first T-1 without grad, and
ends with a halting probability per token; y and z enter the next step detached (deep supervision).
ACT (Graves 2016) mixes the steps' answers per token and stops each token at cumulative probability
>= ``act_threshold``. Incremental decoding (``use_cache=True``) lives in ``cache.py``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .cache import CognateCache, act_update, decode
from .config import CognateConfig
from .layers import CachedWindowPlan, CognateRMSNorm, SlidingWindowAttention, SwiGLU, WindowCache, WindowPlan
from .memory import ChunkPlan, MemoryCache, NeuralMemory

LOGITS_BLOCK_ELEMENTS = 2**24  # logits per CE block under activation checkpointing (64 MiB fp32)


@dataclass
class CognateModelOutput(ModelOutput):
    """Output of the recursive stack.

    last_hidden_state: ACT-weighted mixture of the steps' answers y (B, n, d).
    step_hidden_states: the answer y after each computed supervision step (tuple of (B, n, d)).
    step_weights: per-step ACT weights (S, B, n); a token's weights sum to 1, zero after it halted.
    step_counts: N(t), steps each token ran (B, n) float; 0 for padding.
    ponder_cost: mean over real tokens of N(t) + R(t) (Graves), differentiable through R.
    halting_steps: mean N(t) over real tokens (python float).
    computed_steps: supervision steps the batch ran (python int; the max of N over the batch).
    cache: the decoding state after these tokens, when called with use_cache=True or a cache.
    """

    last_hidden_state: torch.Tensor | None = None
    step_hidden_states: tuple[torch.Tensor, ...] | None = None
    step_weights: torch.Tensor | None = None
    step_counts: torch.Tensor | None = None
    ponder_cost: torch.Tensor | None = None
    halting_steps: float | None = None
    computed_steps: int | None = None
    cache: CognateCache | None = None


@dataclass
class CognateCausalLMOutput(ModelOutput):
    """Causal-LM output: loss terms, logits and the ACT statistics of this forward.

    loss: total loss (see ``CognateForCausalLM.forward``); ce_loss, deep_supervision_loss: its CE terms.
    logits: next-token logits from the ACT-mixed answer (B, n, vocab); None when called with return_logits=False.
    ponder_cost, halting_steps, computed_steps, cache: as in ``CognateModelOutput``.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    ce_loss: torch.Tensor | None = None
    deep_supervision_loss: torch.Tensor | None = None
    ponder_cost: torch.Tensor | None = None
    halting_steps: float | None = None
    computed_steps: int | None = None
    cache: CognateCache | None = None


class CognateDecoderLayer(nn.Module):
    """Titans-MAG block: sliding-window attention gated by neural memory, then a SwiGLU MLP."""

    def __init__(self, config: CognateConfig):
        super().__init__()
        self.input_norm = CognateRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = SlidingWindowAttention(config)
        self.memory = NeuralMemory(config)
        self.post_attention_norm = CognateRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = SwiGLU(config)

    def forward(self, hidden: torch.Tensor, plan: WindowPlan, valid: torch.Tensor | None) -> torch.Tensor:
        normed = self.input_norm(hidden)
        gate = torch.sigmoid(self.memory(normed, valid))
        hidden = hidden + self.self_attn(normed, plan) * gate
        return hidden + self.mlp(self.post_attention_norm(hidden))

    def forward_cached(self, hidden: torch.Tensor, window_plan: CachedWindowPlan, window: WindowCache,
                       memory: MemoryCache, chunk_plan: ChunkPlan) -> torch.Tensor:
        """``forward`` for new columns after the ones in this pass's caches (see ``forge.models.cache``)."""
        normed = self.input_norm(hidden)
        gate = torch.sigmoid(self.memory.forward_cached(normed, chunk_plan, memory))
        hidden = hidden + self.self_attn.forward_cached(normed, window_plan, window) * gate
        return hidden + self.mlp(self.post_attention_norm(hidden))


class HaltingHead(nn.Linear):
    """ACT halting logit per token from the answer y; its bias starts at ``act_halt_bias_init``."""

    def __init__(self, hidden_size: int):
        super().__init__(hidden_size, 1, bias=True)


class CognatePreTrainedModel(PreTrainedModel):
    """Weight init and Hugging Face plumbing shared by the Cognate classes."""

    config_class = CognateConfig
    config: CognateConfig
    base_model_prefix = "model"
    _no_split_modules = ["CognateDecoderLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, NeuralMemory):
            module.reset_parameters()
        elif isinstance(module, HaltingHead):
            init.constant_(module.bias, self.config.act_halt_bias_init)


class CognateModel(CognatePreTrainedModel):
    """Embeddings, the shared layer stack f, the TRM recursion and the ACT halting head."""

    def __init__(self, config: CognateConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embed_norm = CognateRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.layers = nn.ModuleList(CognateDecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = CognateRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.halt_head = HaltingHead(config.hidden_size)
        if config.compile_layers:
            # Fuses the memory write's many small kernels; compiled lazily at the first call (the incremental
            # decoding path, ``forward_cached``, stays eager).
            for layer in self.layers:
                layer.compile()
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def stack(self, hidden: torch.Tensor, plan: WindowPlan, valid: torch.Tensor | None) -> torch.Tensor:
        """f: every layer once, then RMSNorm (keeps z and y at unit scale across recursions).

        With grad and ``config.activation_checkpointing`` "layer" or "stack", only the input of each layer (or
        of the whole pass) is kept for backward; the rest is recomputed there."""
        mode = self.config.activation_checkpointing if torch.is_grad_enabled() else "none"
        if mode == "stack":
            return checkpoint(self._layers_and_norm, hidden, plan, valid, False, use_reentrant=False)
        return self._layers_and_norm(hidden, plan, valid, mode == "layer")

    def _layers_and_norm(self, hidden, plan, valid, checkpoint_layers: bool) -> torch.Tensor:
        for layer in self.layers:
            if checkpoint_layers:
                hidden = checkpoint(layer, hidden, plan, valid, use_reentrant=False)
            else:
                hidden = layer(hidden, plan, valid)
        return self.norm(hidden)

    def refine(self, x, y, z, plan, valid):
        """One TRM refinement: n latent updates, then one answer update."""
        for _ in range(self.config.trm_latent_updates):
            z = self.stack(x + y + z, plan, valid)
        y = self.stack(y + z, plan, valid)
        return y, z

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, inputs_embeds: torch.Tensor | None = None,
                cache: CognateCache | None = None, past_key_values: CognateCache | None = None,
                use_cache: bool | None = None, **kwargs) -> CognateModelOutput:
        """Run supervision steps until every real token has halted (or ``act_max_steps``).

        With ``use_cache=True`` or a cache (``cache=``, or its older name ``past_key_values=``) it decodes
        instead: the inputs are the new tokens after the cache's, ``attention_mask`` (if any) covers both,
        and the output carries the cache (``forge.models.cache``). ``use_cache=None`` is the plain forward.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("CognateModel.forward: pass exactly one of input_ids or inputs_embeds")
        if cache is not None and past_key_values is not None:
            raise ValueError("CognateModel.forward: pass the cache once, as cache= (or past_key_values=)")
        cache = cache if cache is not None else past_key_values
        embeds = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        if use_cache or cache is not None:
            return decode(self, embeds, attention_mask, position_ids, cache)
        bsz, n, _ = embeds.shape
        valid = None if attention_mask is None else attention_mask.to(torch.bool)
        order = restore = None
        if valid is not None and bool((~valid[:, 0]).any()):
            # Left padding: rotate each row so its real tokens start at 0 (pads move to the end, where causal
            # masking hides them); memory chunks then align as without padding. Undone on the outputs.
            lead = (valid.long().cumsum(-1) == 0).sum(-1, keepdim=True)
            index = torch.arange(n, device=embeds.device).expand(bsz, n)
            order, restore = (index + lead) % n, (index - lead) % n
            embeds = embeds.gather(1, order[..., None].expand_as(embeds))
            valid = valid.gather(1, order)
            position_ids = None if position_ids is None else position_ids.gather(1, order)
        if position_ids is None:
            if valid is None:
                position_ids = torch.arange(n, device=embeds.device).expand(bsz, n)
            else:
                position_ids = (valid.long().cumsum(-1) - 1).clamp(min=0)
        # QK-clip reads the max logit of a training forward; evaluation forwards neither record nor reset it.
        record_max_logit = self.training or torch.is_grad_enabled()
        if record_max_logit:
            for layer in self.layers:
                layer.self_attn.max_attn_logit = float("-inf")
        cfg = self.config
        plan = WindowPlan.build(position_ids, valid, cfg, record_max_logit)
        x = self.embed_norm(embeds)
        y, z = x, torch.zeros_like(x)
        real = torch.ones(bsz, n, dtype=torch.bool, device=x.device) if valid is None else valid
        act = {"running": real.clone(), "cum_prob": x.new_zeros(bsz, n), "counts": x.new_zeros(bsz, n),
               "ponder": x.new_zeros(bsz, n), "mixed": torch.zeros_like(x)}
        states, weights = [], []
        for step in range(1, cfg.act_max_steps + 1):
            with torch.no_grad():
                for _ in range(cfg.trm_refinements - 1):
                    y, z = self.refine(x, y, z, plan, valid)
            y, z = self.refine(x, y, z, plan, valid)
            halt_prob = torch.sigmoid(self.halt_head(y).squeeze(-1).float())
            weights.append(act_update(act, y, halt_prob, step, cfg))
            states.append(y)
            y, z = y.detach(), z.detach()
            if not bool(act["running"].any()):
                break
        mixed, counts, ponder = act["mixed"], act["counts"], act["ponder"]
        n_real = real.sum().clamp(min=1)
        step_weights = torch.stack(weights)
        if restore is not None:
            mixed, counts = _gather_tokens(mixed, restore), _gather_tokens(counts, restore)
            states = [_gather_tokens(state, restore) for state in states]
            step_weights = torch.stack([_gather_tokens(w, restore) for w in step_weights])
        return CognateModelOutput(
            last_hidden_state=mixed,
            step_hidden_states=tuple(states),
            step_weights=step_weights,
            step_counts=counts,
            ponder_cost=ponder.sum() / n_real,
            halting_steps=float(counts.sum() / n_real),
            computed_steps=len(states),
        )


def _gather_tokens(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Reorder the token axis (dim 1) of a (B, n) or (B, n, d) tensor by a (B, n) index."""
    if tensor.dim() == 3:
        index = index[..., None].expand_as(tensor)
    return tensor.gather(1, index)


class CognateForCausalLM(CognatePreTrainedModel, GenerationMixin):
    """Cognate language model with tied embeddings, ACT halting head and the deep-supervision loss.

    ``generate()`` decodes with a ``CognateCache`` (``forge.models.cache``): the prompt runs once, then each
    new token runs only its own passes against the cached windows and memory states, with the same logits
    as a full forward. ``generate(use_cache=False)`` recomputes the whole prefix for every token instead.
    """

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: CognateConfig):
        super().__init__(config)
        self.model = CognateModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.lm_head = new_embeddings

    def attention_modules(self) -> list[SlidingWindowAttention]:
        """The attention modules, whose ``max_attn_logit`` the optimizer's QK-clip reads."""
        return [layer.self_attn for layer in self.model.layers]

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        """generate() must not make a DynamicCache: the first forward returns a CognateCache, and the inherited
        ``prepare_inputs_for_generation`` then feeds only the new tokens."""
        return False

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, inputs_embeds: torch.Tensor | None = None,
                labels: torch.LongTensor | None = None, cache: CognateCache | None = None,
                past_key_values: CognateCache | None = None, use_cache: bool | None = None,
                return_logits: bool = True, **kwargs) -> CognateCausalLMOutput:
        """Logits, and with ``labels`` the loss (decoding with a cache: see ``CognateModel.forward``)

            loss = CE(mix) + deep_supervision_weight * DS + ponder_cost_weight * P

        CE(mix): next-token cross-entropy of the ACT-mixed answer (labels shifted inside, -100 ignored).
        DS = sum_t sum_{s <= N(t)} CE_s(t) / sum_t N(t): per-step CE over the steps each labelled token ran.
        P = mean over real tokens of N(t) + R(t), the ACT ponder cost (R = 1 - sum of earlier halting probs).

        ``return_logits=False`` (training with ``labels``; the trainer's call) returns no logits, so CE(mix) never
        holds the (B, n, vocab) logits at once: under activation checkpointing it is taken a block of tokens at a
        time and each block's logits are recomputed in backward, like the deep-supervision terms.
        """
        decoding = use_cache or cache is not None or past_key_values is not None
        if decoding and labels is not None:
            raise ValueError("CognateForCausalLM.forward: labels need the training forward; pass use_cache=False "
                             "and no cache")
        if not return_logits and labels is None:
            raise ValueError("CognateForCausalLM.forward: return_logits=False returns only the loss; pass labels")
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         inputs_embeds=inputs_embeds, cache=cache, past_key_values=past_key_values,
                         use_cache=use_cache)
        logits = self.lm_head(out.last_hidden_state) if return_logits else None
        loss = ce = ds = None
        if labels is not None:
            # position t predicts labels[t + 1]; shifting the labels (not the logits) avoids copying logits
            target = F.pad(labels[:, 1:], (0, 1), value=-100).reshape(-1)
            if logits is not None:
                ce = F.cross_entropy(logits.view(-1, logits.shape[-1]).float(), target, ignore_index=-100)
            else:
                labelled = target != -100
                hidden = out.last_hidden_state.reshape(-1, out.last_hidden_state.shape[-1])[labelled]
                ce = self._summed_ce_in_blocks(hidden, target[labelled]) / labelled.sum()
            loss = ce + self.config.ponder_cost_weight * out.ponder_cost
            if self.config.deep_supervision_weight > 0:
                ds = self._deep_supervision(out, target)
                loss = loss + self.config.deep_supervision_weight * ds
        return CognateCausalLMOutput(loss=loss, logits=logits, ce_loss=ce, deep_supervision_loss=ds,
                                     ponder_cost=out.ponder_cost, halting_steps=out.halting_steps,
                                     computed_steps=out.computed_steps, cache=out.cache)

    def _deep_supervision(self, out: CognateModelOutput, target: torch.Tensor) -> torch.Tensor:
        """Mean CE over (labelled token, step it ran) pairs, through one lm_head call."""
        labelled = target != -100
        counts = out.step_counts.reshape(-1)
        rows, targets = [], []
        for step, state in enumerate(out.step_hidden_states, start=1):
            ran = labelled & (counts >= step)
            rows.append(state.reshape(-1, state.shape[-1])[ran])
            targets.append(target[ran])
        hidden, target = torch.cat(rows), torch.cat(targets)
        if not len(target):
            return hidden.new_zeros(())
        return self._summed_ce_in_blocks(hidden, target) / len(target)

    def _summed_ce_in_blocks(self, hidden: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Summed CE of the lm_head's logits of ``hidden`` (rows, d) against ``target`` (rows,).

        Under activation checkpointing (with grad) the (rows, vocab) logits would outweigh every checkpointed
        activation: the CE is taken a block of rows at a time and each block's logits are recomputed in backward.
        """
        if self.config.activation_checkpointing == "none" or not torch.is_grad_enabled():
            return self._summed_ce(hidden, target)
        block = max(1, LOGITS_BLOCK_ELEMENTS // self.config.vocab_size)
        return sum(checkpoint(self._summed_ce, rows, targets, use_reentrant=False)
                   for rows, targets in zip(hidden.split(block), target.split(block)))

    def _summed_ce(self, hidden: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.lm_head(hidden).float(), target, reduction="sum")
