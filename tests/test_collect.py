"""``cl-bench collect``: runs of separate output folders merged into the results.json of one run of all."""

from __future__ import annotations

import json

from cl_bench.cli import main

RUN = ["run", "scenario=split_digits", "scenario.n_tasks=2", "trainer.epochs=1", "strategy=[naive,ewc]",
       "settings=[class_il]", "checks.enabled=false", "sweep.workers=1"]


def test_collected_folders_aggregate_like_one_run(tmp_path, capsys):
    assert main([*RUN, "seeds=[0]", f"output.dir={tmp_path / 'a'}"]) == 0
    assert main([*RUN, "seeds=[1]", f"output.dir={tmp_path / 'b'}"]) == 0
    assert main([*RUN, "seeds=[0,1]", f"output.dir={tmp_path / 'both'}"]) == 0
    assert main(["collect", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "merged")]) == 0
    merged = json.loads((tmp_path / "merged" / "results.json").read_text())
    both = json.loads((tmp_path / "both" / "results.json").read_text())
    assert sorted(r["run_id"] for r in merged["runs"]) == sorted(r["run_id"] for r in both["runs"])
    for key, stats in both["aggregate"].items():
        for metric, s in stats.items():
            if metric != "time_s":  # wall time differs between invocations
                assert merged["aggregate"][key][metric] == s, (key, metric)
    assert (tmp_path / "merged" / "runs" / "class_il" / "ewc" / "seed1.json").exists()


def test_one_run_with_two_configurations_is_refused(tmp_path, capsys):
    assert main([*RUN, "seeds=[0]", f"output.dir={tmp_path / 'a'}"]) == 0
    assert main([*RUN, "seeds=[0]", "optimizer.lr=0.01", f"output.dir={tmp_path / 'b'}"]) == 0
    capsys.readouterr()
    assert main(["collect", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "class_il/ewc/seed0 has two configurations" in err and str(tmp_path / "b") in err
    assert not (tmp_path / "m" / "results.json").exists()
    assert main(["collect", str(tmp_path / "nothing"), "--out", str(tmp_path / "m")]) == 2
