"""Phase 1's divergence rollback in the real training loop on a tiny Cognate model: a NaN loss and a loss
spike roll back to the last checkpoint and lower the learning rate; divergence that persists fails."""
import math

import pytest
import torch

from forge.config import CognateTrainConfig
from forge.models import CognateConfig, CognateForCausalLM
from forge.tracking import Tracker, TrackingConfig, read_metrics
from forge.pretrain.trainer import Stage, TrainingDiverged, train

VOCAB, SEQ = 61, 16


def tiny_model() -> CognateForCausalLM:
    torch.manual_seed(0)
    return CognateForCausalLM(CognateConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        sliding_window=8, ltm_slots=8, memory_dim=8, memory_chunk_size=8, act_max_steps=1, trm_refinements=1,
        max_position_embeddings=64, pad_token_id=0, bos_token_id=None, eos_token_id=None))


def blocks(n: int, seed: int) -> torch.Tensor:
    """Repeating sequences, so the loss falls steadily and a spike stands out."""
    base = torch.randint(1, VOCAB, (4, SEQ), generator=torch.Generator().manual_seed(seed))
    return base.repeat(n // 4, 1)


class LossFault:
    """Changes the loss of chosen training forward passes (1-based call numbers) the way a fault would:
    ``change(loss)`` gives the faulty loss (the graph is kept, so backward still runs)."""

    def __init__(self, model, calls: set[int] | None, change):
        self.calls, self.change, self.seen = calls, change, 0
        self.handle = model.register_forward_hook(self)

    def __call__(self, module, args, output):
        if not module.training:
            return None  # validation passes are left alone
        self.seen += 1
        if self.calls is None or self.seen in self.calls:
            output.loss = self.change(output.loss)
        return None


def scaled(factor: float):
    return lambda loss: loss * factor


def relative_to_recent_mean(metrics_path, multiple: float):
    """A loss of ``multiple`` x the mean of the (up to 20) losses logged so far, as the loop keeps them
    (the loss is float32: a relative margin of 1e-6 survives its rounding)."""
    def change(loss):
        recent = [m["train/loss"] for m in read_metrics(metrics_path) if "train/loss" in m][-20:]
        return loss * 0 + multiple * (sum(recent) / len(recent))
    return change


def run(tmp_path, fault_calls: set[int] | None, change, steps: int, **config):
    model = tiny_model()
    cfg = CognateTrainConfig(seq_len=SEQ, batch_size=4, micro_batch_size=4, max_steps_per_epoch=steps,
                             warmup_steps=1, eval_max_batches=1, **config)
    fault = LossFault(model, fault_calls, change)
    tracker = Tracker(tmp_path, name="rollback-test", config=TrackingConfig(wandb_mode="disabled"))
    result = train(model, [Stage("foundation", blocks(4 * steps, 1), 1)], blocks(4, 2), cfg, checkpoint_dir=tmp_path,
                   tracker=tracker, device=torch.device("cpu"), seed=0, micro_batch=4)
    fault.handle.remove()
    return result, read_metrics(tmp_path / "metrics.jsonl")


def test_a_nan_loss_rolls_back_to_the_last_checkpoint_and_halves_the_learning_rate(tmp_path):
    # Forward pass 5 is step 5's: the last checkpoint was written after step 4.
    result, metrics = run(tmp_path, {5}, scaled(math.nan), steps=8, checkpoint_every=2)
    assert result["rollbacks"] == 1 and result["steps"] == 8
    [event] = [m for m in metrics if "train/divergence_loss" in m]
    assert event["train/divergence_loss"] == "nan" and event["train/rollback_to_step"] == 4
    assert event["train/lr_scale"] == 0.5
    losses = [m for m in metrics if "train/loss" in m]
    assert [m["step"] for m in losses] == [1, 2, 3, 4, 5, 6, 7, 8]  # step 5 redone, never logged as NaN
    assert all(math.isfinite(m["train/loss"]) for m in losses)
    assert [m["train/lr_scale"] for m in losses] == [1.0] * 4 + [0.5] * 4
    assert math.isfinite(result["val/loss"])


def test_a_loss_spike_rolls_back_once_the_recent_mean_is_known(tmp_path):
    # Ten recent losses are needed before a spike counts; pass 12 is 20x its step's loss, far above 4x the mean.
    result, metrics = run(tmp_path, {12}, scaled(20.0), steps=14, checkpoint_every=5)
    [event] = [m for m in metrics if "train/divergence_loss" in m]
    recent = [m["train/loss"] for m in metrics if "train/loss" in m and m["step"] <= 11][-10:]
    assert event["train/divergence_loss"] > 4.0 * sum(recent) / len(recent)
    assert event["train/rollback_to_step"] == 10 and result["rollbacks"] == 1 and result["steps"] == 14


@pytest.mark.parametrize("multiple,rollbacks", [(4.0 * (1 - 1e-6), 0), (4.0 * (1 + 1e-6), 1)])
def test_a_spike_counts_only_above_spike_factor_times_the_recent_mean(tmp_path, multiple, rollbacks):
    change = relative_to_recent_mean(tmp_path / "metrics.jsonl", multiple)
    result, _ = run(tmp_path, {12}, change, steps=13, checkpoint_every=5)
    assert CognateTrainConfig().spike_factor == 4.0 and result["rollbacks"] == rollbacks


def test_a_spike_before_ten_steps_is_not_divergence(tmp_path):
    result, _ = run(tmp_path, {3}, scaled(20.0), steps=6, checkpoint_every=2)
    assert result["rollbacks"] == 0


def test_divergence_that_persists_fails_after_the_allowed_rollbacks(tmp_path):
    with pytest.raises(TrainingDiverged, match="diverged after 2 rollbacks"):
        run(tmp_path, None, scaled(math.nan), steps=6, checkpoint_every=2, max_rollbacks=2)
