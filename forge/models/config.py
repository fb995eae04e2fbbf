"""CognateConfig: the hyper-parameters of the Cognate model (TRM recursion x Titans-MAG memory)."""
from __future__ import annotations

from transformers import PreTrainedConfig

GPT2_EOS_ID = 50256  # "<|endoftext|>" in the GPT-2 BPE the project trains with
# What a training forward keeps for backward: everything ("none", fastest), or only each decoder layer's input
# ("layer") or each pass of the layer stack's input ("stack"), recomputing the rest during backward; both also
# recompute the memory's per-chunk (batch, chunk, slots) intermediates and the CE blocks' logits (deep supervision, and
# the mixed answer's when the forward returns no logits).
ACTIVATION_CHECKPOINTING = ("none", "layer", "stack")


class CognateConfig(PreTrainedConfig):
    """Cognate model configuration. The defaults give 26.3M parameters with the GPT-2 vocabulary.

    Default dims (hidden 320, 8 layers, 8 heads, SwiGLU 864, tied 50257-token embeddings) keep the spec's
    8 layers x 8 heads while staying in the "tiny" (<50M) size category; the spec's hidden 512 would put
    the tied embedding alone at 25.7M and the model at ~53M.
    """

    model_type = "cognate"

    vocab_size: int = 50257  # token vocabulary (GPT-2 BPE)
    hidden_size: int = 320  # width of the residual stream, z and y
    intermediate_size: int = 864  # SwiGLU inner width (gate_proj/up_proj outputs)
    num_hidden_layers: int = 8  # decoder layers in the shared stack that every recursion re-applies
    num_attention_heads: int = 8  # attention heads; head_dim = hidden_size / heads (must be even for RoPE)
    sliding_window: int = 256  # w: each token attends to itself and the w-1 tokens before it
    max_position_embeddings: int = 2048  # longest sequence the model is meant for (RoPE works beyond it)
    rope_theta: float = 10000.0  # RoPE base frequency
    rms_norm_eps: float = 1e-6  # RMSNorm epsilon
    initializer_range: float = 0.02  # std of the normal init of linear and embedding weights
    ltm_slots: int = 1024  # long-term memory capacity: hidden width of each layer's memory MLP (no params)
    memory_dim: int = 32  # width of memory keys/values/queries (keeps per-sequence fast weights small)
    memory_chunk_size: int = 64  # tokens per memory update; parallel inside a chunk, sequential across
    memory_lr: float = 1.0  # largest per-token memory learning rate (scaled by 1/ltm_slots inside)
    memory_max_norm: float = 4.0  # bound on the fast weights' and momenta's norms, in units of sqrt(ltm_slots)
    trm_latent_updates: int = 1  # n: latent updates z <- f(x + y + z) before each answer update y <- f(y + z)
    trm_refinements: int = 2  # T: (z, y) refinements per supervision step; the first T-1 run without grad
    act_max_steps: int = 4  # most supervision (ACT) steps per forward
    act_threshold: float = 0.95  # a token halts once its cumulative halting probability reaches this
    act_halt_bias_init: float = -1.5  # initial bias of the halting head (negative: think several steps)
    deep_supervision_weight: float = 0.5  # weight of the mean per-step CE in the loss
    ponder_cost_weight: float = 0.01  # weight of the ACT ponder cost (N + R) in the loss
    activation_checkpointing: str = "none"  # recompute in backward instead of storing: "none", "layer" or "stack" (pass of f)
    compile_layers: bool = False  # torch.compile each decoder layer's pass (attention, memory read/write, MLP); off: eager
    tie_word_embeddings: bool = True  # lm_head shares the token embedding matrix
    use_cache: bool = True  # generate() decodes with a CognateCache (forward makes one only when use_cache=True)
    pad_token_id: int | None = GPT2_EOS_ID  # padding id (GPT-2 has none; EOS doubles as pad)
    bos_token_id: int | None = GPT2_EOS_ID  # beginning-of-sequence id
    eos_token_id: int | None = GPT2_EOS_ID  # end-of-sequence id

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self._check()

    def _check(self) -> None:
        positive = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "sliding_window", "ltm_slots", "memory_dim", "memory_chunk_size", "trm_latent_updates",
                    "trm_refinements", "act_max_steps")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"CognateConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"CognateConfig.hidden_size ({self.hidden_size}) must be divisible by "
                             f"num_attention_heads ({self.num_attention_heads})")
        if (self.hidden_size // self.num_attention_heads) % 2:
            raise ValueError("CognateConfig: head_dim = hidden_size / num_attention_heads must be even for RoPE; "
                             f"got {self.hidden_size // self.num_attention_heads}")
        if not 0.0 < self.act_threshold <= 1.0:
            raise ValueError(f"CognateConfig.act_threshold must be in (0, 1], got {self.act_threshold}")
        if self.memory_chunk_size > self.sliding_window:
            raise ValueError(f"CognateConfig.memory_chunk_size ({self.memory_chunk_size}) must be <= sliding_window "
                             f"({self.sliding_window}): tokens of the current chunk are seen only through attention")
        if self.activation_checkpointing not in ACTIVATION_CHECKPOINTING:
            raise ValueError(f"CognateConfig.activation_checkpointing must be one of {ACTIVATION_CHECKPOINTING}, "
                             f"got {self.activation_checkpointing!r}")
        if self.memory_max_norm <= 0:
            raise ValueError(f"CognateConfig.memory_max_norm must be > 0, got {self.memory_max_norm}")
        for name in ("memory_lr", "deep_supervision_weight", "ponder_cost_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"CognateConfig.{name} must be >= 0, got {getattr(self, name)}")

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_attention_heads

    @property
    def passes_per_refinement(self) -> int:
        """Passes of the layer stack in one (z, y) refinement: n latent updates, then the answer update."""
        return self.trm_latent_updates + 1
