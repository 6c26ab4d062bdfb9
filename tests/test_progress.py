"""Progress of every running run: the board's counts, table and plain lines, fed by the runner's events from
this process and from pool workers."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from cl_bench.cli import main
from cl_bench.progress import Board

TINY = ["strategy=[naive,ewc]", "scenario.n_tasks=2", "trainer.epochs=2", "checks.enabled=false",
        "trainer.train_loss_probe=50"]


def test_the_board_counts_tasks_per_run_and_shows_each_running_run() -> None:
    out = io.StringIO()
    board = Board("exp", total=8, plain=True, out=out)
    runs = ["class_il/ewc/seed0", "task_il/ewc/seed0"]  # one training serving two runs
    board({"kind": "run_start", "runs": runs, "task": 0, "tasks": 2})
    board({"kind": "task_start", "runs": runs, "task": 0, "tasks": 2, "epochs": 3})
    board({"kind": "epoch", "runs": runs, "epoch": 2, "epochs": 3})
    table = io.StringIO()
    Console(file=table, width=120).print(board)
    rows = [ln for ln in table.getvalue().splitlines() if "ewc" in ln]
    assert len(rows) == 2 and all("1/2" in r and "2/3" in r for r in rows)
    assert "class_il" in rows[0] and "task_il" in rows[1]
    board({"kind": "task_end", "runs": runs, "task": 0})
    assert board.done == 2 and board.eta() is not None
    board.result("class_il/naive/seed0", 2, "ok")  # a reused run counts whole
    assert board.done == 4 and "class_il/naive/seed0" not in board.running
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("class_il/ewc/seed0, task_il/ewc/seed0: started at task 1/2")
    assert re.match(r"\[2/8 tasks, 0:00:\d\d elapsed, ETA \d:\d\d:\d\d\] class_il/ewc/seed0, task_il/ewc/seed0: "
                    r"task 1/2 done", lines[1])


def test_the_board_shows_the_node_of_a_cluster_run() -> None:
    out = io.StringIO()
    board = Board("exp", total=4, plain=True, out=out)
    board({"kind": "run_start", "runs": ["class_il/ewc/seed0"], "task": 1, "tasks": 2, "node": "0a1b2c3d4e5f"})
    board({"kind": "task_start", "runs": ["class_il/ewc/seed0"], "task": 1, "tasks": 2, "epochs": 3,
           "node": "0a1b2c3d4e5f"})
    board({"kind": "run_start", "runs": ["class_il/naive/seed0"], "task": 0, "tasks": 2})
    assert out.getvalue().splitlines()[0].endswith("class_il/ewc/seed0: started at task 2/2 on node 0a1b2c3d4e5f")
    assert out.getvalue().splitlines()[1].endswith("class_il/naive/seed0: started at task 1/2")
    table = io.StringIO()
    Console(file=table, width=120).print(board)
    header, *rows = [ln for ln in table.getvalue().splitlines() if "node" in ln or "seed0" in ln or "ewc" in ln
                     or "naive" in ln]
    assert header.split("┃")[4].strip() == "node"
    ewc, naive = sorted(rows, key=lambda r: "naive" in r)
    assert ewc.split("│")[4].strip() == "0a1b2c3d4e5f" and naive.split("│")[4].strip() == "-"
    local = Board("exp", total=4, plain=False)
    local({"kind": "run_start", "runs": ["class_il/naive/seed0"], "task": 0, "tasks": 2})
    table = io.StringIO()
    Console(file=table, width=120).print(local)
    assert "node" not in table.getvalue()  # a local run has no node column


@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_plain_lines_for_every_task_of_every_run(tmp_path, capsys, workers) -> None:
    assert main(["run", *TINY, f"sweep.workers={workers}", f"output.dir={tmp_path}"]) == 0
    captured = capsys.readouterr()
    assert "4 runs x 2 tasks" in captured.out and "loading the data" in captured.out  # at once, before training
    done = re.findall(r"\[(\d+)/8 tasks, [^\]]*\] (\S+?)(?:, \S+)?: task (\d)/2 done", captured.err)
    assert sorted((label, task) for _, label, task in done) == sorted(
        (f"class_il/{s}/seed0", t) for s in ("naive", "ewc") for t in "12")  # each shared training, each task
    assert int(done[-1][0]) == 8
    assert "done: 8/8 tasks" in captured.out
