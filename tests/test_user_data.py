"""Own data by config: .npz / .pt files, an ImageFolder directory, a registered factory; the recorded
configuration names the real data (file digests, name, shapes), and a changed file changes the run's identity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cl_bench import registry
from cl_bench.config import ConfigError, build_plan, load_config
from cl_bench.data.sources import load_source
from cl_bench.runner import identify_run, load_scenario, run_one

TINY = ["scenario.n_tasks=2", "scenario.classes_per_task=2", "trainer.epochs=1", "checks.enabled=false",
        "strategy=naive", "settings=[class_il]", "trainer.train_loss_probe=50"]


def digits_arrays() -> dict[str, np.ndarray]:
    """scikit-learn's digits (classes 0-3) as uint8 8x8 images: a dataset of the user's own, written by the test."""
    x, y = load_source("digits").x_train, load_source("digits").y_train
    keep = y < 4
    x, y = x[keep].numpy(), y[keep].numpy()
    return {"x_train": x[:300, 0], "y_train": y[:300], "x_test": x[300:, 0], "y_test": y[300:],
            "class_names": np.array(["zero", "one", "two", "three"])}


def plan_of(*overrides: str):
    return build_plan(load_config([*TINY, *overrides]))


def test_npz_and_pt_files_give_the_same_tasks_and_record_the_data(tmp_path) -> None:
    arrays = digits_arrays()
    np.savez(tmp_path / "mine.npz", **arrays)
    torch.save({k: torch.as_tensor(v) for k, v in arrays.items() if k != "class_names"}, tmp_path / "mine.pt")
    npz = plan_of("scenario.source=npz", f"scenario.path={tmp_path / 'mine.npz'}").runs[0]
    pt = plan_of("scenario.source=pt", f"scenario.path={tmp_path / 'mine.pt'}").runs[0]
    a, b = load_scenario(npz), load_scenario(pt)
    assert a.input_shape == (1, 8, 8) and a.n_outputs == 4 and [t.classes for t in a.tasks] == [[0, 1], [2, 3]]
    for ta, tb in zip(a.tasks, b.tasks):
        assert torch.equal(ta.x_train, tb.x_train) and torch.equal(ta.y_test, tb.y_test)
    identify_run(npz)
    assert list(npz.data["files"]) == ["mine.npz"]
    assert npz.data["source"] == {"name": "mine", "x_train": [300, 1, 8, 8], "x_test": [arrays["y_test"].size, 1, 8, 8],
                                  "dtype": "uint8", "n_classes": 4, "class_names": ["zero", "one", "two", "three"]}
    result = run_one(npz, a)
    assert result.status == "ok" and result.config["data"]["source"]["name"] == "mine"
    first = npz.config_hash()
    arrays["y_test"] = arrays["y_test"][::-1].copy()  # other data under the same name
    np.savez(tmp_path / "mine.npz", **arrays)
    identify_run(npz)
    assert npz.config_hash() != first


def test_an_image_folder_and_a_registered_factory(tmp_path) -> None:
    from torchvision.io import write_png

    arrays = digits_arrays()
    for split in ("train", "test"):
        for i, (img, label) in enumerate(zip(arrays[f"x_{split}"][:40], arrays[f"y_{split}"][:40])):
            folder = tmp_path / "imgs" / split / f"c{label}"
            folder.mkdir(parents=True, exist_ok=True)
            write_png(torch.as_tensor(img)[None], str(folder / f"{i}.png"))
    spec = plan_of("scenario.source=image_folder", f"scenario.path={tmp_path / 'imgs'}").runs[0]
    scenario = load_scenario(spec)
    x0 = scenario.tasks[0].x_train
    assert x0.dtype == torch.uint8 and x0.shape[1:] == (1, 8, 8)
    identify_run(spec)
    assert len(spec.data["files"]) == 80 and spec.data["source"]["class_names"] == ["c0", "c1", "c2", "c3"]

    saved = dict(registry.DATASETS)
    try:
        @registry.register_dataset("test_my_digits")
        def my_digits():
            """Four digit classes, from a Python function."""
            return digits_arrays()

        spec = plan_of("scenario.source=test_my_digits").runs[0]
        assert load_scenario(spec).n_outputs == 4
        identify_run(spec)
        assert "files" not in spec.data and spec.data["source"]["name"] == "test_my_digits"
    finally:
        registry.DATASETS.clear()
        registry.DATASETS.update(saved)


def test_bad_data_is_one_error_naming_the_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="scenario.path is required for source=npz"):
        plan_of("scenario.source=npz")
    with pytest.raises(ConfigError, match=r"scenario.path=.*nowhere.npz: not found"):
        plan_of("scenario.source=npz", f"scenario.path={tmp_path / 'nowhere.npz'}")
    arrays = digits_arrays()
    del arrays["y_test"]
    np.savez(tmp_path / "short.npz", **arrays)
    with pytest.raises(ConfigError, match=r"short.npz: missing y_test"):
        plan_of("scenario.source=npz", f"scenario.path={tmp_path / 'short.npz'}")
    with pytest.raises(ConfigError, match="scenario.path: applies only to the file sources"):
        plan_of(f"scenario.path={tmp_path}")
