"""Peak memory of a ``scenario.seed: per_run`` experiment: the main process and each pool worker.

Protocol: Rotated-MNIST, ``--seeds`` training seeds each on its own draw of the angles, ``--tasks`` tasks of
the full MNIST, naive fine-tuning for ``trainer.max_steps`` steps per task (the data, not the training, is
what is measured), checks off, the scenario cache in a fresh folder. Printed: the peak RSS of this process
(``ru_maxrss``), the peak RSS (``VmHWM``, polled every 0.2 s) of every process it started, the wall time
and the final accuracy row of each seed (equal however the draws are held).

    CL_BENCH_DATA=$CL_BENCH_DATA uv run python -m benchmarks.per_run_memory --workers 1
    CL_BENCH_DATA=$CL_BENCH_DATA uv run python -m benchmarks.per_run_memory --workers 2

(CL_BENCH_DATA: the folder holding MNIST/raw. Run it twice with the same ``--cache``: the first run builds
and caches the draws, the second loads them.)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import threading
import time
from pathlib import Path

from cl_bench.config import build_plan, load_config
from cl_bench.runner import execute

POLL_S = 0.2


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux: ``/proc/<pid>/task/<pid>/children``)."""
    out, todo = [], [pid]
    while todo:
        try:
            children = [int(c) for c in Path(f"/proc/{todo[0]}/task/{todo[0]}/children").read_text().split()]
        except OSError:
            children = []
        todo = todo[1:] + children
        out += children
    return out


def watch_children(peaks: dict[int, int]) -> None:
    """Record into ``peaks`` the VmHWM (MiB) of every descendant of this process, polled until it exits."""
    while True:
        for pid in descendants(os.getpid()):
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    peaks[pid] = max(peaks.get(pid, 0), int(line.split()[1]) // 1024)
        time.sleep(POLL_S)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--tasks", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20, help="trainer.max_steps per task")
    ap.add_argument("--cache", default=None, help="scenario cache folder (default: a fresh temporary one)")
    args = ap.parse_args()
    peaks: dict[int, int] = {}
    threading.Thread(target=watch_children, args=(peaks,), daemon=True).start()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config([
            "scenario=rotated_mnist", "strategy=naive", "settings=[domain_il]",
            f"seeds=[{','.join(map(str, range(args.seeds)))}]", "scenario.seed=per_run",
            f"scenario.n_tasks={args.tasks}", "trainer.epochs=1", f"trainer.max_steps={args.steps}",
            "trainer.train_loss_probe=200", "checks.enabled=false", f"sweep.workers={args.workers}",
            f"sweep.cache_dir={args.cache or Path(tmp) / 'cache'}", f"output.dir={Path(tmp) / 'out'}",
        ])
        start = time.perf_counter()
        results = sorted(execute(build_plan(cfg), resume=False, workers=args.workers), key=lambda r: r.seed)
    print(json.dumps({
        "workers": args.workers, "wall_s": round(time.perf_counter() - start, 1),
        "main_peak_rss_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
        "children_peak_rss_MiB": sorted(peaks.values()),
        "scenario_seeds": [r.scenario_seed for r in results], "final_acc": [r.acc[-1] for r in results],
    }))


if __name__ == "__main__":
    main()
