"""Resource planning: fractional GPU shares sized by memory; no GPU request on CPU-only nodes."""
import pytest

from cluster.resources import DevicePlan, GiB, largest_micro_batch, plan_devices, plan_trainers, share_for


def test_cpu_only_plan_requests_no_gpu():
    share = share_for(DevicePlan(num_cpus=2, num_gpus=0), memory_bytes=GiB, n_actors=3)
    assert share.num_gpus == 0 and share.device == "cpu"
    assert "num_gpus" not in share.ray_options()
    assert share.num_cpus == 0.66  # rounded down: three shares must fit in two CPUs
    assert 3 * share.num_cpus <= 2
    assert share.torch_threads == 1


def test_small_models_share_one_gtx1660():
    plan = DevicePlan(num_cpus=8, num_gpus=1, gpu_memory_bytes=[int(5.5 * GiB)])
    share = share_for(plan, memory_bytes=int(1.5 * GiB), n_actors=3)
    assert share.device == "cuda"
    assert 0 < share.num_gpus <= 1 / 3  # three of them fit on the one GPU
    assert share.ray_options()["num_gpus"] == share.num_gpus


def test_actor_too_big_for_the_gpu_is_a_clear_error():
    plan = DevicePlan(num_cpus=8, num_gpus=1, gpu_memory_bytes=[4 * GiB])
    with pytest.raises(ValueError, match="lower the batch size"):
        share_for(plan, memory_bytes=5 * GiB, n_actors=1)


def test_largest_micro_batch_fits_and_divides_the_batch():
    need = lambda micro: GiB + micro * GiB // 2  # noqa: E731
    assert largest_micro_batch(3 * GiB, need, target_batch=32) == 4
    assert largest_micro_batch(100 * GiB, need, target_batch=24) == 8  # a power of two dividing 24
    with pytest.raises(ValueError, match="even micro-batch 1 needs 1.50 GiB"):
        largest_micro_batch(GiB, need, target_batch=32)


def test_three_trainers_share_a_capped_gpu_or_run_fewer_at_once():
    plan = DevicePlan(num_cpus=16, num_gpus=1, gpu_memory_bytes=[6 * GiB])
    small = lambda micro: GiB // 2 + micro * GiB // 4  # noqa: E731
    share, micro, concurrent = plan_trainers(plan, small, n_actors=3, target_batch=32)
    assert (share.num_gpus, concurrent, micro) == (0.3, 3, 4)  # 1.8 GiB each: 0.5 + 4 x 0.25 <= 1.8 < 0.5 + 8 x 0.25
    assert share.gpu_memory_bytes == int(0.3 * 6 * GiB)
    large = lambda micro: 2 * GiB + micro * GiB  # noqa: E731
    share, micro, concurrent = plan_trainers(plan, large, n_actors=3, target_batch=32)
    assert (share.num_gpus, concurrent, micro) == (0.5, 2, 1)  # 3 GiB each: two at a time, the third waits
    share, micro, concurrent = plan_trainers(plan, lambda micro: 4 * GiB + micro * GiB, n_actors=3, target_batch=32)
    assert (share.num_gpus, concurrent, micro) == (1.0, 1, 2)
    with pytest.raises(ValueError, match="needs 7.0 GiB at micro-batch 1 but a GPU offers 6.0 GiB"):
        plan_trainers(plan, lambda micro: 6 * GiB + micro * GiB, n_actors=3, target_batch=32)


def test_plan_devices_reads_this_cpu_cluster(ray_session):
    plan = plan_devices()
    assert plan.num_gpus == 0 and plan.device == "cpu"
    assert plan.num_cpus == 2
    assert plan_devices("cpu") == plan
    with pytest.raises(ValueError, match="device=cuda but the Ray cluster offers no GPU"):
        plan_devices("cuda")


def test_gpu_memory_cap_setting(monkeypatch):
    from cluster.resources import gpu_memory_cap_bytes
    from cluster.runtime import GPU_MEMORY_ENV, RayConfig, connect
    from forge.config import load_pipeline_config

    assert load_pipeline_config("tiny", overrides=["ray.gpu_memory_gib=6"]).ray.gpu_memory_gib == 6
    monkeypatch.delenv(GPU_MEMORY_ENV, raising=False)
    assert gpu_memory_cap_bytes() is None
    with pytest.raises(ValueError, match="ray.gpu_memory_gib must be > 0"):
        connect(RayConfig(gpu_memory_gib=0))
    monkeypatch.setenv(GPU_MEMORY_ENV, "6")
    assert gpu_memory_cap_bytes() == 6 * GiB
