"""Materialise any Avalanche benchmark into a cl-bench :class:`Scenario`.

Each train/test experience's dataset is read once through a torch
``DataLoader`` in large batches (its own transforms applied) into tensors;
``train_subsample`` / ``test_subsample`` read only that many samples of each
experience, stratified by class (drawn from the experience's ``targets`` with
the scenario ``seed``, like the built-in scenarios' subsets).
Images: float tensors with every value in ``[0, 1]`` (e.g. after
``ToTensor``) become ``uint8`` via ``round(255 x)`` (exact for 8-bit images)
and get the training mean/std for normalisation; any other images (``uint8``,
or floats outside ``[0, 1]`` such as already-normalised data) are stored as
given, and the scenario then carries no mean/std. ``[N, H, W]`` images get a
channel axis. In domain-IL, labels become their position among the
experience's sorted training classes.

Task ids are the experience indices. Avalanche's task labels
(``experience.task_labels``) are read for every setting
(:func:`experience_task_labels`); task-IL needs exactly one label per
experience, a different one for each experience and the same for its train
and test part: the task of experience ``i`` (label ``l_i``) is then told by
task id ``i``, so the model's task input distinguishes exactly the experiences
Avalanche's labels distinguish (``i == l_i`` for benchmarks that number their
tasks in order, e.g. ``SplitMNIST(return_task_id=True)``).
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from cl_bench.seeds import generator

from .scenarios import _TEST_SUBSAMPLE, _TRAIN_SUBSAMPLE
from .sources import channel_stats, stratified_split
from .task import SETTINGS, Scenario, Setting, Task


def _targets(dataset: Any, where: str) -> Tensor:
    targets = getattr(dataset, "targets", None)
    if targets is None:
        raise ValueError(f"{where}: the experience's dataset has no targets to draw a class-stratified subset from")
    return torch.as_tensor(list(targets) if not isinstance(targets, Tensor) else targets).long()


def _subset(dataset: Any, limit: int | None, gen: torch.Generator, where: str) -> Any:
    """At most ``limit`` samples of ``dataset``, stratified by class, in their original order (all: as is)."""
    if limit is None or limit >= len(dataset):
        return dataset
    chosen = stratified_split(_targets(dataset, where), limit, gen)[0]
    return Subset(dataset, chosen.tolist())


def _materialise(dataset: Any, batch_size: int) -> tuple[Tensor, Tensor]:
    inner = dataset.dataset if isinstance(dataset, Subset) else dataset
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False,
                        collate_fn=getattr(inner, "collate_fn", None))
    xs, ys = [], []
    for batch in loader:
        xs.append(torch.as_tensor(batch[0]))
        ys.append(torch.as_tensor(batch[1]).long())
    x, y = torch.cat(xs), torch.cat(ys)
    return (x.unsqueeze(1) if x.dim() == 3 else x), y


def _to_uint8_if_unit(xs: list[Tensor]) -> tuple[list[Tensor], bool]:
    """``round(255 x)`` as uint8 when every image is float in ``[0, 1]``; otherwise unchanged."""
    unit = all(x.is_floating_point() and (x.numel() == 0 or (x.min() >= 0 and x.max() <= 1)) for x in xs)
    if not unit:
        return xs, False
    return [x.mul(255).round_().to(torch.uint8) for x in xs], True


def experience_task_labels(benchmark: Any, setting: str, name: str) -> list[int | None]:
    """The task label of each experience (None where an experience has several), checked for ``setting``.

    Task-IL: a :class:`ValueError` unless every experience has one label, its own, equal in the train and
    the test stream.
    """
    train = [sorted(int(t) for t in e.task_labels) for e in benchmark.train_stream]
    test = [sorted(int(t) for t in e.task_labels) for e in benchmark.test_stream]
    labels = [ls[0] if len(ls) == 1 else None for ls in train]
    if setting != "task_il":
        return labels
    several = [(i, ls) for i, ls in enumerate(train) if len(ls) != 1]
    if several:
        i, ls = several[0]
        raise ValueError(f"benchmark {name!r}: train experience {i} has task labels {ls}; task-IL gives each "
                         "experience one task id, so each needs exactly one task label")
    if len(set(labels)) != len(labels):
        raise ValueError(f"benchmark {name!r}: the experiences' task labels {labels} repeat; task-IL gives each "
                         "experience its own task id, so each needs a label of its own (e.g. return_task_id=True)")
    differ = [i for i, (a, b) in enumerate(zip(train, test)) if a != b]
    if differ:
        i = differ[0]
        raise ValueError(f"benchmark {name!r}: experience {i} has task labels {train[i]} in the train stream "
                         f"and {test[i]} in the test stream")
    return labels


def scenario_from_avalanche(benchmark: Any, setting: str, name: str, batch_size: int = 4096, *,
                            train_subsample: int | None = None, test_subsample: int | None = None,
                            seed: int = 0) -> Scenario:
    """One :class:`Task` per experience of ``benchmark.train_stream`` / ``test_stream`` (same length)."""
    if setting not in SETTINGS:
        raise ValueError(f"setting: unknown setting {setting!r}; valid settings: {', '.join(SETTINGS)}")
    train_stream, test_stream = list(benchmark.train_stream), list(benchmark.test_stream)
    if len(train_stream) != len(test_stream) or not train_stream:
        raise ValueError(f"benchmark {name!r}: train stream has {len(train_stream)} experiences, test stream "
                         f"{len(test_stream)}; need the same non-zero number")
    experience_task_labels(benchmark, setting, name)
    train = [_materialise(_subset(e.dataset, train_subsample, generator(seed, _TRAIN_SUBSAMPLE, t),
                                  f"benchmark {name!r}: train_subsample"), batch_size)
             for t, e in enumerate(train_stream)]
    test = [_materialise(_subset(e.dataset, test_subsample, generator(seed, _TEST_SUBSAMPLE, t),
                                 f"benchmark {name!r}: test_subsample"), batch_size)
            for t, e in enumerate(test_stream)]
    dtypes = {x.dtype for x, _ in train + test}
    if len(dtypes) != 1:
        raise ValueError(f"benchmark {name!r}: experiences have mixed image dtypes {sorted(map(str, dtypes))}")
    xs, unit = _to_uint8_if_unit([x for x, _ in train + test])
    x_train, x_test = xs[:len(train)], xs[len(train):]
    mean, std = channel_stats(torch.cat(x_train)) if unit or dtypes == {torch.uint8} else ((), ())

    n_classes = 1 + max(int(y.max()) for _, y in train + test if y.numel())
    tasks = []
    for t, ((_, y_tr), (_, y_te)) in enumerate(zip(train, test)):
        classes = torch.unique(y_tr)
        if setting == "domain_il":
            lut = torch.full((n_classes,), -1, dtype=torch.long)
            lut[classes] = torch.arange(classes.numel())
            y_tr, y_te = lut[y_tr], lut[y_te]
            if (y_te < 0).any():
                raise ValueError(f"benchmark {name!r}: test experience {t} has classes absent from its training data")
            classes = torch.arange(classes.numel())
        tasks.append(Task(id=t, classes=classes.tolist(), x_train=x_train[t], y_train=y_tr,
                          x_test=x_test[t], y_test=y_te))
    n_outputs = max(len(task.classes) for task in tasks) if setting == "domain_il" else n_classes
    return Scenario(name=name, setting=cast(Setting, setting), tasks=tasks, n_outputs=n_outputs,
                    input_shape=tuple(x_train[0].shape[1:]), mean=mean, std=std)
