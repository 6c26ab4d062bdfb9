"""Scenario builders: a dataset -> a sequence of tasks (split / permuted / rotated).

Everything random here (class order, permutations, angles, subsets,
validation split) depends only on the scenario ``seed``: a fixed one gives
every strategy and training seed the same task sequence; ``seed: per_run``
(resolved by the plan, :func:`cl_bench.config.run_scenario`) gives each run
the draw of its own training seed.
Each random stream has its own generator, seeded by
``SeedSequence([seed, stream, task])``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, cast, overload

import torch
from torch import Tensor

from cl_bench.seeds import generator

from .batching import Augment
from .sources import Source, load_source, needs_path, source_info, source_num_classes, stratified_split
from .task import SETTINGS, Scenario, Setting, Task

if TYPE_CHECKING:
    from .avalanche_benchmarks import BenchmarkConfig

SCENARIO_KINDS: dict[str, str] = {
    "split": "disjoint groups of classes, one group per task (Split-MNIST; Zenke et al. 2017)",
    "permuted": "all classes, one fixed random pixel permutation per task (Goodfellow et al. 2013)",
    "rotated": "all classes, one fixed rotation angle per task (Lopez-Paz & Ranzato 2017)",
    "avalanche": "the experiences of an Avalanche benchmark (scenario.benchmark, scenario.benchmark_args)",
}
SCENARIO_KEYS: tuple[str, ...] = (
    "name", "kind", "source", "setting", "n_tasks", "classes_per_task", "class_order", "seed",
    "angle_range", "val_fraction", "train_subsample", "test_subsample", "first_identity", "augment",
    "normalize", "pad_to", "interpolation", "path", "benchmark", "benchmark_args",
)
#: rotation resampling: PIL's default (nearest, Mammoth's Rotated-MNIST) or bilinear (cl-bench's default)
INTERPOLATIONS = ("bilinear", "nearest")
# Random streams (second entry of the SeedSequence).
_CLASS_ORDER, _PERMUTATION, _ROTATION, _TRAIN_SUBSAMPLE, _TEST_SUBSAMPLE, _VALIDATION = range(6)


@dataclass(frozen=True)
class ScenarioConfig:
    """A validated scenario config (see :func:`parse_scenario_cfg`)."""

    name: str
    kind: str
    source: str
    setting: Setting
    n_tasks: int
    classes_per_task: int | None
    class_order: tuple[int, ...]
    seed: int
    angle_range: tuple[float, float]
    val_fraction: float
    train_subsample: int | None
    test_subsample: int | None
    first_identity: bool
    augment: Augment | None
    normalize: bool = True  # false: inputs only scaled to [0, 1] (the DER repository's MNIST protocol)
    pad_to: int | None = None  # zero-pad every image, centred, to pad_to x pad_to before the task transform
    interpolation: str = "bilinear"  # kind=rotated: resampling of the rotation (INTERPOLATIONS)
    path: str | None = None  # source=npz | pt | image_folder: the file or folder read


def _err(key: str, msg: str) -> ValueError:
    return ValueError(f"scenario.{key}: {msg}")


@overload
def _int(cfg: Mapping[str, Any], key: str, default: int, minimum: int) -> int: ...


@overload
def _int(cfg: Mapping[str, Any], key: str, default: None, minimum: int) -> int | None: ...


def _int(cfg: Mapping[str, Any], key: str, default: int | None, minimum: int) -> int | None:
    value = cfg.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _err(key, f"must be an integer, got {value!r}")
    if value < minimum:
        raise _err(key, f"must be >= {minimum}, got {value}")
    return value


def _class_order(cfg: Mapping[str, Any], kind: str, n_classes: int, needed: int, seed: int) -> tuple[int, ...]:
    order = cfg.get("class_order")
    if kind != "split":
        if order is not None:
            raise _err("class_order", f"applies only to kind=split, got {order!r} for kind={kind}")
        return tuple(range(n_classes))
    if order is None:
        return tuple(range(needed))
    if isinstance(order, str):
        if order != "random":
            raise _err("class_order", f"must be null, 'random' or a list of class ids, got {order!r}")
        return tuple(torch.randperm(n_classes, generator=generator(seed, _CLASS_ORDER))[:needed].tolist())
    if isinstance(order, Mapping) or not hasattr(order, "__iter__"):
        raise _err("class_order", f"must be null, 'random' or a list of class ids, got {order!r}")
    ids = list(order)
    if any(isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < n_classes for c in ids):
        raise _err("class_order", f"class ids must be integers in [0, {n_classes}), got {ids}")
    if len(set(ids)) != len(ids):
        raise _err("class_order", f"class ids must be distinct, got {ids}")
    if len(ids) < needed:
        raise _err("class_order", f"lists {len(ids)} classes but n_tasks * classes_per_task = {needed}")
    return tuple(ids[:needed])


def _augment(cfg: Mapping[str, Any]) -> Augment | None:
    """``augment: {padding: p, flip: bool}`` (used by the batcher, not at build time) or null."""
    aug = cfg.get("augment")
    if aug is None:
        return None
    if not isinstance(aug, Mapping) or set(aug) - {"padding", "flip"}:
        raise _err("augment", f"must be null or {{padding: int, flip: bool}}, got {aug!r}")
    padding, flip = aug.get("padding", 4), aug.get("flip", True)
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0 or not isinstance(flip, bool):
        raise _err("augment", f"padding must be an integer >= 0 and flip true/false, got {dict(aug)!r}")
    return Augment(padding=padding, flip=flip)


def _val_fraction(cfg: Mapping[str, Any]) -> float:
    """``scenario.val_fraction``: a number in [0, 1) (default 0: no validation split)."""
    value = cfg.get("val_fraction", 0.0) or 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise _err("val_fraction", f"must be a number in [0, 1), got {value!r}")
    return float(value)


def _flag(cfg: Mapping[str, Any], key: str, default: bool) -> bool:
    """``scenario.<key>``: true or false."""
    value = cfg.get(key, default)
    if not isinstance(value, bool):
        raise _err(key, f"must be true or false, got {value!r}")
    return value


def validation_split(y_train: Tensor, fraction: float, seed: int, task: int) -> tuple[Tensor, Tensor]:
    """(validation indices, kept training indices) of a task: a class-stratified ``fraction`` of its
    training samples, drawn with the scenario seed (an error when nothing would be left to train on)."""
    n_val = max(1, round(fraction * y_train.numel()))
    if n_val >= y_train.numel():
        raise _err("val_fraction", f"{fraction} leaves no training data in task {task}")
    return stratified_split(y_train, n_val, generator(seed, _VALIDATION, task))


def parse_scenario_cfg(cfg: Mapping[str, Any]) -> ScenarioConfig | BenchmarkConfig:
    """Validate a scenario config (no data is loaded); errors name the key. ``kind: avalanche``:
    :func:`cl_bench.data.avalanche_benchmarks.parse_benchmark_cfg`."""
    if cfg.get("kind") == "avalanche":
        from .avalanche_benchmarks import parse_benchmark_cfg

        return parse_benchmark_cfg(cfg)
    return _parse_dataset_cfg(cfg)


def _parse_dataset_cfg(cfg: Mapping[str, Any]) -> ScenarioConfig:
    """Validate the config of a scenario drawn from a dataset (kinds split, permuted, rotated)."""
    unknown = sorted(set(cfg) - set(SCENARIO_KEYS))
    if unknown:
        raise KeyError(f"scenario: unknown key(s) {unknown}; valid keys: {', '.join(SCENARIO_KEYS)}")
    for key in ("kind", "source", "setting", "n_tasks"):
        if cfg.get(key) is None:
            raise KeyError(f"scenario.{key} is required")
    kind, source, setting = cfg["kind"], cfg["source"], cfg["setting"]
    if kind not in SCENARIO_KINDS:
        raise _err("kind", f"unknown kind {kind!r}; valid kinds: {', '.join(SCENARIO_KINDS)}")
    valid_sources = source_info()
    if source not in valid_sources:
        raise _err("source", f"unknown dataset {source!r}; valid names: {', '.join(valid_sources)}")
    path = cfg.get("path")
    if needs_path(source) and not path:
        raise KeyError(f"scenario.path is required for source={source} (the file or folder to read)")
    for key in ("benchmark", "benchmark_args"):
        if cfg.get(key) is not None:
            raise _err(key, f"applies only to kind=avalanche, not kind={kind}")
    if path and not needs_path(source):
        raise _err("path", f"applies only to the file sources (npz, pt, image_folder), not source={source}")
    if setting not in SETTINGS:
        raise _err("setting", f"unknown setting {setting!r}; valid settings: {', '.join(SETTINGS)}")
    n_classes = source_num_classes(source, path)
    n_tasks = _int(cfg, "n_tasks", None, 1)
    assert n_tasks is not None  # required above
    if isinstance(cfg.get("seed"), str):
        raise _err("seed", f"must be an integer >= 0 or per_run (a draw per training seed), got {cfg['seed']!r}")
    seed = _int(cfg, "seed", 0, 0)
    cpt = _int(cfg, "classes_per_task", None, 1)
    if kind == "split":
        if cpt is None:
            raise KeyError("scenario.classes_per_task is required for kind=split")
        if cpt * n_tasks > n_classes:
            raise _err("classes_per_task", f"n_tasks * classes_per_task = {n_tasks} * {cpt} > "
                                           f"{n_classes} classes of {source}")
    elif cpt is not None:
        raise _err("classes_per_task", f"applies only to kind=split (every {kind} task has all classes)")
    needed = cast(int, cpt) * n_tasks if kind == "split" else n_classes
    angle_range = cfg.get("angle_range", None)
    angle_range = (0.0, 180.0) if angle_range is None else tuple(angle_range)
    if len(angle_range) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in angle_range) \
            or angle_range[0] > angle_range[1]:
        raise _err("angle_range", f"must be [lo, hi] degrees with lo <= hi, got {list(angle_range)}")
    if kind != "rotated" and cfg.get("angle_range") is not None:
        raise _err("angle_range", f"applies only to kind=rotated, not kind={kind}")
    val_fraction = _val_fraction(cfg)
    first_identity = _flag(cfg, "first_identity", False)
    if first_identity and kind != "permuted":
        raise _err("first_identity", f"applies only to kind=permuted, not kind={kind}")
    normalize = _flag(cfg, "normalize", True)
    interpolation = cfg.get("interpolation") or "bilinear"
    if interpolation not in INTERPOLATIONS:
        raise _err("interpolation", f"must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
    if cfg.get("interpolation") is not None and kind != "rotated":
        raise _err("interpolation", f"applies only to kind=rotated, not kind={kind}")
    return ScenarioConfig(
        name=str(cfg.get("name") or f"{kind}-{source}"),
        kind=kind, source=source, setting=setting, n_tasks=n_tasks, classes_per_task=cpt,
        class_order=_class_order(cfg, kind, n_classes, needed, seed), seed=seed,
        angle_range=(float(angle_range[0]), float(angle_range[1])), val_fraction=float(val_fraction),
        train_subsample=_int(cfg, "train_subsample", None, 1), test_subsample=_int(cfg, "test_subsample", None, 1),
        first_identity=first_identity, augment=_augment(cfg), normalize=normalize,
        pad_to=_int(cfg, "pad_to", None, 1), interpolation=interpolation, path=str(path) if path else None,
    )


def task_permutations(seed: int, n_tasks: int, n_pixels: int, first_identity: bool = False) -> Tensor:
    """``[n_tasks, n_pixels]`` pixel permutations, one per task, from the scenario seed."""
    g = generator(seed, _PERMUTATION)
    perms = torch.stack([torch.randperm(n_pixels, generator=g) for _ in range(n_tasks)])
    if first_identity:
        perms[0] = torch.arange(n_pixels)
    return perms


def rotation_angles(seed: int, n_tasks: int, angle_range: tuple[float, float] = (0.0, 180.0)) -> list[float]:
    """One angle per task, uniform in ``[lo, hi)`` degrees, from the scenario seed."""
    lo, hi = angle_range
    u = torch.rand(n_tasks, generator=generator(seed, _ROTATION), dtype=torch.float64)
    return (lo + (hi - lo) * u).tolist()


def permute_pixels(x: Tensor, perm: Tensor) -> Tensor:
    """Apply one pixel permutation to ``[N, C, H, W]`` images (same for every channel): one gather."""
    return x.flatten(2)[:, :, perm].reshape(x.shape)


def rotate(x: Tensor, angle: float, interpolation: str = "bilinear") -> Tensor:
    """Rotate a whole ``uint8`` image batch counter-clockwise by ``angle`` degrees (zero fill)."""
    from torchvision.transforms.v2 import functional as F

    return F.rotate(x, angle, interpolation=F.InterpolationMode(interpolation))


def pad_images(x: Tensor, size: int) -> Tensor:
    """Zero-pad ``[N, C, H, W]`` images, centred, to ``size x size`` (the extra row / column, if odd, at the
    bottom / right, as torchvision's ``Pad`` of (size - H) // 2 on each side and the rest after)."""
    h, w = x.shape[-2:]
    top, left = (size - h) // 2, (size - w) // 2
    return torch.nn.functional.pad(x, (left, size - w - left, top, size - h - top))


def _subsample(idx: Tensor | None, y: Tensor, limit: int | None, generator: torch.Generator) -> Tensor | None:
    """At most ``limit`` of the indices ``idx`` (None = all of ``y``), stratified by class."""
    n = y.numel() if idx is None else idx.numel()
    if limit is None or limit >= n:
        return idx
    chosen = stratified_split(y if idx is None else y[idx], limit, generator)[0]
    return chosen if idx is None else idx[chosen]


def _take(v: Tensor, idx: Tensor | None, copy: bool) -> Tensor:
    """``v[idx]`` (a copy); with ``idx`` None all of ``v``, copied only if ``copy`` (the transform copies images)."""
    if idx is not None:
        return v[idx]
    return v.clone() if copy else v


def _transforms(spec: ScenarioConfig, src: Source) -> list[Callable[[Tensor], Tensor]]:
    """The per-task input transform: a pixel permutation, a rotation, or none."""
    # a default argument binds each task's permutation / angle (mypy cannot infer such lambdas: ignore[misc])
    if spec.kind == "permuted":
        perms = task_permutations(spec.seed, spec.n_tasks, math.prod(src.input_shape[1:]), spec.first_identity)
        return [lambda x, p=p: permute_pixels(x, p) for p in perms]  # type: ignore[misc]
    if spec.kind == "rotated":
        return [lambda x, a=a: rotate(x, a, spec.interpolation)  # type: ignore[misc]
                for a in rotation_angles(spec.seed, spec.n_tasks, spec.angle_range)]
    return [lambda x: x] * spec.n_tasks


def _task(spec: ScenarioConfig, src: Source, t: int, transform: Callable[[Tensor], Tensor]) -> Task:
    if spec.kind == "split":
        assert spec.classes_per_task is not None  # required for kind=split
        classes = list(spec.class_order[t * spec.classes_per_task:(t + 1) * spec.classes_per_task])
        wanted = torch.tensor(classes)
        train_idx = torch.isin(src.y_train, wanted).nonzero().squeeze(1)
        test_idx = torch.isin(src.y_test, wanted).nonzero().squeeze(1)
    else:
        classes = list(range(src.n_classes))
        train_idx, test_idx = None, None  # all samples; the transform makes the task's own copy
    train_idx = _subsample(train_idx, src.y_train, spec.train_subsample, generator(spec.seed, _TRAIN_SUBSAMPLE, t))
    test_idx = _subsample(test_idx, src.y_test, spec.test_subsample, generator(spec.seed, _TEST_SUBSAMPLE, t))
    x_train, y_train = _take(src.x_train, train_idx, False), _take(src.y_train, train_idx, True)
    x_test, y_test = _take(src.x_test, test_idx, False), _take(src.y_test, test_idx, True)
    x_val = y_val = None
    if spec.val_fraction > 0:
        val_idx, keep = validation_split(y_train, spec.val_fraction, spec.seed, t)
        x_val, y_val, x_train, y_train = x_train[val_idx], y_train[val_idx], x_train[keep], y_train[keep]

    x_train, x_test = transform(x_train), transform(x_test)
    x_val = transform(x_val) if x_val is not None else None

    if spec.setting == "domain_il" and spec.kind == "split":
        # y -> position of y within the task's classes
        lut = torch.full((src.n_classes,), -1, dtype=torch.long)
        lut[torch.tensor(classes)] = torch.arange(len(classes))
        y_train, y_test = lut[y_train], lut[y_test]
        y_val = lut[y_val] if y_val is not None else None
        classes = list(range(len(classes)))
    return Task(id=t, classes=classes, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                x_val=x_val, y_val=y_val)


def build_scenario(cfg: Mapping[str, Any], root: str | os.PathLike | None = None,
                   download: bool = False) -> Scenario:
    """Build the task sequence described by ``cfg`` (keys: :data:`SCENARIO_KEYS`).

    split: task t gets classes ``class_order[t*k:(t+1)*k]``; permuted/rotated:
    every task has all classes, transformed by its own permutation/angle.
    class_il/task_il keep global labels (n_outputs = number of classes);
    domain_il relabels split tasks to the within-task index (n_outputs = k).
    avalanche: :func:`cl_bench.data.avalanche_benchmarks.build_benchmark_scenario`.
    """
    if cfg.get("kind") == "avalanche":
        from .avalanche_benchmarks import build_benchmark_scenario

        return build_benchmark_scenario(cfg, root, download)
    spec = _parse_dataset_cfg(cfg)
    src = load_source(spec.source, spec.path or root, download)
    if spec.pad_to is not None:
        h, w = src.input_shape[1:]
        if spec.pad_to < max(h, w):
            raise _err("pad_to", f"{spec.pad_to} is smaller than the {h} x {w} images of {spec.source}")
        src = dataclasses.replace(src, x_train=pad_images(src.x_train, spec.pad_to),
                                  x_test=pad_images(src.x_test, spec.pad_to))
    tasks = [_task(spec, src, t, f) for t, f in enumerate(_transforms(spec, src))]
    n_outputs = cast(int, spec.classes_per_task) if spec.setting == "domain_il" and spec.kind == "split" \
        else src.n_classes
    mean, std = (src.mean, src.std) if spec.normalize else ((), ())
    return Scenario(name=spec.name, setting=spec.setting, tasks=tasks, n_outputs=n_outputs,
                    input_shape=src.input_shape, mean=mean, std=std)
