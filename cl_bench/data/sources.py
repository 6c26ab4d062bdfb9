"""Image classification datasets loaded once into ``uint8`` tensors.

Every loader returns a :class:`Source`: ``x_*`` ``uint8 [N, C, H, W]``,
``y_*`` ``int64``, the class names, and the per-channel mean/std of the
training images (in ``[0, 1]`` units) for normalisation. Files are looked for
under the data root: explicit ``root`` > env ``CL_BENCH_DATA`` >
``~/.cache/cl_bench``. Loaded sources are cached per process and shared:
treat their tensors as read-only.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

DATA_ENV = "CL_BENCH_DATA"
DEFAULT_ROOT = Path("~/.cache/cl_bench")
TINYIMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINYIMAGENET_CACHE = "cl_bench_tensors.pt"


class DatasetError(Exception):
    """A dataset cannot be used; the message names the file or folder and what to do."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The dataset's files are not where they were expected (and were not downloaded)."""


class DatasetFileError(DatasetError, ValueError):
    """A dataset file exists but does not hold what its format promises (damaged, truncated, wrong type)."""


@dataclass(frozen=True)
class Source:
    """A dataset as tensors: images ``uint8 [N, C, H, W]``, labels ``int64``."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def resolve_root(root: str | os.PathLike | None = None) -> Path:
    """Explicit ``root`` > env ``CL_BENCH_DATA`` > ``~/.cache/cl_bench``."""
    chosen = root if root not in (None, "") else os.environ.get(DATA_ENV) or DEFAULT_ROOT
    return Path(chosen).expanduser().resolve()


def channel_stats(x: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and (population) std of ``uint8`` images in ``[0, 1]`` units.

    From the 256-bin histogram h_c of channel c: mean = sum_v v h_c(v) / n,
    var = sum_v v^2 h_c(v) / n - mean^2 (values v/255), so no float copy of x.
    """
    if x.dtype != torch.uint8 or x.dim() != 4:
        raise ValueError(f"channel_stats needs uint8 [N, C, H, W] images, got {x.dtype} {tuple(x.shape)}")
    values = torch.arange(256, dtype=torch.float64) / 255.0
    hist = torch.stack([torch.bincount(x[:, c].flatten(), minlength=256) for c in range(x.shape[1])])
    hist = hist.to(torch.float64)
    n = hist.sum(dim=1)
    mean = (hist * values).sum(dim=1) / n
    var = (hist * values**2).sum(dim=1) / n - mean**2
    return tuple(mean.tolist()), tuple(var.clamp_min(0).sqrt().tolist())


def stratified_split(y: Tensor, n_first: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Split indices of ``y`` into ``n_first`` and the rest, keeping class proportions.

    Class c contributes k_c = floor(n_c q) + (1 for the largest remainders)
    samples, q = n_first / N, chosen uniformly at random within the class.
    Both index sets are returned sorted.
    """
    n = y.numel()
    if not 0 <= n_first <= n:
        raise ValueError(f"stratified_split: n_first={n_first} outside [0, {n}]")
    classes, counts = torch.unique(y, return_counts=True)
    quota = counts.double() * (n_first / max(n, 1))
    k = quota.floor().long()
    extra = n_first - int(k.sum())
    k[torch.argsort(k.double() - quota, stable=True)[:extra]] += 1
    shuffled = torch.randperm(n, generator=generator)
    by_class = shuffled[torch.argsort(y[shuffled], stable=True)]
    cls_index = torch.searchsorted(classes, y[by_class])
    rank = torch.arange(n) - (torch.cumsum(counts, 0) - counts)[cls_index]
    take = rank < k[cls_index]
    return by_class[take].sort().values, by_class[~take].sort().values


def _source(name: str, x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor,
            class_names: list[str] | tuple[str, ...]) -> Source:
    mean, std = channel_stats(x_train)
    return Source(name, x_train.contiguous(), y_train.long(), x_test.contiguous(), y_test.long(),
                  tuple(class_names), mean, std)


def _not_found(name: str, root: Path, sub: str, missing: list[str], hint: str = "") -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"dataset '{name}' not found: expected {', '.join(missing)} in {root / sub}{hint}. "
        f"Fix: put the files there, or point data.root=... (or the {DATA_ENV} environment variable) "
        f"at the directory that contains '{sub}', or set data.download=true when a network is available."
    )


def _missing(folder: Path, files: list[str]) -> list[str]:
    return [f for f in files if not (folder / f).is_file()]


def _load_digits(root: Path, download: bool, verify: bool) -> Source:
    """scikit-learn's embedded 8x8 digits: 0..16 scaled to 0..255, stratified 1437/360 split (seed 0)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images).mul(255.0 / 16.0).round().to(torch.uint8).unsqueeze(1)
    labels = torch.from_numpy(digits.target).long()
    test_idx, train_idx = stratified_split(labels, 360, torch.Generator().manual_seed(0))
    names = [str(n) for n in digits.target_names]
    return _source("digits", images[train_idx], labels[train_idx], images[test_idx], labels[test_idx], names)


MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
IDX_UINT8 = 0x08
IDX_TYPES = {0x08: "uint8", 0x09: "int8", 0x0B: "int16", 0x0C: "int32", 0x0D: "float32", 0x0E: "float64"}


def read_idx(path: Path, ndim: int, fix: str) -> np.ndarray:
    """An uncompressed IDX file of ``uint8``: bytes ``00 00 08 <ndim>``, ``ndim`` big-endian int32
    sizes, then prod(sizes) bytes. Anything else is a :class:`DatasetFileError` naming the file."""
    data = path.read_bytes()

    def bad(what: str) -> DatasetFileError:
        return DatasetFileError(f"{path}: {what}. {fix}")

    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise bad(f"bad magic number 0x{data[:4].hex()} (an IDX file starts with 00 00 <type> <ndim>)")
    if data[2] != IDX_UINT8:
        raise bad(f"payload type {IDX_TYPES.get(data[2], hex(data[2]))}; MNIST-format files hold uint8")
    if data[3] != ndim:
        raise bad(f"holds a {data[3]}-d array, expected {ndim}-d")
    head = 4 + 4 * ndim
    if len(data) < head:
        raise bad(f"truncated: {len(data)} bytes, the header alone needs {head}")
    shape = tuple(int(v) for v in np.frombuffer(data, ">i4", ndim, 4))
    expected = head + int(np.prod(shape))
    if len(data) != expected:
        raise bad(f"{len(data)} bytes, but the header announces {shape} = {expected} bytes "
                  f"({'truncated' if len(data) < expected else 'trailing bytes'})")
    return np.frombuffer(data, np.uint8, offset=head).reshape(shape)


def check_labels(labels: np.ndarray, n_images: int, n_classes: int, path: Path, fix: str) -> None:
    """As many labels as images, each in ``0 .. n_classes-1``."""
    if len(labels) != n_images:
        raise DatasetFileError(f"{path}: {len(labels)} labels for {n_images} images; the label and image "
                               f"files must come from the same split. {fix}")
    outside = labels[(labels < 0) | (labels >= n_classes)]
    if len(outside):
        raise DatasetFileError(f"{path}: {len(outside)} labels outside 0..{n_classes - 1} "
                               f"(e.g. {sorted(set(outside.tolist()))[:5]}). {fix}")


def _mnist_like(class_name: str, name: str) -> Callable[[Path, bool, bool], Source]:
    """MNIST-format files in ``<root>/<ClassName>/raw`` (IDX, uncompressed), read and checked here;
    torchvision only downloads them."""

    def load(root: Path, download: bool, verify: bool) -> Source:
        import torchvision.datasets as tvd

        cls = getattr(tvd, class_name)
        sub = f"{class_name}/raw"
        folder = root / sub
        expected = [f for pair in MNIST_FILES.values() for f in pair]
        missing = _missing(folder, expected)
        if missing and not download:
            raise _not_found(name, root, sub, missing)
        if missing:
            try:
                cls(str(root), train=True, download=True)
            except (RuntimeError, OSError) as err:
                raise _not_found(name, root, sub, _missing(folder, expected), f" (download failed: {err})") from err
        fix = f"Replace the {name} files in {folder} with intact copies (or delete them and set data.download=true)."
        n_classes = len(cls.classes)
        split: dict[str, tuple[Tensor, Tensor]] = {}
        for part, (images_file, labels_file) in MNIST_FILES.items():
            images = read_idx(folder / images_file, 3, fix)
            if images.shape[1:] != (28, 28):
                raise DatasetFileError(f"{folder / images_file}: images of {images.shape[1:]}, expected 28x28. {fix}")
            labels = read_idx(folder / labels_file, 1, fix)
            check_labels(labels, len(images), n_classes, folder / labels_file, fix)
            split[part] = torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))
        return _source(name, *split["train"], *split["test"], list(cls.classes))

    return load


def _without_md5(cls: type[Any]) -> type:
    """Subclass of a torchvision CIFAR class whose files are checked for presence only.

    torchvision verifies every CIFAR file against the md5 of the official
    archive (``CIFAR10._check_integrity`` and ``_load_meta`` call
    ``check_integrity(path, md5)``); with ``md5=None`` that call checks that
    the file exists. Parsing stays torchvision's own.
    """
    return type(f"{cls.__name__}NoMD5", (cls,), {
        "train_list": [[f, None] for f, _ in cls.train_list],
        "test_list": [[f, None] for f, _ in cls.test_list],
        "meta": {**cls.meta, "md5": None},
    })


def _cifar(class_name: str, name: str) -> Callable[[Path, bool, bool], Source]:
    """The torchvision CIFAR reader: python pickle batches in ``<root>/<base_folder>``."""

    def load(root: Path, download: bool, verify: bool) -> Source:
        import torchvision.datasets as tvd

        cls = getattr(tvd, class_name)
        sub = cls.base_folder
        folder = root / sub
        expected = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
        missing = _missing(folder, expected)
        if missing and not download:
            raise _not_found(name, root, sub, missing)
        reader = cls if verify else _without_md5(cls)
        fix = f"Replace the {name} files in {folder} with intact copies (or delete them and set data.download=true)."
        try:
            train, test = reader(str(root), train=True, download=download), reader(str(root), train=False)
        except (pickle.UnpicklingError, EOFError, ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
            raise DatasetFileError(f"dataset '{name}': a batch file in {folder} is damaged "
                                   f"({type(err).__name__}: {err}). {fix}") from err
        except (RuntimeError, OSError) as err:
            if not _missing(folder, expected):
                raise RuntimeError(
                    f"dataset '{name}': the files in {folder} fail torchvision's md5 check against the official "
                    f"archive. Re-download them (delete the folder, data.download=true), or load with "
                    f"verify=False if you made these files yourself."
                ) from err
            raise _not_found(name, root, sub, _missing(folder, expected), f" (download failed: {err})") from err

        for part, data in (("train", train), ("test", test)):
            if data.data.dtype != np.uint8:
                raise DatasetFileError(f"dataset '{name}': the {part} batches in {folder} hold {data.data.dtype} "
                                       f"pixels, expected uint8. {fix}")
            check_labels(np.asarray(data.targets), len(data.data), len(train.classes), folder, fix)

        def to_nchw(data) -> Tensor:
            return torch.from_numpy(data).permute(0, 3, 1, 2)

        return _source(name, to_nchw(train.data), torch.tensor(train.targets), to_nchw(test.data),
                       torch.tensor(test.targets), list(train.classes))

    return load


def _decode_jpegs(paths: list[Path]) -> Tensor:
    """Decode JPEG files once (load time only) into ``uint8 [N, 3, H, W]``; grey images become RGB."""
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    images = decode_jpeg([read_file(str(p)) for p in paths], mode=ImageReadMode.RGB)
    return torch.stack(images) if images else torch.zeros(0, 3, 64, 64, dtype=torch.uint8)


def _load_tinyimagenet(root: Path, download: bool, verify: bool) -> Source:
    """TinyImageNet-200 (the labelled ``val`` split serves as test set).

    Layout: ``tiny-imagenet-200/wnids.txt``, ``train/<wnid>/images/*.JPEG``,
    ``val/images/*.JPEG`` + ``val/val_annotations.txt`` (file, wnid, box).
    The decoded tensors are cached in ``tiny-imagenet-200/cl_bench_tensors.pt``
    (delete it to rebuild).
    """
    folder = root / "tiny-imagenet-200"
    expected = ["wnids.txt", "val/val_annotations.txt"]
    if _missing(folder, expected) and download:
        from torchvision.datasets.utils import download_and_extract_archive

        try:
            download_and_extract_archive(TINYIMAGENET_URL, str(root))
        except (RuntimeError, OSError) as err:
            raise _not_found("tinyimagenet", root, folder.name, _missing(folder, expected),
                             f" (download failed: {err})") from err
    missing = _missing(folder, expected)
    if missing:
        raise _not_found("tinyimagenet", root, folder.name,
                         missing + ["train/<wnid>/images/*.JPEG", "val/images/*.JPEG"])
    cache = folder / TINYIMAGENET_CACHE
    if cache.is_file():
        d = torch.load(cache, weights_only=True)
        return _source("tinyimagenet", d["x_train"], d["y_train"], d["x_test"], d["y_test"], d["class_names"])

    wnids = (folder / "wnids.txt").read_text().split()
    index = {w: i for i, w in enumerate(wnids)}
    train_paths: list[Path] = []
    train_labels: list[int] = []
    for wnid in wnids:
        files = sorted((folder / "train" / wnid / "images").glob("*.JPEG"))
        if not files:
            raise _not_found("tinyimagenet", root, f"{folder.name}/train/{wnid}/images", ["*.JPEG"])
        train_paths += files
        train_labels += [index[wnid]] * len(files)
    rows = [line.split("\t") for line in (folder / "val" / "val_annotations.txt").read_text().splitlines() if line]
    rows.sort(key=lambda r: r[0])
    unknown = sorted({r[1] for r in rows} - index.keys())
    if unknown:
        raise ValueError(f"tinyimagenet: val_annotations.txt names wnids not in wnids.txt: {unknown[:5]}")
    test_paths = [folder / "val" / "images" / r[0] for r in rows]
    words = folder / "words.txt"
    names = dict(line.split("\t", 1) for line in words.read_text().splitlines() if "\t" in line) \
        if words.is_file() else {}
    d = {
        "x_train": _decode_jpegs(train_paths),
        "y_train": torch.tensor(train_labels, dtype=torch.long),
        "x_test": _decode_jpegs(test_paths),
        "y_test": torch.tensor([index[r[1]] for r in rows], dtype=torch.long),
        "class_names": [names.get(w, w) for w in wnids],
    }
    tmp = cache.with_suffix(".tmp")
    torch.save(d, tmp)
    tmp.replace(cache)
    return _source("tinyimagenet", d["x_train"], d["y_train"], d["x_test"], d["y_test"], d["class_names"])


def _mnist_files(class_name: str) -> Callable[[Path], list[Path]]:
    return lambda root: [root / class_name / "raw" / f for pair in MNIST_FILES.values() for f in pair]


def _cifar_files(class_name: str) -> Callable[[Path], list[Path]]:
    def files(root: Path) -> list[Path]:
        import torchvision.datasets as tvd

        cls = getattr(tvd, class_name)
        names = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
        return [root / cls.base_folder / f for f in names]

    return files


def _tinyimagenet_files(root: Path) -> list[Path]:
    folder = root / "tiny-imagenet-200"
    return [folder / "wnids.txt", folder / "val" / "val_annotations.txt", folder / TINYIMAGENET_CACHE]


@dataclass(frozen=True)
class _Spec:
    description: str
    n_classes: int
    load: Callable[[Path, bool, bool], Source]
    files: Callable[[Path], list[Path]] = lambda root: []  # the files a load reads (their content = the data)
    uses_root: bool = True


_SPECS: dict[str, _Spec] = {
    "digits": _Spec("scikit-learn 8x8 handwritten digits, 10 classes, 1437/360 (embedded, no download)",
                    10, _load_digits, uses_root=False),
    "mnist": _Spec("MNIST handwritten digits, 28x28 grey, 10 classes, 60000/10000", 10, _mnist_like("MNIST", "mnist"),
                   _mnist_files("MNIST")),
    "fashion_mnist": _Spec("Fashion-MNIST clothing, 28x28 grey, 10 classes, 60000/10000", 10,
                           _mnist_like("FashionMNIST", "fashion_mnist"), _mnist_files("FashionMNIST")),
    "kmnist": _Spec("Kuzushiji-MNIST cursive Japanese, 28x28 grey, 10 classes, 60000/10000", 10,
                    _mnist_like("KMNIST", "kmnist"), _mnist_files("KMNIST")),
    "cifar10": _Spec("CIFAR-10 objects, 32x32 RGB, 10 classes, 50000/10000", 10, _cifar("CIFAR10", "cifar10"),
                     _cifar_files("CIFAR10")),
    "cifar100": _Spec("CIFAR-100 objects, 32x32 RGB, 100 classes, 50000/10000", 100, _cifar("CIFAR100", "cifar100"),
                      _cifar_files("CIFAR100")),
    "tinyimagenet": _Spec("TinyImageNet-200, 64x64 RGB, 200 classes, 100000/10000 (val as test)", 200,
                          _load_tinyimagenet, _tinyimagenet_files),
}
SOURCE_INFO: dict[str, str] = {name: spec.description for name, spec in _SPECS.items()}
_CACHE: dict[tuple[str, str | None, bool], Source] = {}
_DIGESTS: dict[tuple[str, int, int], str] = {}


def _user_spec(name: str) -> _Spec | None:
    """The spec of a file format (``scenario.path``) or a registered dataset factory (:mod:`.user_sources`)."""
    from cl_bench.registry import DATASETS, load_plugins

    from .user_sources import FILE_FORMATS, image_files, load_file, load_registered

    if name in FILE_FORMATS:
        return _Spec(FILE_FORMATS[name], 0, lambda root, download, verify: load_file(name, root),
                     (lambda root: image_files(root)) if name == "image_folder" else (lambda root: [root]))
    load_plugins()
    if name in DATASETS:
        factory = DATASETS[name]
        doc = ((factory.__doc__ or "").strip().splitlines() or ["your dataset"])[0]
        return _Spec(f"[registered] {doc}", 0, lambda root, download, verify: load_registered(name, factory),
                     uses_root=False)
    return None


def source_info() -> dict[str, str]:
    """Every valid ``scenario.source`` with its description: built-in, file formats, registered factories."""
    from cl_bench.registry import DATASETS, load_plugins

    from .user_sources import FILE_FORMATS

    load_plugins()
    return {**SOURCE_INFO, **FILE_FORMATS, **{n: _user_spec(n).description for n in DATASETS}}  # type: ignore[union-attr]


def user_source(name: str) -> bool:
    """Whether ``name`` is a file format or a registered factory (data described in the run's config)."""
    return name not in _SPECS and _user_spec(name) is not None


def needs_path(name: str) -> bool:
    """Whether ``scenario.source=name`` reads the file or folder of ``scenario.path``."""
    from .user_sources import FILE_FORMATS

    return name in FILE_FORMATS


def _spec(name: str) -> _Spec:
    spec = _SPECS.get(name) or _user_spec(name)
    if spec is None:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(source_info())}")
    return spec


def source_num_classes(name: str, root: str | os.PathLike | None = None) -> int:
    """Number of classes of a dataset: known without loading it for the built-in ones; a dataset of one's own
    (``root``: its ``scenario.path``) is loaded (once per process) to count them."""
    spec = _spec(name)
    return spec.n_classes or load_source(name, root).n_classes


def load_source(name: str, root: str | os.PathLike | None = None, download: bool = False,
                *, verify: bool = True) -> Source:
    """Load dataset ``name`` as tensors, once per process (cached on (name, resolved root, verify)).

    ``verify=False`` skips torchvision's md5 check of CIFAR files (files are
    then only required to exist): for user-made files in the official format,
    e.g. subsets or tests. Other datasets have no checksum and ignore it.
    """
    spec = _spec(name)
    resolved = resolve_root(root)
    key = (name, str(resolved) if spec.uses_root else None, verify)
    if key not in _CACHE:
        _CACHE[key] = spec.load(resolved, download, verify)
    return _CACHE[key]


def clear_source_cache() -> None:
    """Forget every loaded source (frees memory; tests use it)."""
    _CACHE.clear()


def _digest(path: Path) -> str:
    """``<size>:<sha256 prefix>`` of a file's content, hashed once per (path, size, mtime) in a process."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        sha = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                sha.update(block)
        _DIGESTS[key] = f"{stat.st_size}:{sha.hexdigest()[:16]}"
    return _DIGESTS[key]


def source_fingerprint(name: str, root: str | os.PathLike | None = None) -> dict[str, str]:
    """What identifies the data a load of ``name`` reads: ``<size>:<sha256 prefix>`` of each of its files
    present under the resolved root (keyed by the path below the root); empty for embedded datasets."""
    spec = _spec(name)
    resolved = resolve_root(root)
    return {(str(p.relative_to(resolved)) if p != resolved else p.name): _digest(p)
            for p in spec.files(resolved) if p.is_file()}
