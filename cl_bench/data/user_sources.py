"""Datasets of one's own: tensors in a ``.npz`` / ``.pt`` file, an ImageFolder-style directory, or a
registered Python factory (:func:`cl_bench.registry.register_dataset`).

Each becomes a :class:`~cl_bench.data.sources.Source`, so every scenario kind
(split, permuted, rotated) applies to it as to a built-in dataset, and the
configuration records what was read: the file digests (``data.files``) and the
dataset's name, shapes and classes (``data.source``).

- ``scenario.source: npz`` or ``pt`` with ``scenario.path: FILE``: the arrays (an
  ``.npz`` archive, or a dict saved with ``torch.save``) ``x_train``, ``y_train``,
  ``x_test``, ``y_test`` and optionally ``class_names``.
- ``scenario.source: image_folder`` with ``scenario.path: DIR``: ``DIR/train/<class>/*``
  and ``DIR/test/<class>/*`` (PNG or JPEG, all of one size; the classes are the
  sorted folder names of ``train``).
- ``scenario.source: <name>`` of a registered factory returning the same mapping.

Images are ``[N, C, H, W]`` or ``[N, H, W]`` (one channel added); ``[N, D]``
feature vectors become ``[N, 1, 1, D]``. ``uint8`` images are scaled to [0, 1]
and normalised with their training mean/std like the built-in datasets; float
inputs are not rescaled and are normalised with their own per-channel mean/std.
Labels are integers ``0..C-1``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .sources import DatasetFileError, DatasetNotFoundError, Source, channel_stats

FILE_FORMATS: dict[str, str] = {
    "npz": "your arrays in a .npz file (scenario.path): x_train, y_train, x_test, y_test[, class_names]",
    "pt": "your tensors in a torch.save dict (scenario.path): x_train, y_train, x_test, y_test[, class_names]",
    "image_folder": "your images in scenario.path/{train,test}/<class>/*.png|jpg (one size; classes = folder names)",
}
ARRAYS = ("x_train", "y_train", "x_test", "y_test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _images(x: Any, where: str) -> Tensor:
    t = torch.as_tensor(np.asarray(x)) if not isinstance(x, Tensor) else x
    if t.dtype == torch.bool or t.is_complex():
        raise DatasetFileError(f"{where}: images must be uint8 or float, got {t.dtype}")
    if t.dim() == 2:
        t = t[:, None, None, :]
    elif t.dim() == 3:
        t = t[:, None]
    if t.dim() != 4:
        raise DatasetFileError(f"{where}: images must be [N, C, H, W], [N, H, W] or [N, D], got {list(t.shape)}")
    return t.contiguous() if t.dtype == torch.uint8 else t.float().contiguous()


def _labels(y: Any, n: int, where: str) -> Tensor:
    t = torch.as_tensor(np.asarray(y)) if not isinstance(y, Tensor) else y
    if t.dim() != 1 or t.numel() != n or t.is_floating_point() or t.dtype == torch.bool:
        raise DatasetFileError(f"{where}: labels must be {n} integers (one per image), got {t.dtype} {list(t.shape)}")
    return t.long()


def _float_stats(x: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    flat = x.transpose(0, 1).reshape(x.shape[1], -1).double()
    std = flat.std(dim=1, unbiased=False).clamp_min(1e-12)
    return tuple(flat.mean(dim=1).tolist()), tuple(std.tolist())


def source_from_arrays(name: str, arrays: Mapping[str, Any], where: str) -> Source:
    """A :class:`Source` from the four arrays (and optional ``class_names``); errors name ``where`` and the array."""
    missing = [k for k in ARRAYS if k not in arrays]
    if missing:
        raise DatasetFileError(f"{where}: missing {', '.join(missing)} (needs {', '.join(ARRAYS)}; has "
                               f"{', '.join(sorted(arrays)) or 'nothing'})")
    x_train, x_test = _images(arrays["x_train"], f"{where}: x_train"), _images(arrays["x_test"], f"{where}: x_test")
    if x_train.shape[1:] != x_test.shape[1:] or x_train.dtype != x_test.dtype:
        raise DatasetFileError(f"{where}: x_train {x_train.dtype} {list(x_train.shape)} and x_test {x_test.dtype} "
                               f"{list(x_test.shape)} differ in shape or dtype")
    y_train = _labels(arrays["y_train"], x_train.shape[0], f"{where}: y_train")
    y_test = _labels(arrays["y_test"], x_test.shape[0], f"{where}: y_test")
    names = arrays.get("class_names")
    n_classes = len(names) if names is not None else 1 + int(max(y_train.max(), y_test.max()))
    for key, y in (("y_train", y_train), ("y_test", y_test)):
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= n_classes):
            raise DatasetFileError(f"{where}: {key} has labels outside 0..{n_classes - 1}")
    class_names = tuple(str(c) for c in names) if names is not None else tuple(str(c) for c in range(n_classes))
    mean, std = channel_stats(x_train) if x_train.dtype == torch.uint8 else _float_stats(x_train)
    return Source(name, x_train, y_train, x_test, y_test, class_names, mean, std)


def load_file(fmt: str, path: Path) -> Source:
    """The dataset of ``scenario.source: npz | pt | image_folder`` at ``path``."""
    if not path.exists():
        raise DatasetNotFoundError(f"scenario.path={path}: not found (scenario.source={fmt} reads it)")
    if fmt == "image_folder":
        return load_image_folder(path)
    if not path.is_file():
        raise DatasetFileError(f"scenario.path={path}: is a directory; source={fmt} reads one file")
    try:
        if fmt == "npz":
            with np.load(path, allow_pickle=False) as archive:
                arrays: Any = {k: archive[k] for k in archive.files}
        else:
            arrays = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise DatasetFileError(f"scenario.path={path}: not a readable .{fmt} file ({type(err).__name__}: {err})") \
            from err
    if not isinstance(arrays, Mapping):
        raise DatasetFileError(f"scenario.path={path}: holds a {type(arrays).__name__}, not a mapping of arrays")
    return source_from_arrays(path.stem, arrays, f"scenario.path={path}")


def image_files(root: Path) -> list[Path]:
    """The image files of an ImageFolder-style directory, sorted."""
    return sorted(p for p in root.glob("*/*/*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def load_image_folder(root: Path) -> Source:
    """``root/train/<class>/*`` and ``root/test/<class>/*`` decoded once into ``uint8`` tensors."""
    from torchvision.io import decode_image

    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir()) if (root / "train").is_dir() else []
    if not classes or not (root / "test").is_dir():
        raise DatasetNotFoundError(f"scenario.path={root}: needs train/<class>/ and test/<class>/ folders of images")
    arrays: dict[str, Any] = {"class_names": classes}
    for split in ("train", "test"):
        xs, ys = [], []
        for label, name in enumerate(classes):
            for path in sorted((root / split / name).glob("*")):
                if path.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                try:
                    xs.append(decode_image(str(path)))
                except Exception as err:
                    raise DatasetFileError(f"{path}: not a readable image ({type(err).__name__}: {err})") from err
                if xs[-1].shape != xs[0].shape:
                    raise DatasetFileError(f"{path}: {list(xs[-1].shape)} differs from the first image's "
                                           f"{list(xs[0].shape)}; all images must have one size")
                ys.append(label)
        if not xs:
            raise DatasetNotFoundError(f"scenario.path={root}: no .png/.jpg images under {split}/")
        arrays[f"x_{split}"], arrays[f"y_{split}"] = torch.stack(xs), torch.tensor(ys)
    return source_from_arrays(root.name, arrays, f"scenario.path={root}")


def load_registered(name: str, factory: Any) -> Source:
    """The dataset of a :func:`~cl_bench.registry.register_dataset` factory."""
    try:
        arrays = factory()
    except Exception as err:
        raise DatasetFileError(f"scenario.source={name}: the dataset factory failed ({type(err).__name__}: {err})") \
            from err
    if not isinstance(arrays, Mapping):
        raise DatasetFileError(f"scenario.source={name}: the factory returned a {type(arrays).__name__}, "
                               f"not a mapping with {', '.join(ARRAYS)}")
    return source_from_arrays(name, arrays, f"scenario.source={name}")


def describe(src: Source) -> dict[str, Any]:
    """What a run records about a dataset of one's own: its name, shapes, dtype and classes."""
    return {"name": src.name, "x_train": list(src.x_train.shape), "x_test": list(src.x_test.shape),
            "dtype": str(src.x_train.dtype).removeprefix("torch."), "n_classes": src.n_classes,
            "class_names": list(src.class_names)}
