"""Model size (parameters, bytes, category) and training FLOPs per token of the Cognate model."""
from __future__ import annotations

from torch import nn

from .config import CognateConfig

# Upper bounds (exclusive) of the size categories, in parameters; everything larger is "large".
SIZE_CATEGORIES = (("tiny", 50_000_000), ("small", 500_000_000), ("medium", 2_000_000_000))


def get_model_size(model: nn.Module) -> dict:
    """{"params", "size_mb", "size_category"} read from ``model``.

    params counts each parameter tensor once (tied embeddings once); size_mb is the bytes of parameters and
    buffers in their actual dtypes / 2**20, so packed or quantised weights count at their stored size.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"get_model_size expects a torch.nn.Module, got {type(model).__name__}")
    params = sum(p.numel() for p in model.parameters())
    size_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    size_bytes += sum(b.numel() * b.element_size() for b in model.buffers())
    category = next((name for name, bound in SIZE_CATEGORIES if params < bound), "large")
    return {"params": params, "size_mb": size_bytes / 2**20, "size_category": category}


def mean_attended_keys(seq_len: int, window: int) -> float:
    """Average number of keys a query attends to under a causal window of ``window`` tokens."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    if seq_len <= window:
        return (seq_len + 1) / 2
    return (window * (window + 1) / 2 + (seq_len - window) * window) / seq_len


def gpt2_flops_per_token(config, seq_len: int) -> float:
    """Training FLOPs per token of a GPT-2 (``transformers.GPT2Config``) at ``seq_len``: the baseline of the
    Cognate throughput measurements."""
    d, layers = config.n_embd, config.n_layer
    matmul_weights = layers * 12 * d * d + d * config.vocab_size
    return 6.0 * matmul_weights + 12.0 * layers * d * mean_attended_keys(seq_len, seq_len)


def estimate_flops_per_token(config: CognateConfig, seq_len: int, steps: float | None = None) -> float:
    """Training FLOPs per token (forward + backward) of one Cognate forward/backward, 6N-style.

    A stack pass costs, per layer, 2 FLOPs per weight (attention, MLP, memory projections), 4*k*d for
    attention scores and values over k = mean attended keys, 4*memory_dim*ltm_slots for the memory read
    and 14*memory_dim*ltm_slots for its write (surprise gradient 6, momentum/memory sums 8) on all chunks but
    the last, whose write nothing reads. A supervision step runs (T-1)*(n+1) passes
    forward only and (n+1) passes with backward (x3). The lm_head (2*d*V) runs, with backward, once per step
    for deep supervision (if weighted) and once for the mixed answer. ``steps``: supervision steps actually
    computed (e.g. the measured mean ``computed_steps``); default ``act_max_steps``, an upper bound.
    Not counted: the no-grad QK logit maximum recorded for QK-clip, norms, activations, the halting head.
    """
    d, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    dm, slots = config.memory_dim, config.ltm_slots
    keys = mean_attended_keys(seq_len, config.sliding_window)
    weights_per_layer = 4 * d * d + 3 * d * inter + 4 * d * dm + 3 * d
    chunks = -(-seq_len // config.memory_chunk_size)
    layer_fwd = 2 * weights_per_layer + 4 * keys * d + (4 + 14 * (chunks - 1) / chunks) * dm * slots
    pass_fwd = layers * layer_fwd
    passes = config.passes_per_refinement
    step_flops = (config.trm_refinements - 1) * passes * pass_fwd + passes * 3 * pass_fwd
    steps = config.act_max_steps if steps is None else steps
    head = 3 * 2 * d * config.vocab_size
    heads = head * (1 + (steps if config.deep_supervision_weight > 0 else 0))
    return float(steps * step_flops + heads)


def estimate_step_memory_bytes(config: CognateConfig, batch: int, seq_len: int, bytes_per_float: int = 4) -> int:
    """Peak memory one training forward + backward of ``batch`` x ``seq_len`` tokens adds to the weights.

    Counted from what autograd keeps, per token (d hidden, i SwiGLU width, s memory slots, m memory width, C chunk):
    a decoder layer keeps ~13d (norms, attention blocks of 2w keys, gate) + 4i (SwiGLU) + 11s (the memory read and
    write's per-chunk (chunk, slots) intermediates) + 8sm/C (its fast-weight states between chunks); the lm_head
    needs 4V for the mixed answer (logits, log-softmax and their gradients) and 2V per deep-supervision step. ``activation_checkpointing`` keeps d per layer
    ("layer") or per stack pass ("stack") instead, plus, transiently in backward, one layer (or one stack pass)
    recomputed with one chunk's intermediates at a time, and one 2**24-logit CE block (the trainer's forward
    returns no logits, so the mixed answer's CE is blocked like the deep-supervision terms). Backward adds
    the parameter gradients. Weights and optimizer state are not included. Checked against measured CPU peaks
    (tests/test_memory_estimate.py).
    """
    d, inter, layers, vocab = config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.vocab_size
    slots, dim, chunk = config.ltm_slots, config.memory_dim, config.memory_chunk_size
    tokens = batch * seq_len
    padded = batch * (-(-seq_len // chunk) * chunk)
    grad_passes = config.act_max_steps * config.passes_per_refinement  # stack passes that keep activations
    states = 8 * slots * dim / chunk * padded  # fast weights (and their bounded copies) between chunks, per layer
    dense = (13 * d + 4 * inter) * tokens
    chunk_work = 11 * slots * padded  # the (chunk, slots) intermediates of every chunk of one layer
    mode = config.activation_checkpointing
    if mode == "none":
        kept = grad_passes * layers * (dense + chunk_work + states)
        transient = dense + chunk_work
        heads = (4 + 2 * config.act_max_steps) * vocab * tokens
    else:
        per_layer = dense + states + 11 * slots * batch * chunk  # one chunk's intermediates at a time
        if mode == "layer":
            kept, transient = grad_passes * layers * d * tokens, 2 * per_layer
        else:
            kept, transient = grad_passes * d * tokens, (layers + 1) * per_layer
        from .cognate import LOGITS_BLOCK_ELEMENTS

        heads = 2 * min(LOGITS_BLOCK_ELEMENTS, config.act_max_steps * tokens * vocab)
    passes_floats = grad_passes * 4 * d * tokens + config.act_max_steps * 2 * d * tokens  # pass inputs, answers y
    floats = kept + transient + heads + passes_floats + sum_parameters(config)  # + the parameter gradients
    return int(floats * bytes_per_float)


def sum_parameters(config: CognateConfig) -> int:
    """Parameters of a CognateForCausalLM with ``config`` (tied embeddings counted once), without building it."""
    d, inter, dim = config.hidden_size, config.intermediate_size, config.memory_dim
    layer = 4 * d * d + 3 * d * inter + 4 * d * dim + 3 * d + 3 + 2 * d
    return config.vocab_size * d + config.num_hidden_layers * layer + 2 * d + d + 1
