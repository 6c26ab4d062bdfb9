"""Materialise any Avalanche benchmark into a cl-bench :class:`Scenario`.

Each train/test experience's dataset is read once through a torch
``DataLoader`` in large batches (its own transforms applied) into tensors.
Images: float tensors with every value in ``[0, 1]`` (e.g. after
``ToTensor``) become ``uint8`` via ``round(255 x)`` (exact for 8-bit images)
and get the training mean/std for normalisation; any other images (``uint8``,
or floats outside ``[0, 1]`` such as already-normalised data) are stored as
given, and the scenario then carries no mean/std. ``[N, H, W]`` images get a
channel axis. Task ids are the experience indices (Avalanche task labels are
ignored). In domain-IL, labels become their position among the experience's
sorted training classes.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from .sources import channel_stats
from .task import SETTINGS, Scenario, Setting, Task


def _materialise(dataset: Any, batch_size: int) -> tuple[Tensor, Tensor]:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False,
                        collate_fn=getattr(dataset, "collate_fn", None))
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


def scenario_from_avalanche(benchmark: Any, setting: str, name: str, batch_size: int = 4096) -> Scenario:
    """One :class:`Task` per experience of ``benchmark.train_stream`` / ``test_stream`` (same length)."""
    if setting not in SETTINGS:
        raise ValueError(f"setting: unknown setting {setting!r}; valid settings: {', '.join(SETTINGS)}")
    train_stream, test_stream = list(benchmark.train_stream), list(benchmark.test_stream)
    if len(train_stream) != len(test_stream) or not train_stream:
        raise ValueError(f"benchmark {name!r}: train stream has {len(train_stream)} experiences, test stream "
                         f"{len(test_stream)}; need the same non-zero number")
    train = [_materialise(e.dataset, batch_size) for e in train_stream]
    test = [_materialise(e.dataset, batch_size) for e in test_stream]
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
