"""A checkpoint that cannot be read is named and moved aside; its run starts afresh while the other
runs resume. Checkpoints reach the disk (fsync) before they replace the previous one."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch

from cl_bench.checkpoint import save_checkpoint
from cl_bench.config import build_plan, load_config
from cl_bench.runner import checkpoint_path, execute

FAST = ["output.checkpoint_every_s=0",  # a checkpoint after every task
        "strategy=naive", "scenario.n_tasks=3", "trainer.epochs=1", "trainer.train_loss_probe=100",
        "settings=[class_il]", "checks.enabled=false"]


class Interrupt(Exception):
    """Stands for a kill after task 1."""


def stop_after_task_1(spec, task_id, module) -> None:
    if task_id == 1:
        raise Interrupt


def test_a_corrupt_checkpoint_restarts_its_run_and_the_others_resume(tmp_path: Path) -> None:
    reference = {r.run_id: r.acc for r in execute(build_plan(load_config([*FAST, "seeds=[0,1]",
                                                                           f"output.dir={tmp_path / 'ref'}"])))}
    out = tmp_path / "cut"
    for seed in (0, 1):  # both runs interrupted after task 1: two checkpoints
        with pytest.raises(Interrupt):
            list(execute(build_plan(load_config([*FAST, f"seeds=[{seed}]", f"output.dir={out}"])),
                         on_task_end=stop_after_task_1))
    plan = build_plan(load_config([*FAST, "seeds=[0,1]", f"output.dir={out}"]))
    broken = checkpoint_path(out, plan.runs[0])
    broken.write_bytes(broken.read_bytes()[:1000])  # cut mid-write
    trained: list[tuple[int, int]] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = {r.run_id: r.acc for r in execute(plan, on_task_end=lambda s, t, m: trained.append((s.seed, t)))}
    assert trained == [(0, 0), (0, 1), (0, 2), (1, 2)]  # seed 0 from scratch, seed 1 after its last task
    assert results == reference
    (message,) = [str(w.message) for w in caught if "checkpoint" in str(w.message)]
    assert message.startswith(f"checkpoint {broken} is unreadable (") and f"moved to {broken}.corrupt" in message
    assert Path(f"{broken}.corrupt").stat().st_size == 1000  # kept for inspection


def test_a_checkpoint_is_fsynced_before_it_replaces_the_previous_one(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync " + ("dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "file"))
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    path = tmp_path / "ckpt" / "seed0.pt"
    save_checkpoint(path, {"config_hash": "h", "w": torch.arange(5)})
    assert events == ["fsync file", "replace", "fsync dir"]
    assert torch.equal(torch.load(path, weights_only=False)["w"], torch.arange(5))
