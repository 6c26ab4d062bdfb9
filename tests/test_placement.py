"""Device placement of pool and Ray workers (pure functions), Ray resources per run, and the configuration
errors of data-parallel and Ray plans."""

from __future__ import annotations

from pathlib import Path

import pytest

from cl_bench import runner
from cl_bench.config import ConfigError, RayConfig, build_plan, load_config
from cl_bench.ray_backend import check_ray_plan, run_resources
from cl_bench.runner import placed_devices, preflight, prepare, trainer_config, visible_gpus, worker_gpus


def test_each_pool_worker_gets_its_own_gpu_then_they_share_in_turn() -> None:
    assert [worker_gpus(s, [0, 1, 2, 3]) for s in range(4)] == [[0], [1], [2], [3]]
    assert [worker_gpus(s, [0, 1]) for s in range(4)] == [[0], [1], [0], [1]]
    assert worker_gpus(3, []) == []


def test_placed_devices_counts_take_the_assigned_and_lists_are_honoured() -> None:
    # a pool worker of slot 1 on a 4-GPU machine (ids are the ordinals)
    assert placed_devices(1, [1], [0, 1, 2, 3]) == [1]
    assert placed_devices([3], [1], [0, 1, 2, 3]) == [3]  # trainer.devices=[3] is honoured as given
    assert placed_devices([2, 0], [1], [0, 1, 2, 3]) == [2, 0]
    # a Ray task given GPUs 5 and 7 (CUDA_VISIBLE_DEVICES=5,7: ordinals 0 and 1)
    assert placed_devices(1, [5, 7], [5, 7]) == [0]
    assert placed_devices(2, [5, 7], [5, 7]) == [0, 1]
    assert placed_devices("auto", [5, 7], [5, 7]) == [0, 1]
    assert placed_devices(-1, [5, 7], [5, 7]) == [0, 1]
    assert placed_devices([7], [5, 7], [5, 7]) == [1]
    with pytest.raises(ConfigError, match=r"trainer.devices=\[3\]: GPU\(s\) \[3\] are not visible"):
        placed_devices([3], [5, 7], [5, 7])
    with pytest.raises(ConfigError, match="was given 1 GPU"):
        placed_devices(2, [1], [0, 1, 2, 3])


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(runner.torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    assert visible_gpus() == [5, 7]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-aaaa,GPU-bbbb")  # UUIDs: the ordinals stand for themselves
    assert visible_gpus() == [0, 1]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert visible_gpus() == [0, 1]


def test_trainer_config_places_gpu_runs_only_and_keeps_the_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    plan = build_plan(load_config(["strategy=naive", "settings=[class_il]", "trainer.accelerator=gpu"]))
    spec = plan.runs[0]
    hash_before = spec.config_hash()
    monkeypatch.setattr(runner.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(runner.torch.cuda, "device_count", lambda: 4)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(runner, "_ASSIGNED_GPUS", [2])
    assert trainer_config(spec).devices == [2]
    assert spec.trainer["devices"] == 1 and spec.config_hash() == hash_before
    spec.trainer["accelerator"] = "cpu"
    assert trainer_config(spec).devices == 1  # a CPU run is not placed
    monkeypatch.setattr(runner, "_ASSIGNED_GPUS", None)
    spec.trainer["accelerator"] = "gpu"
    assert trainer_config(spec).devices == 1  # not a placed worker: as configured


def test_ray_resources_per_run() -> None:
    cpu = build_plan(load_config(["strategy=naive", "settings=[class_il]"])).runs[0]
    assert run_resources(cpu, RayConfig()) == {"num_cpus": 1.0, "num_gpus": 0.0}
    assert run_resources(cpu, RayConfig(cpus_per_run=2, gpus_per_run=0.5)) == {"num_cpus": 2, "num_gpus": 0.5}
    cpu.trainer["accelerator"] = "gpu"
    assert run_resources(cpu, RayConfig()) == {"num_cpus": 1.0, "num_gpus": 1.0}


@pytest.mark.parametrize(("overrides", "message"), [
    (["sweep.backend=slurm"], "sweep: backend='slurm'; valid: local, ray"),
    (["sweep.backend=ray", "sweep.ray.cpus_per_run=0"], "ray.cpus_per_run must be > 0"),
    (["sweep.ray.max_retries=-1"], "ray.max_retries must be >= 0"),
])
def test_sweep_config_errors(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_plan(load_config(["strategy=naive", *overrides]))


def test_ray_plan_naming_gpus_is_refused() -> None:
    plan = build_plan(load_config(["strategy=naive", "sweep.backend=ray", "trainer.devices=[0]"]))
    with pytest.raises(ConfigError, match=r"trainer.devices=\[0\] names GPUs, but on Ray"):
        check_ray_plan(plan)


@pytest.mark.parametrize(("overrides", "message"), [
    (["trainer.batch_size=33", "sweep.workers=1"], "trainer.batch_size=33 does not split over the 2 processes"),
    (["sweep.workers=2"], "starts its own 2 processes; run it with sweep.workers=1"),
    (["sweep.workers=1", "sweep.backend=ray"], "starts its own 2 processes"),
])
def test_data_parallel_plan_errors_before_training(tmp_path: Path, overrides: list[str], message: str) -> None:
    plan = build_plan(load_config(["strategy=naive", "settings=[class_il]", "trainer.strategy=ddp",
                                   "trainer.devices=2", f"output.dir={tmp_path / 'out'}", *overrides]))
    with pytest.raises(ConfigError, match=message):
        preflight(plan, prepare(plan))
    assert not (tmp_path / "out" / "runs").exists()
