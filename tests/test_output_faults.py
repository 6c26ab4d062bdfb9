"""An output folder that cannot take the results is refused before any training, and a write that
fails during a run (a real full file system) names the file and the fix.

The tests run as root, for whom permission bits do not stop writes: unwritable folders are made of a
path below a regular file and of /proc (its root takes no new entries); a full disk is a small tmpfs
mounted for the test (skipped where mounting is not permitted)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cl_bench.cli import main
from cl_bench.config import build_plan, load_config
from cl_bench.runner import execute

TINY = ["output.checkpoint_every_s=0",  # a checkpoint after every task
        "strategy=naive", "scenario.n_tasks=3", "trainer.epochs=1", "trainer.train_loss_probe=50",
        "settings=[class_il]", "checks.enabled=false", "sweep.workers=1"]


def mounted(folder: Path, options: str):
    """A tmpfs mounted at ``folder`` with ``options`` for the test (skipped where mounting is not permitted)."""
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=True)


@pytest.fixture
def tmpfs(tmp_path: Path):
    """A 4 MiB file system."""
    yield from mounted(tmp_path / "small_fs", "size=4m")


@pytest.fixture
def read_only_fs(tmp_path: Path):
    """A read-only file system (root cannot write there either)."""
    yield from mounted(tmp_path / "ro_fs", "ro,size=1m")


def run_into(out: Path, capsys) -> tuple[int, str]:
    code = main(["run", *TINY, f"output.dir={out}"])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_an_output_folder_below_a_file_is_refused_before_training(tmp_path: Path, capsys) -> None:
    (tmp_path / "a_file").write_text("not a folder")
    out = tmp_path / "a_file" / "out"
    code, text = run_into(out, capsys)
    assert code == 2 and f"error: output.dir={out}: cannot write there (Not a directory)" in text
    assert "choose another output.dir" in text and "Traceback" not in text


def test_an_output_folder_in_proc_is_refused_before_training(capsys) -> None:
    out = Path("/proc/cl_bench_out")
    code, text = run_into(out, capsys)
    assert code == 2 and f"error: output.dir={out}: cannot write there" in text and "Traceback" not in text


def test_an_output_folder_on_a_read_only_file_system_is_refused_before_training(read_only_fs: Path, capsys) -> None:
    out = read_only_fs / "out"
    code, text = run_into(out, capsys)
    assert code == 2 and f"error: output.dir={out}: cannot write there (Read-only file system)" in text


def test_an_output_folder_without_room_is_refused_before_training(tmpfs: Path, capsys) -> None:
    (tmpfs / "filler").write_bytes(b"\0" * (4 * 2**20 - 64 * 2**10))  # 64 KiB left
    out = tmpfs / "out"
    code, text = run_into(out, capsys)
    assert code == 2 and f"error: output.dir={out}: " in text and "MiB free, a run needs about" in text
    assert "free space or choose another output.dir" in text
    assert not (out / "runs").exists() and not (out / "checkpoints").exists()


def test_a_disk_that_fills_during_a_run_names_the_file_and_the_fix(tmpfs: Path) -> None:
    """The disk fills after task 0: the checkpoint of task 1 cannot be written."""
    plan = build_plan(load_config([*TINY, f"output.dir={tmpfs / 'out'}"]))

    def fill_the_disk(spec, task_id, module) -> None:
        if task_id == 0:
            with open(tmpfs / "filler", "wb") as fh:
                try:
                    while True:
                        fh.write(b"\0" * 2**16)
                except OSError:
                    pass

    with pytest.raises(RuntimeError) as err:
        list(execute(plan, on_task_end=fill_the_disk))
    checkpoint = tmpfs / "out" / "checkpoints" / "class_il" / "naive" / "seed0.pt"
    assert str(err.value) == f"{checkpoint}: no space left on device: free space or choose another output.dir"
    assert not list((tmpfs / "out").rglob("*.tmp"))  # the half-written temporary file is removed
