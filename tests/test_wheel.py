"""The built wheel carries the configs: installed into a fresh virtual environment (no network: the wheel alone,
its dependencies from this project's environment), `cl-bench list` and a tiny run work from any folder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def sh(*args: str | Path, cwd: Path) -> str:
    done = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{args}: rc {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.slow
def test_the_installed_wheel_lists_and_runs_with_its_shipped_configs(tmp_path: Path) -> None:
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not on PATH")
    sh(uv, "build", "--wheel", "--out-dir", tmp_path / "dist", cwd=ROOT)
    (wheel,) = (tmp_path / "dist").glob("cl_bench-*.whl")
    venv = tmp_path / "venv"
    sh(uv, "venv", "--offline", "--python", sys.executable, venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    sh(uv, "pip", "install", "--offline", "--no-deps", "--python", python, wheel, cwd=tmp_path)
    site = Path(sh(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path).strip())
    (site / "project_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # torch & co., offline

    work = tmp_path / "elsewhere"
    work.mkdir()
    where = sh(python, "-c", "import cl_bench.config as c; print(c.__file__); print(c.CONFIG_DIR)", cwd=work).split()
    assert all(Path(p).is_relative_to(site) for p in where), where  # the wheel's package and its configs
    listing = sh(venv / "bin" / "cl-bench", "list", cwd=work)
    for name in ("split_mnist", "split_cifar100", "baseline_split_digits", "ewc", "der", "mlp"):
        assert name in listing
    sh(venv / "bin" / "cl-bench", "run", "strategy=[naive,ewc]", "scenario.n_tasks=2", "trainer.epochs=1",
       "checks.enabled=false", "settings=[class_il]", "sweep.workers=1", "output.dir=out", cwd=work)
    runs = json.loads((work / "out" / "results.json").read_text())["runs"]
    assert sorted(r["label"] for r in runs) == ["ewc", "naive"] and all(r["status"] == "ok" for r in runs)
    assert sh(venv / "bin" / "cl-bench", "run", "experiment=baseline_split_digits", "--dry-run", cwd=work)
