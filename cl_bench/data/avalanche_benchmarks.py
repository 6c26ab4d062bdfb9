"""Avalanche benchmarks by configuration: ``scenario.kind: avalanche``.

``scenario.benchmark`` names a factory of ``avalanche.benchmarks.classic``
(``SplitMNIST``, ``PermutedMNIST``, ``SplitCIFAR10``, ...) and
``scenario.benchmark_args`` the arguments it is called with
(``{n_experiences: 5, seed: 0, return_task_id: true}``). cl-bench passes three
arguments itself: ``dataset_root`` (the data root: ``data.root``, else
``CL_BENCH_DATA``; the folder that holds the dataset's own folder, e.g.
``MNIST/``), and ``train_transform`` / ``eval_transform`` (a plain conversion
to a tensor: the benchmark's own normalisation and augmentation are replaced by
cl-bench's, ``scenario.normalize`` and ``scenario.augment``). Every experience
becomes one task (:mod:`.avalanche_interop`); ``scenario.n_tasks`` must equal
the number of experiences. Avalanche's dataset loaders download whatever is
missing; with ``data.download: false`` (the default) no network connection is
opened while the benchmark is built, and a missing dataset is a
:class:`~cl_bench.data.sources.DatasetNotFoundError`.

A benchmark is built once per process and argument set (:func:`benchmark_of`);
its scenario is not kept in the disk cache (the files a benchmark reads are its
loader's own, so a cache key could not follow them).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import os
import socket
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

from torch import Tensor

from .avalanche_interop import experience_task_labels, scenario_from_avalanche
from .batching import Augment
from .scenarios import SCENARIO_KEYS, _augment, _err, _flag, _int, _val_fraction, validation_split
from .sources import DATA_ENV, DatasetNotFoundError, resolve_root
from .task import SETTINGS, Scenario, Setting

KIND = "avalanche"
#: the scenario keys of kind=avalanche; the other scenario keys describe how cl-bench draws tasks from a dataset
BENCHMARK_KEYS: tuple[str, ...] = (
    "name", "kind", "setting", "n_tasks", "seed", "benchmark", "benchmark_args", "train_subsample",
    "test_subsample", "val_fraction", "normalize", "augment",
)
#: factory arguments cl-bench sets, and where the user says what they would say
SET_BY_CL_BENCH: dict[str, str] = {
    "dataset_root": "set data.root (or CL_BENCH_DATA) to the folder that holds the dataset's folder",
    "train_transform": "cl-bench converts images to tensors; use scenario.normalize and scenario.augment",
    "eval_transform": "cl-bench converts images to tensors; use scenario.normalize",
}


@dataclass(frozen=True)
class BenchmarkConfig:
    """A validated ``scenario.kind: avalanche`` config (see :func:`parse_benchmark_cfg`)."""

    name: str
    setting: Setting
    n_tasks: int
    benchmark: str
    args: dict[str, Any]
    seed: int
    train_subsample: int | None
    test_subsample: int | None
    val_fraction: float
    normalize: bool
    augment: Augment | None


def factories() -> dict[str, Callable[..., Any]]:
    """The benchmark factories of ``avalanche.benchmarks.classic`` by name (its public functions named in
    CamelCase: ``SplitMNIST``, ``PermutedMNIST``, ...)."""
    import avalanche.benchmarks.classic as classic

    return {name: obj for name, obj in vars(classic).items()
            if inspect.isfunction(obj) and name[:1].isupper()}


def parse_benchmark_cfg(cfg: Mapping[str, Any]) -> BenchmarkConfig:
    """Validate a ``kind: avalanche`` scenario config against the factory's signature (nothing is loaded)."""
    unknown = sorted(set(cfg) - set(SCENARIO_KEYS))
    if unknown:
        raise KeyError(f"scenario: unknown key(s) {unknown}; valid keys for kind={KIND}: {', '.join(BENCHMARK_KEYS)}")
    other = sorted(k for k in set(cfg) - set(BENCHMARK_KEYS) if cfg[k] is not None)
    if other:
        raise _err(other[0], f"does not apply to kind={KIND} (the benchmark makes the tasks); "
                             f"its keys: {', '.join(BENCHMARK_KEYS)}")
    for key in ("setting", "n_tasks", "benchmark"):
        if cfg.get(key) is None:
            raise KeyError(f"scenario.{key} is required for kind={KIND}")
    setting = cfg["setting"]
    if setting not in SETTINGS:
        raise _err("setting", f"unknown setting {setting!r}; valid settings: {', '.join(SETTINGS)}")
    name = cfg["benchmark"]
    found = factories()
    if name not in found:
        raise _err("benchmark", f"{name!r} is not a benchmark of avalanche.benchmarks.classic; "
                                f"valid names: {', '.join(sorted(found))}")
    args = cfg.get("benchmark_args") or {}
    if not isinstance(args, Mapping) or not all(isinstance(k, str) for k in args):
        raise _err("benchmark_args", f"must be a mapping of {name}'s arguments, e.g. {{n_experiences: 5}}, "
                                     f"got {args!r}")
    for key in args:
        if key in SET_BY_CL_BENCH:
            raise _err(f"benchmark_args.{key}", f"is set by cl-bench: {SET_BY_CL_BENCH[key]}")
    signature = inspect.signature(found[name])
    try:
        signature.bind(**args)
    except TypeError as err:
        raise _err("benchmark_args", f"{err} (the arguments of {name}{signature})") from err
    if isinstance(cfg.get("seed"), str):
        raise _err("seed", f"must be an integer >= 0 or per_run (a draw per training seed), got {cfg['seed']!r}")
    val_fraction = _val_fraction(cfg)
    normalize = _flag(cfg, "normalize", True)
    n_tasks = _int(cfg, "n_tasks", None, 1)
    assert n_tasks is not None  # required above
    return BenchmarkConfig(
        name=str(cfg.get("name") or f"{KIND}-{name}"), setting=setting, n_tasks=n_tasks, benchmark=name,
        args=dict(args), seed=_int(cfg, "seed", 0, 0), train_subsample=_int(cfg, "train_subsample", None, 1),
        test_subsample=_int(cfg, "test_subsample", None, 1), val_fraction=val_fraction,
        normalize=normalize, augment=_augment(cfg),
    )


def image_tensor(image: Any) -> Tensor:
    """A dataset's image (PIL, array or tensor) as a plain tensor: the transform cl-bench gives a benchmark."""
    from torchvision.transforms.v2.functional import to_image

    return image if isinstance(image, Tensor) else to_image(image).as_subclass(Tensor)


class DownloadRefused(ConnectionError):
    """A network connection was asked for while a benchmark was built with ``data.download: false``."""


@contextmanager
def no_network() -> Iterator[list[str]]:
    """Refuse every network connection inside (:class:`DownloadRefused`); yields the hosts asked for."""
    asked: list[str] = []
    saved = socket.getaddrinfo, socket.socket.connect

    def refuse_lookup(host: Any, *args: Any, **kwargs: Any) -> Any:
        asked.append(str(host))
        raise DownloadRefused(f"no network while the benchmark is built (data.download=false): {host}")

    def refuse_connect(sock: socket.socket, address: Any) -> None:
        asked.append(str(address))
        raise DownloadRefused(f"no network while the benchmark is built (data.download=false): {address}")

    socket.getaddrinfo = refuse_lookup
    socket.socket.connect = refuse_connect  # type: ignore[method-assign,assignment]
    try:
        yield asked
    finally:
        socket.getaddrinfo, socket.socket.connect = saved  # type: ignore[method-assign]


@functools.lru_cache(maxsize=4)
def _built(name: str, args_json: str, root: str, download: bool) -> Any:
    """``name(**args)`` with cl-bench's arguments (kept for the process); its errors name the key to fix."""
    factory, args = factories()[name], json.loads(args_json)
    params = inspect.signature(factory).parameters
    given = {"dataset_root": root, "train_transform": image_tensor, "eval_transform": image_tensor}
    kwargs = {**args, **{k: v for k, v in given.items() if k in params}}
    call = f"{name}({', '.join(f'{k}={v!r}' for k, v in args.items())})"
    asked: list[str] = []
    try:
        if download:
            return factory(**kwargs)
        with no_network() as asked:
            return factory(**kwargs)
    except Exception as err:
        if asked:
            raise DatasetNotFoundError(
                f"scenario.benchmark={name}: its data are not under {root} and {call} wanted to download "
                f"them ({asked[0]}). Fix: point data.root=... (or the {DATA_ENV} environment variable) at the "
                f"folder that holds the dataset's folder (e.g. MNIST/), or set data.download=true when a network "
                f"is available.") from err
        if isinstance(err, (TypeError, ValueError, AssertionError, KeyError, IndexError)):
            raise _err("benchmark_args", f"{call} failed: {type(err).__name__}: {err}") from err
        raise DatasetNotFoundError(f"scenario.benchmark={name}: {call} could not read its data under "
                                   f"{root} ({type(err).__name__}: {err}); check data.root (or {DATA_ENV})") from err


def benchmark_of(spec: BenchmarkConfig, root: str | os.PathLike | None = None, download: bool = False) -> Any:
    """The benchmark of ``spec`` under the data root, built once per process (a few argument sets kept), with its
    number of experiences and (for ``spec.setting``) its task labels checked."""
    resolved = resolve_root(root)
    bm = _built(spec.benchmark, json.dumps(spec.args, sort_keys=True), str(resolved), download)
    n = len(bm.train_stream)
    if n != spec.n_tasks:
        raise _err("n_tasks", f"{spec.n_tasks}, but {spec.benchmark} with benchmark_args {spec.args} has {n} "
                              "experiences; set scenario.n_tasks to their number")
    try:
        experience_task_labels(bm, spec.setting, spec.benchmark)
    except ValueError as err:
        raise _err("benchmark_args", str(err)) from err
    return bm


def check_benchmark(cfg: Mapping[str, Any], root: str | os.PathLike | None, download: bool) -> None:
    """Build the benchmark of a ``kind: avalanche`` scenario config and check it (errors name the key);
    nothing for other kinds (their data are read when the scenario is built)."""
    if cfg.get("kind") == KIND:
        benchmark_of(parse_benchmark_cfg(cfg), root, download)


def build_benchmark_scenario(cfg: Mapping[str, Any], root: str | os.PathLike | None = None,
                             download: bool = False) -> Scenario:
    """The scenario of a ``kind: avalanche`` config: one task per experience, subsets and validation split
    drawn with the scenario seed (the validation split as :func:`~cl_bench.data.scenarios.build_scenario`'s)."""
    spec = parse_benchmark_cfg(cfg)
    bm = benchmark_of(spec, root, download)
    scenario = scenario_from_avalanche(bm, spec.setting, spec.name, train_subsample=spec.train_subsample,
                                       test_subsample=spec.test_subsample, seed=spec.seed)
    if spec.val_fraction > 0:
        for task in scenario.tasks:
            val, keep = validation_split(task.y_train, spec.val_fraction, spec.seed, task.id)
            task.x_val, task.y_val = task.x_train[val], task.y_train[val]
            task.x_train, task.y_train = task.x_train[keep], task.y_train[keep]
    if not spec.normalize:
        scenario = dataclasses.replace(scenario, mean=(), std=())
    _DIGESTS[_digest_key(spec, root)] = data_digest(scenario)
    return scenario


#: the :func:`data_digest` of every scenario this process built, by :func:`_digest_key`
_DIGESTS: dict[str, str] = {}


def data_digest(scenario: Scenario) -> str:
    """sha256 (16 hex digits) of every task's images and labels (train, validation, test), in task order:
    what identifies the data an Avalanche benchmark gave (its files are its loaders' own, not cl-bench's)."""
    sha = hashlib.sha256()
    for task in scenario.tasks:
        for tensor in (task.x_train, task.y_train, task.x_val, task.y_val, task.x_test, task.y_test):
            if tensor is not None:
                sha.update(tensor.contiguous().cpu().numpy().tobytes())
    return sha.hexdigest()[:16]


def _digest_key(spec: BenchmarkConfig, root: str | os.PathLike | None) -> str:
    fields = {k: v for k, v in dataclasses.asdict(spec).items() if k != "augment"}
    return json.dumps({**fields, "root": str(resolve_root(root))}, sort_keys=True, default=str)


def benchmark_digest(cfg: Mapping[str, Any], root: str | os.PathLike | None = None, download: bool = False) -> str:
    """The :func:`data_digest` of the scenario of a ``kind: avalanche`` config, from the build of this
    process (built here when there was none)."""
    key = _digest_key(parse_benchmark_cfg(cfg), root)
    if key not in _DIGESTS:
        build_benchmark_scenario(cfg, root, download)
    return _DIGESTS[key]


def describe_benchmark(cfg: Mapping[str, Any], root: str | os.PathLike | None = None,
                       download: bool = False) -> dict[str, Any]:
    """What a run records about an Avalanche benchmark: its name, arguments, Avalanche's version, per
    experience its task label, classes, sizes and the shape of one image as the benchmark gives it, and the
    digest of the data the run uses (:func:`benchmark_digest`)."""
    from importlib.metadata import version

    spec = parse_benchmark_cfg(cfg)
    bm = benchmark_of(spec, root, download)
    train, test = list(bm.train_stream), list(bm.test_stream)
    first = train[0].dataset[0][0]
    return {
        "benchmark": spec.benchmark, "benchmark_args": spec.args, "avalanche": version("avalanche-lib"),
        "experiences": len(train), "task_labels": [sorted(int(t) for t in e.task_labels) for e in train],
        "classes": [sorted(int(c) for c in e.classes_in_this_experience) for e in train],
        "n_train": [len(e.dataset) for e in train], "n_test": [len(e.dataset) for e in test],
        "image": list(cast(Tensor, image_tensor(first)).shape),
        "sha256": benchmark_digest(cfg, root, download),
    }
