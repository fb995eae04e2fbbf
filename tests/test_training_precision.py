"""Mixed precision in the Phase 1 training loop: config checks, the CPU choice, float32 unchanged."""
import pytest
import torch

from forge.config import CognateTrainConfig, load_pipeline_config
from forge.configtools import ConfigError
from forge.models import CognateConfig, CognateForCausalLM
from forge.optim import build_muon_grokfast
from forge.tracking import Tracker, TrackingConfig
from forge.pretrain.trainer import Stage, _set_lr, lr_factor, resolve_precision, train


def test_precision_setting_is_checked_at_config_time():
    assert load_pipeline_config("tiny").cognate.train.precision == "auto"
    with pytest.raises(ConfigError, match="precision.*'fp8' is not one of"):
        load_pipeline_config("tiny", overrides=["cognate.train.precision=fp8"])
    with pytest.raises(ConfigError, match="precision=fp16 needs a CUDA GPU but device=cpu"):
        load_pipeline_config("tiny", overrides=["device=cpu", "cognate.train.precision=fp16"])
    assert load_pipeline_config("tiny", overrides=["device=cpu", "cognate.train.precision=bf16"])


def test_cpu_precisions():
    cpu = torch.device("cpu")
    for name in ("auto", "float32"):
        plain = resolve_precision(name, cpu)
        assert plain.autocast_dtype is None and not plain.grad_scaler().is_enabled()
    bf16 = resolve_precision("bf16", cpu)
    assert bf16.autocast_dtype == torch.bfloat16 and not bf16.grad_scaler().is_enabled()
    with bf16.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", cpu)
    with pytest.raises(ValueError, match="unknown precision 'half'"):
        resolve_precision("half", cpu)


def model_and_data(seed: int = 0):
    torch.manual_seed(seed)
    config = CognateConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, sliding_window=8, ltm_slots=16, memory_dim=8, memory_chunk_size=4,
                           act_max_steps=2, max_position_embeddings=32, pad_token_id=0, bos_token_id=None,
                           eos_token_id=None)
    blocks = torch.randint(0, 64, (4, 12), generator=torch.Generator().manual_seed(3))
    return CognateForCausalLM(config), blocks


def run_train(tmp_path, precision: str) -> CognateForCausalLM:
    model, blocks = model_and_data()
    cfg = CognateTrainConfig(seq_len=12, batch_size=4, micro_batch_size=4, max_steps_per_epoch=1, warmup_steps=1,
                             precision=precision)
    tracker = Tracker(tmp_path / precision, name="t", config=TrackingConfig(wandb_mode="disabled"))
    train(model, [Stage("only", blocks, 1)], blocks[:2], cfg, checkpoint_dir=tmp_path / precision, tracker=tracker,
          device=torch.device("cpu"), seed=5, micro_batch=4)
    tracker.finish()
    return model


def test_float32_training_step_is_unchanged_by_the_precision_machinery(tmp_path):
    trained = run_train(tmp_path, "float32")
    # The same step by hand: no autocast, no scaler.
    model, blocks = model_and_data()
    cfg = CognateTrainConfig()
    optimizer = build_muon_grokfast(model.train(), cfg.optimizer)
    _set_lr(optimizer, lr_factor(0, 1, 1))
    torch.manual_seed(5)
    order = torch.randperm(4, generator=torch.Generator().manual_seed(5 * 1000))
    batch = blocks[order]
    model(input_ids=batch, labels=batch).loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    for (name, expected), got in zip(model.state_dict().items(), trained.state_dict().values()):
        torch.testing.assert_close(got, expected, rtol=0, atol=0, msg=lambda m: f"{name}: {m}")
    bf16 = run_train(tmp_path, "bf16")  # autocast really engages: a close but different step
    deltas = [(a - b).abs().max() for a, b in zip(bf16.state_dict().values(), trained.state_dict().values())
              if a.is_floating_point()]
    assert max(deltas) > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without CUDA")
def test_device_cuda_without_a_gpu_is_a_config_error_with_exit_2(monkeypatch, capsys):
    from forge.pipeline import main

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(ConfigError, match="device=cuda but torch .* sees no CUDA GPU"):
        load_pipeline_config("tiny", overrides=["device=cuda"])
    assert main(["--set", "device=cuda", "--print-config"]) == 2
    assert "sees no CUDA GPU" in capsys.readouterr().err
    assert load_pipeline_config("tiny", overrides=["device=cuda", "ray.address=auto"]).device == "cuda"
