"""Dataset loaders on files written here in the real on-disk formats."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.io import encode_jpeg

from cl_bench.data.sources import (
    DEFAULT_ROOT,
    SOURCE_INFO,
    TINYIMAGENET_CACHE,
    DatasetNotFoundError,
    channel_stats,
    clear_source_cache,
    load_source,
    resolve_root,
    source_num_classes,
    stratified_split,
)

REAL_MNIST = Path(os.environ.get("CL_BENCH_DATA") or "/nonexistent")  # the folder holding MNIST/raw


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX (uncompressed): 0x00 0x00 0x08 ndim, big-endian int32 dims, uint8 data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, folder: str, n_train: int = 30, n_test: int = 12, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test),
    }
    for name, array in arrays.items():
        write_idx(root / folder / "raw" / name, array)
    return arrays


def write_pickle(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def cifar_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    """CIFAR row layout: 3072 bytes = 1024 red, 1024 green, 1024 blue, each row-major 32x32."""
    return rng.integers(0, 256, (n, 3072)).astype(np.uint8)


def write_cifar10(root: Path) -> tuple[np.ndarray, list[int], np.ndarray, list[int]]:
    rng = np.random.default_rng(1)
    folder = root / "cifar-10-batches-py"
    xs, ys = [], []
    for i in range(1, 6):
        x, y = cifar_rows(rng, 4), rng.integers(0, 10, 4).tolist()
        write_pickle(folder / f"data_batch_{i}", {"batch_label": f"batch {i}", "labels": y, "data": x,
                                                  "filenames": [f"{i}_{j}.png" for j in range(4)]})
        xs.append(x)
        ys += y
    x_test, y_test = cifar_rows(rng, 5), rng.integers(0, 10, 5).tolist()
    write_pickle(folder / "test_batch", {"batch_label": "test", "labels": y_test, "data": x_test, "filenames": []})
    write_pickle(folder / "batches.meta", {"label_names": [f"c{k}" for k in range(10)], "num_vis": 3072})
    return np.concatenate(xs), ys, x_test, y_test


def write_cifar100(root: Path) -> tuple[np.ndarray, list[int], np.ndarray, list[int]]:
    rng = np.random.default_rng(2)
    folder = root / "cifar-100-python"
    x, y = cifar_rows(rng, 7), rng.integers(0, 100, 7).tolist()
    x_test, y_test = cifar_rows(rng, 3), rng.integers(0, 100, 3).tolist()
    for name, xx, yy in (("train", x, y), ("test", x_test, y_test)):
        write_pickle(folder / name, {"filenames": [], "batch_label": name, "fine_labels": yy,
                                     "coarse_labels": [v // 5 for v in yy], "data": xx})
    write_pickle(folder / "meta", {"fine_label_names": [f"f{k}" for k in range(100)],
                                   "coarse_label_names": [f"g{k}" for k in range(20)]})
    return x, y, x_test, y_test


def write_tinyimagenet(root: Path) -> dict[str, torch.Tensor]:
    """3 classes x 2 train images, 3 val images (one greyscale), 16x16 solid-colour JPEGs."""
    folder = root / "tiny-imagenet-200"
    wnids = ["n002", "n001", "n003"]  # file order is not sorted: labels follow wnids.txt
    (folder).mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (folder / "words.txt").write_text("n001\tcat\nn002\tdog\nn003\tfish\nn999\tother\n")
    colours = {}
    for k, wnid in enumerate(wnids):
        images = folder / "train" / wnid / "images"
        images.mkdir(parents=True)
        for j in range(2):
            colour = torch.tensor([40 * k + 20, 100 + 50 * j, 200 - 30 * k], dtype=torch.uint8)
            img = colour.view(3, 1, 1).expand(3, 16, 16).contiguous()
            (images / f"{wnid}_{j}.JPEG").write_bytes(encode_jpeg(img, quality=100).numpy().tobytes())
            colours[f"{wnid}_{j}"] = colour
    (folder / "val" / "images").mkdir(parents=True)
    rows = []
    for i, wnid in enumerate(["n003", "n002", "n001"]):
        grey = i == 2
        img = torch.full((1 if grey else 3, 16, 16), 60 + 70 * i, dtype=torch.uint8)
        (folder / "val" / "images" / f"val_{i}.JPEG").write_bytes(encode_jpeg(img, quality=100).numpy().tobytes())
        rows.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t15\t15")
        colours[f"val_{i}"] = torch.full((3,), 60 + 70 * i, dtype=torch.uint8)
    (folder / "val" / "val_annotations.txt").write_text("\n".join(rows) + "\n")
    return colours


def test_source_info_lists_every_loadable_name() -> None:
    assert set(SOURCE_INFO) == {"digits", "mnist", "fashion_mnist", "kmnist", "cifar10", "cifar100", "tinyimagenet"}
    assert all(isinstance(v, str) and v for v in SOURCE_INFO.values())


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown dataset 'svhn'.*digits.*cifar100"):
        load_source("svhn")
    with pytest.raises(ValueError, match="valid names"):
        source_num_classes("svhn")


def test_root_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CL_BENCH_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_root() == (tmp_path / "home" / ".cache" / "cl_bench").resolve()
    assert str(DEFAULT_ROOT) == "~/.cache/cl_bench"
    monkeypatch.setenv("CL_BENCH_DATA", str(tmp_path / "env"))
    assert resolve_root() == (tmp_path / "env").resolve()
    assert resolve_root(tmp_path / "explicit") == (tmp_path / "explicit").resolve()


def test_digits_split_and_scaling() -> None:
    from sklearn.datasets import load_digits

    src = load_source("digits")
    assert src.x_train.shape == (1437, 1, 8, 8) and src.x_test.shape == (360, 1, 8, 8)
    assert src.x_train.dtype == torch.uint8 and src.y_train.dtype == torch.int64
    assert src.n_classes == 10 and src.input_shape == (1, 8, 8)
    # every original image (values 0..16) is recovered exactly from v = round(255 u / 16)
    digits = load_digits()
    original = torch.from_numpy(digits.images).long().flatten(1)
    ours = torch.cat([src.x_train, src.x_test]).flatten(1).double()
    recovered = (ours * 16 / 255).round().long()
    ref = {(tuple(row.tolist()), int(y)) for row, y in zip(original, digits.target)}
    got = {(tuple(row.tolist()), int(y)) for row, y in zip(recovered, torch.cat([src.y_train, src.y_test]))}
    assert got == ref
    # stratified: each class's test share is within one sample of 360/1797
    n_class = torch.bincount(torch.from_numpy(digits.target), minlength=10).double()
    n_test = torch.bincount(src.y_test, minlength=10).double()
    assert torch.all((n_test - n_class * 360 / 1797).abs() < 1)
    # deterministic and cached
    assert load_source("digits") is src
    clear_source_cache()
    again = load_source("digits")
    assert again is not src and torch.equal(again.x_train, src.x_train) and torch.equal(again.y_test, src.y_test)


def test_channel_stats_match_brute_force() -> None:
    x = torch.randint(0, 256, (7, 3, 5, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mean, std = channel_stats(x)
    xf = x.double() / 255
    assert torch.allclose(torch.tensor(mean, dtype=torch.float64), xf.mean(dim=(0, 2, 3)), atol=1e-12)
    assert torch.allclose(torch.tensor(std, dtype=torch.float64), xf.std(dim=(0, 2, 3), unbiased=False), atol=1e-12)


def test_stratified_split_keeps_class_proportions() -> None:
    y = torch.tensor([0] * 10 + [1] * 6 + [2] * 4)
    first, rest = stratified_split(y, 5, torch.Generator().manual_seed(3))
    assert torch.equal(torch.cat([first, rest]).sort().values, torch.arange(20))
    assert torch.bincount(y[first], minlength=3).tolist() == [3, 1, 1]  # quotas 2.5, 1.5, 1.0
    again, _ = stratified_split(y, 5, torch.Generator().manual_seed(3))
    assert torch.equal(first, again)


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST"),
                                          ("kmnist", "KMNIST")])
def test_mnist_family_reads_idx_files(data_root: Path, name: str, folder: str) -> None:
    arrays = write_mnist(data_root, folder)
    src = load_source(name)  # root from CL_BENCH_DATA
    assert src.x_train.shape == (30, 1, 28, 28) and src.x_test.shape == (12, 1, 28, 28)
    assert src.x_train.dtype == torch.uint8 and src.y_train.dtype == torch.int64
    assert torch.equal(src.x_train[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"]).to(torch.uint8))
    assert torch.equal(src.y_test, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"]).long())
    assert src.n_classes == 10
    xf = src.x_train.double() / 255
    assert src.mean[0] == pytest.approx(xf.mean().item()) and src.std[0] == pytest.approx(xf.std(unbiased=False).item())
    assert load_source(name, root=data_root) is src  # same resolved root -> cached


def test_cifar10_pickles(data_root: Path) -> None:
    x, y, x_test, y_test = write_cifar10(data_root)
    # the files are not the official archive: torchvision's md5 check refuses them, and says so
    with pytest.raises(RuntimeError, match="md5.*verify=False"):
        load_source("cifar10")
    src = load_source("cifar10", verify=False)
    assert src.x_train.shape == (20, 3, 32, 32) and src.x_test.shape == (5, 3, 32, 32)
    assert src.x_train.dtype == torch.uint8 and src.y_train.tolist() == y and src.y_test.tolist() == y_test
    # pixel (c, h, w) of image i is byte c*1024 + h*32 + w of row i
    for i, c, h, w in [(0, 0, 0, 0), (3, 1, 5, 7), (19, 2, 31, 30), (8, 2, 0, 31)]:
        assert int(src.x_train[i, c, h, w]) == int(x[i, c * 1024 + h * 32 + w])
    assert torch.equal(src.x_test.reshape(5, -1), torch.from_numpy(x_test))
    assert src.class_names == tuple(f"c{k}" for k in range(10))
    xf = src.x_train.double() / 255
    assert np.allclose(src.mean, xf.mean(dim=(0, 2, 3)).numpy()) and len(src.std) == 3


def test_cifar100_pickles(data_root: Path) -> None:
    x, y, x_test, y_test = write_cifar100(data_root)
    src = load_source("cifar100", verify=False)
    assert src.x_train.shape == (7, 3, 32, 32) and src.n_classes == 100
    assert src.y_train.tolist() == y and src.y_test.tolist() == y_test  # fine labels
    assert torch.equal(src.x_train.reshape(7, -1), torch.from_numpy(x))


def test_tinyimagenet_folder_layout_and_cache(data_root: Path) -> None:
    colours = write_tinyimagenet(data_root)
    src = load_source("tinyimagenet")
    assert src.x_train.shape == (6, 3, 16, 16) and src.x_test.shape == (3, 3, 16, 16)
    assert src.y_train.tolist() == [0, 0, 1, 1, 2, 2]  # wnids.txt order: n002, n001, n003
    assert src.y_test.tolist() == [2, 0, 1]  # val_0: n003, val_1: n002, val_2: n001
    assert src.class_names == ("dog", "cat", "fish")
    expected_train = torch.stack([colours[f"{w}_{j}"] for w in ("n002", "n001", "n003") for j in range(2)])
    assert (src.x_train.float().mean(dim=(2, 3)) - expected_train.float()).abs().max() <= 2  # JPEG rounding
    expected_test = torch.stack([colours[f"val_{i}"] for i in range(3)])  # val_2 was greyscale -> RGB
    assert (src.x_test.float().mean(dim=(2, 3)) - expected_test.float()).abs().max() <= 2
    cache = data_root / "tiny-imagenet-200" / TINYIMAGENET_CACHE
    assert cache.is_file()
    # the second load reads the cache: it works without the JPEGs
    for jpeg in (data_root / "tiny-imagenet-200").rglob("*.JPEG"):
        jpeg.unlink()
    clear_source_cache()
    cached = load_source("tinyimagenet")
    assert torch.equal(cached.x_train, src.x_train) and torch.equal(cached.y_test, src.y_test)
    assert cached.class_names == src.class_names


@pytest.mark.parametrize("name, folder, file", [
    ("mnist", "MNIST/raw", "train-images-idx3-ubyte"),
    ("kmnist", "KMNIST/raw", "t10k-labels-idx1-ubyte"),
    ("cifar10", "cifar-10-batches-py", "data_batch_1"),
    ("cifar100", "cifar-100-python", "meta"),
    ("tinyimagenet", "tiny-imagenet-200", "wnids.txt"),
])
def test_missing_files_one_clear_error(data_root: Path, name: str, folder: str, file: str) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        load_source(name)
    err = info.value
    assert isinstance(err, FileNotFoundError)
    msg = str(err)
    assert f"dataset '{name}' not found" in msg
    assert str((data_root / folder).resolve()) in msg and file in msg
    assert "data.root=" in msg and "CL_BENCH_DATA" in msg and "data.download=true" in msg
    assert f"the directory that contains '{folder}'" in msg


@pytest.mark.skipif(not (REAL_MNIST / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file(),
                    reason="real MNIST files not present")
def test_real_mnist() -> None:
    src = load_source("mnist", root=REAL_MNIST)
    assert src.x_train.shape == (60000, 1, 28, 28) and src.x_test.shape == (10000, 1, 28, 28)
    assert src.x_train.dtype == torch.uint8 and src.y_train.dtype == torch.int64
    assert torch.equal(torch.unique(src.y_train), torch.arange(10))
    assert torch.bincount(src.y_train).tolist()[:2] == [5923, 6742]  # published MNIST class counts
    assert src.mean[0] == pytest.approx(0.1307, abs=1e-4) and src.std[0] == pytest.approx(0.3081, abs=1e-4)


def damage(raw: Path, fault: str) -> tuple[str, str]:
    """Damage one file of a valid MNIST folder the way ``fault`` says; (the file, what the error says)."""
    images, labels = raw / "train-images-idx3-ubyte", raw / "train-labels-idx1-ubyte"
    if fault == "magic":
        images.write_bytes(b"\x50\x4b\x03\x04" + images.read_bytes()[4:])  # e.g. a zip archive renamed
        return images.name, "bad magic number 0x504b0304"
    if fault == "float32":
        x = np.random.default_rng(0).random((30, 28, 28), dtype=np.float32)
        images.write_bytes(bytes([0, 0, 0x0D, 3]) + struct.pack(">3i", 30, 28, 28) + x.astype(">f4").tobytes())
        return images.name, "payload type float32"
    if fault == "truncated":
        images.write_bytes(images.read_bytes()[:5000])
        return images.name, "truncated"
    if fault == "more_labels":
        write_idx(labels, np.zeros(40, dtype=np.uint8))
        return labels.name, "40 labels for 30 images"
    if fault == "fewer_labels":
        write_idx(labels, np.zeros(25, dtype=np.uint8))
        return labels.name, "25 labels for 30 images"
    assert fault == "label_range"
    write_idx(labels, np.array([0, 12] * 15, dtype=np.uint8))
    return labels.name, "15 labels outside 0..9 (e.g. [12])"


@pytest.mark.parametrize("fault", ["magic", "float32", "truncated", "more_labels", "fewer_labels", "label_range"])
def test_damaged_idx_files_are_named_with_the_fault(data_root: Path, fault: str) -> None:
    write_mnist(data_root, "MNIST")
    file, says = damage(data_root / "MNIST" / "raw", fault)
    with pytest.raises(ValueError) as info:
        load_source("mnist")
    msg = str(info.value)
    assert str(data_root.resolve() / "MNIST" / "raw" / file) in msg and says in msg
    assert "not found" not in msg and "Replace the mnist files" in msg


def test_a_damaged_cifar_batch_is_named(data_root: Path) -> None:
    write_cifar10(data_root)
    batch = data_root / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(batch.read_bytes()[:100])
    with pytest.raises(ValueError) as info:
        load_source("cifar10", verify=False)
    msg = str(info.value)
    assert "is damaged" in msg and str((data_root / "cifar-10-batches-py").resolve()) in msg
    assert "not found" not in msg
