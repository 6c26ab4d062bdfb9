"""The documented plug-in (strategy + model + .npz data, in a folder outside the repository) through the
command line with two workers: killed between tasks, it resumes to the matrices of an uninterrupted run, and
it appears in `cl-bench list` and in the report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_docs_example import doc_steps

CLI = Path(sys.executable).parent / "cl-bench"
RUN = ["run", "--import", "my_plugin", "strategy=[naive,my_anchor]", "strategies.my_anchor.lam=5",
       "model={name: my_net, width: 32}", "scenario.source=npz", "scenario.path=my_digits.npz", "scenario.n_tasks=2",
       "trainer.epochs=16", "checks.enabled=false", "settings=[class_il,task_il]", "sweep.workers=2",
       "output.checkpoint_every_s=0"]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run([str(CLI), *args], cwd=cwd, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "CL_BENCH_IMPORTS": ""})
    assert done.returncode == 0, f"{args}: rc {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done


def checkpoint_tasks(folder: Path) -> int:
    """The most tasks any checkpoint under ``folder`` holds (0: none readable yet)."""
    best = 0
    for path in folder.glob("checkpoints/*/*/seed*.pt"):
        try:
            best = max(best, len(torch.load(path, weights_only=False)["result"]["acc"]))
        except Exception:  # being renamed into place
            continue
    return best


@pytest.mark.slow
def test_the_plug_in_resumes_bit_identically_after_a_kill_between_tasks(tmp_path: Path) -> None:
    for kind, name, code in doc_steps()[:2]:  # my_plugin.py and the block writing my_digits.npz
        if kind == "file":
            (tmp_path / name).write_text(code)
        else:
            subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True)
    listing = cli("list", "--import", "my_plugin", cwd=tmp_path).stdout
    assert "my_anchor" in listing and "[anchoring] Pull towards" in listing and "my_net" in listing
    cli(*RUN, "output.dir=ref", cwd=tmp_path)

    proc = subprocess.Popen([str(CLI), *RUN, "output.dir=cut"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "CL_BENCH_IMPORTS": ""})
    deadline = time.monotonic() + 600
    while checkpoint_tasks(tmp_path / "cut") < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # no clean-up: the workers die with it
    proc.wait()
    assert checkpoint_tasks(tmp_path / "cut") == 1, "killed after task 0 of a run, before its end"
    unfinished = len(list((tmp_path / "cut").glob("checkpoints/*/*/seed*.pt")))
    assert unfinished >= 1

    cli(*RUN, "output.dir=cut", cwd=tmp_path)
    ref = {r["run_id"]: r for r in json.loads((tmp_path / "ref" / "results.json").read_text())["runs"]}
    cut = {r["run_id"]: r for r in json.loads((tmp_path / "cut" / "results.json").read_text())["runs"]}
    assert sorted(cut) == sorted(ref) and len(ref) == 4
    for run_id, r in ref.items():
        assert cut[run_id]["acc"] == r["acc"] and cut[run_id]["loss"] == r["loss"], run_id
    assert ref["class_il/my_anchor/seed0"]["acc"] != ref["class_il/naive/seed0"]["acc"]
    assert cut["class_il/my_anchor/seed0"]["config"]["data"]["source"]["name"] == "my_digits"

    cli("report", "cut", "--out", "report", cwd=tmp_path)
    report = (tmp_path / "report" / "README.md").read_text()
    assert "my_anchor" in report and "anchoring" in report
