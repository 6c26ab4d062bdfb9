"""sweep.backend=ray on a real two-node Ray cluster of this machine (loopback only): the Split-Digits grid
runs on both nodes with the results of the local backend, the driver receives the progress events of the
runs on both nodes, and a run whose worker process is killed is retried by Ray, resumes from its checkpoint
and ends with the same matrices."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cl_bench.config import build_plan, load_config
from cl_bench.progress import Event
from cl_bench.runner import execute

# the runs use each node's own installation, as cl_bench.ray_backend sets before it imports Ray (which reads
# this once, at import): an in-process driver of these tests imports Ray here first
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
pytest.importorskip("ray")
pytestmark = pytest.mark.slow

GRID = ["output.checkpoint_every_s=0",  # a checkpoint after every task
        "strategy=[naive,ewc]", "seeds=[0,1]", "settings=[class_il]", "trainer.epochs=3", "checks.enabled=false",
        "trainer.train_loss_probe=100"]
TASKS = 5  # Split-Digits
RAY = Path(sys.executable).with_name("ray")
#: Ray turns the spellings "localhost" and "127.0.0.1" of a joining node's --address into the machine's
#: routable address; a head advertising 127.0.0.1 binds loopback only, and this spelling reaches it as is
LOOPBACK = "LOCALHOST"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_cli(*args: str, env: dict[str, str]) -> None:
    proc = subprocess.run([str(RAY), *args], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, str]]:
    """A head node and a second node on this machine, one CPU each, 100 MB object stores; stopped after."""
    port = free_port()
    tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    env = {**os.environ, "RAY_TMPDIR": tmp, "RAY_USAGE_STATS_ENABLED": "0"}
    common = ["--num-cpus=1", "--num-gpus=0", "--object-store-memory=100000000", "--disable-usage-stats"]
    try:
        ray_cli("start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--include-dashboard=false",
                f"--temp-dir={tmp}", *common, env={**env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
        ray_cli("start", f"--address={LOOPBACK}:{port}", *common, env=env)
        yield {**env, "CI": "1", "address": f"{LOOPBACK}:{port}"}
    finally:
        subprocess.run([str(RAY), "stop", "--force"], capture_output=True, env=env, timeout=300)


def local_results(tmp_path: Path) -> dict:
    plan = build_plan(load_config([*GRID, "sweep.workers=1", f"output.dir={tmp_path / 'local'}"]))
    return {r.run_id: r for r in execute(plan)}


def ray_command(cluster: dict[str, str], out: Path) -> list[str]:
    return [sys.executable, "-m", "cl_bench.cli", "run", *GRID, "sweep.backend=ray",
            f"sweep.ray.address={cluster['address']}", f"output.dir={out}"]


def assert_same_as_local(out: Path, local: dict) -> None:
    stored = json.loads((out / "results.json").read_text())
    runs = {r["run_id"]: r for r in stored["runs"]}
    assert sorted(runs) == sorted(local)
    for run_id, ref in local.items():
        assert runs[run_id]["acc"] == ref.acc and runs[run_id]["loss"] == ref.loss, run_id
        assert runs[run_id]["train_loss"] == ref.train_loss and runs[run_id]["acc_init"] == ref.acc_init
    ref_metrics = {r.run_id: {k: v for k, v in r.metrics.items() if k != "time_s"} for r in local.values()}
    assert {k: {m: v for m, v in r["metrics"].items() if m != "time_s"} for k, r in runs.items()} == ref_metrics
    for key, stats in stored["aggregate"].items():
        assert set(stats) >= {"acc", "forgetting"}, key


def nodes_of(stderr: str) -> dict[str, str]:
    """Run id -> node id from the ``ray: RUN finished on node N`` lines."""
    return {line.split()[1]: line.split()[5] for line in stderr.splitlines() if line.startswith("ray: ")}


def test_grid_runs_on_both_nodes_with_the_local_results(cluster: dict[str, str], tmp_path: Path) -> None:
    start = time.perf_counter()
    proc = subprocess.run(ray_command(cluster, tmp_path / "ray"), capture_output=True, text=True, env=cluster,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(f"ray grid: {time.perf_counter() - start:.1f} s")
    where = nodes_of(proc.stderr)
    assert len(where) == 4 and len(set(where.values())) == 2, proc.stderr  # every run reported, both nodes used
    assert proc.stdout.count("results: ") == 1
    # the plain progress lines of the cluster's runs: where each started, each task of each run, the last count
    started = dict(re.findall(r"\] (\S+): started at task 1/5 on node (\w+)$", proc.stderr, re.MULTILINE))
    assert started == where, proc.stderr
    done = re.findall(r"\[(\d+)/20 tasks, [^\]]*\] (\S+): task (\d)/5 done$", proc.stderr, re.MULTILINE)
    assert sorted((run_id, int(t)) for _, run_id, t in done) == [(r, t) for r in sorted(where) for t in range(1, 6)]
    assert int(done[-1][0]) == 20 and "done: 20/20 tasks" in proc.stdout
    print("\n".join(line for line in proc.stderr.splitlines() if line.startswith(("[", "ray: "))))
    assert_same_as_local(tmp_path / "ray", local_results(tmp_path))


def test_the_driver_receives_the_progress_events_of_the_runs_on_every_node(
        cluster: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    for key in ("RAY_TMPDIR", "RAY_USAGE_STATS_ENABLED"):
        monkeypatch.setenv(key, cluster[key])
    plan = build_plan(load_config(["strategy=[naive,ewc]", "settings=[class_il]", "trainer.epochs=2",
                                   "checks.enabled=false", "trainer.train_loss_probe=100", "sweep.backend=ray",
                                   f"sweep.ray.address={cluster['address']}", f"output.dir={tmp_path}"]))
    log: list[Event] = []
    for result in execute(plan, on_progress=log.append):
        assert result.status == "ok", result.error
        log.append({"kind": "result", "runs": [result.run_id]})
    where = nodes_of(capsys.readouterr().err)
    assert sorted(where) == ["class_il/ewc/seed0", "class_il/naive/seed0"] and len(set(where.values())) == 2
    for run_id, node in where.items():
        mine = [e for e in log if e.get("runs") == [run_id]]
        assert all(e["node"] == node for e in mine if e["kind"] != "result")  # tagged with the node it ran on
        # the run's whole story, in order, before its result reached the caller
        expected = [("run_start", 0, TASKS)] + [x for t in range(TASKS) for x in (
            ("task_start", t, TASKS), ("epoch", 1, 2), ("epoch", 2, 2), ("task_end", t, None))] + [("result",)]
        seen = [(e["kind"], e["task"], e["tasks"]) if e["kind"] in ("run_start", "task_start") else
                (e["kind"], e["epoch"], e["epochs"]) if e["kind"] == "epoch" else
                (e["kind"], e["task"], None) if e["kind"] == "task_end" else (e["kind"],) for e in mine]
        assert seen == expected, run_id
    assert any(e["kind"] == "note" and "2 nodes" in e["text"] for e in log)


def training_workers() -> dict[int, str]:
    """PID -> run id of the Ray worker processes executing a cl-bench run (Ray titles a worker after the
    task it executes: ``ray::cl-bench <run id>``)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if cmdline.startswith(b"ray::cl-bench "):
                found[int(entry.name)] = cmdline.split(b"\0")[0].decode().split()[1]
    return found


def victim(out: Path) -> tuple[int, str] | None:
    """A worker training a run that has a checkpoint (a finished task), with that run's id."""
    for pid, run_id in training_workers().items():
        setting, label, seed = run_id.split("/")
        if (out / "checkpoints" / setting / label / f"{seed}.pt").exists():
            return pid, run_id
    return None


def test_killed_worker_is_retried_and_resumes_to_the_same_matrices(cluster: dict[str, str],
                                                                   tmp_path: Path) -> None:
    out = tmp_path / "ray"
    driver = subprocess.Popen(ray_command(cluster, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=cluster)
    try:
        deadline = time.monotonic() + 600
        while (found := victim(out)) is None:
            assert driver.poll() is None and time.monotonic() < deadline, "no run seen past its first task"
            time.sleep(0.02)
        pid, run_id = found
        os.kill(pid, signal.SIGKILL)
        stdout, stderr = driver.communicate(timeout=900)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, stdout[-3000:] + stderr[-3000:]
    report = [line for line in stderr.splitlines() if line.startswith(f"ray: {run_id} finished")]
    assert len(report) == 1 and "resumed after" in report[0], stderr  # the retry continued the killed attempt
    assert f"(pid {pid}" not in report[0]
    print(f"killed pid {pid} training {run_id}; {report[0]}")
    assert_same_as_local(out, local_results(tmp_path))
