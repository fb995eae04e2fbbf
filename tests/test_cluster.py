"""Resource planning: fractional GPU shares sized by memory; no GPU request on CPU-only nodes."""
import pytest

from cluster.resources import DevicePlan, GiB, plan_devices, safe_batch_size, share_for, training_memory_bytes


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


def test_safe_batch_size_fits_and_accumulates():
    params, seq, hidden, layers, steps = 25_000_000, 512, 320, 8, 4
    free = 5 * GiB
    batch, accumulation = safe_batch_size(free, params, seq, hidden, layers, steps, target_batch=64)
    assert training_memory_bytes(params, batch, seq, hidden, layers, steps) <= free
    assert training_memory_bytes(params, batch * 2, seq, hidden, layers, steps) > free or batch * 2 > 64
    assert batch * accumulation >= 64
    with pytest.raises(ValueError, match="does not fit"):
        safe_batch_size(GiB // 2, params, seq, hidden, layers, steps, target_batch=64)


def test_plan_devices_reads_this_cpu_cluster(ray_session):
    plan = plan_devices()
    assert plan.num_gpus == 0 and plan.device == "cpu"
    assert plan.num_cpus == 2
    assert plan_devices("cpu") == plan
    with pytest.raises(ValueError, match="device=cuda but the Ray cluster offers no GPU"):
        plan_devices("cuda")
