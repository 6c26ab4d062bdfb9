"""Scenario input geometry: ``pad_to`` (zero padding to a square size) and the rotation ``interpolation``."""

from __future__ import annotations

import pytest
import torch

from cl_bench.data.scenarios import build_scenario, pad_images, rotate

DIGITS = {"kind": "split", "source": "digits", "setting": "class_il", "n_tasks": 2, "classes_per_task": 2}
ROTATED = {"kind": "rotated", "source": "digits", "setting": "domain_il", "n_tasks": 2}


def test_pad_to_centres_the_images_in_zeros():
    plain = build_scenario(DIGITS)
    padded = build_scenario({**DIGITS, "pad_to": 12})
    assert padded.input_shape == (1, 12, 12)
    x, x0 = padded.tasks[0].x_train, plain.tasks[0].x_train  # [N, 1, 12, 12], [N, 1, 8, 8]
    assert torch.equal(x[:, :, 2:10, 2:10], x0)
    border = x.clone()
    border[:, :, 2:10, 2:10] = 0
    assert border.abs().sum() == 0
    assert torch.equal(pad_images(torch.ones(1, 1, 2, 3, dtype=torch.uint8), 5)[0, 0],
                       torch.tensor([[0, 0, 0, 0, 0], [0, 1, 1, 1, 0], [0, 1, 1, 1, 0], [0, 0, 0, 0, 0],
                                     [0, 0, 0, 0, 0]], dtype=torch.uint8))


def test_nearest_rotation_only_moves_pixels_bilinear_blends_them():
    x = torch.randint(1, 255, (4, 1, 9, 9), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    values = set(x.unique().tolist()) | {0}
    assert set(rotate(x, 30.0, "nearest").unique().tolist()) <= values
    assert not set(rotate(x, 30.0, "bilinear").unique().tolist()) <= values
    from cl_bench.data.sources import load_source

    digit_values = set(load_source("digits").x_train.unique().tolist()) | {0}  # 17 grey levels
    nearest = build_scenario({**ROTATED, "interpolation": "nearest", "seed": 3})
    bilinear = build_scenario({**ROTATED, "seed": 3})  # bilinear is the default
    for t in range(2):
        assert set(nearest.tasks[t].x_train.unique().tolist()) <= digit_values
    assert not set(bilinear.tasks[1].x_train.unique().tolist()) <= digit_values


@pytest.mark.parametrize(("cfg", "match"), [
    ({**DIGITS, "pad_to": 6}, r"scenario\.pad_to: 6 is smaller than the 8 x 8 images of digits"),
    ({**DIGITS, "interpolation": "nearest"}, r"scenario\.interpolation: applies only to kind=rotated"),
    ({**ROTATED, "interpolation": "cubic"}, r"scenario\.interpolation: must be one of bilinear, nearest"),
    ({**DIGITS, "pad_to": 0}, r"scenario\.pad_to: must be >= 1"),
])
def test_bad_geometry_options_name_the_key(cfg, match):
    with pytest.raises(ValueError, match=match):
        build_scenario(cfg)
