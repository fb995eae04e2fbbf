"""Forking a Cognate model from the trunk: the shared ancestor that Phase 1 trains once.

What a fork with another memory capacity or ACT threshold inherits. ``ltm_slots`` and ``act_threshold`` are
not in the weights: the Titans memory's fast weights live per sequence and start on every call from fixed
random features ``W1_0`` (a non-persistent buffer drawn from ``MEMORY_INIT_SEED``) and ``W2_0 = 0``; its
per-slot learning rate (``memory_lr / ltm_slots``) and norm bound (``memory_max_norm * sqrt(ltm_slots)``) are
computed from the config. Every learned tensor (memory projections and gates, attention, MLPs, the halting
head, embeddings) has the same shape at any capacity, so a fork copies all of them exactly and its own config
rebuilds the capacity-dependent parts deterministically. The seeded draw of ``W1_0`` makes a larger memory's
features extend a smaller one's: the first 64 of a 256-slot fork's features are a 64-slot trunk's, so the
fork's memory starts as the trunk's plus extra features whose read-out (``W2``) starts at zero in every
sequence, and its training teaches the learned gates to use them. The ACT threshold only moves where tokens
stop refining, and ``act_max_steps`` how many steps a token may take (the trunk may train with fewer than its
models: ``cognate.trunk.act_max_steps``); the halting head's weights are the trunk's.
"""
from __future__ import annotations

from pathlib import Path

from forge.artifacts import load_model_dir


class ForkError(ValueError):
    """The trunk's weights do not fit the model forked from it."""


def fork_from_trunk(model, trunk_dir: Path) -> None:
    """Load the trunk's weights (``trunk_dir``, a verified model directory) into ``model``, exactly.

    ``model`` may differ from the trunk in settings that are not weights (``ltm_slots``, ``act_threshold``,
    ``act_max_steps``); any difference in parameter names or shapes is refused, naming the tensors.
    """
    trunk, _ = load_model_dir(trunk_dir)
    source, target = trunk.state_dict(), model.state_dict()
    missing, extra = sorted(set(target) - set(source)), sorted(set(source) - set(target))
    shapes = [f"{k}: {tuple(source[k].shape)} vs {tuple(target[k].shape)}" for k in sorted(set(source) & set(target))
              if source[k].shape != target[k].shape]
    if missing or extra or shapes:
        raise ForkError(f"the trunk in {trunk_dir} does not fit the forked model: missing {missing[:5]}, extra "
                        f"{extra[:5]}, shapes {shapes[:5]}. The trunk and the models must share "
                        "cognate.architecture and the tokenizer; only act_threshold, act_max_steps and ltm_slots "
                        "may differ")
    model.load_state_dict(source, strict=True)
