"""Shared fixtures (data)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cl_bench.data.cache import CACHE_ENV
from cl_bench.data.sources import DATA_ENV, clear_source_cache


@pytest.fixture(autouse=True, scope="session")
def scenario_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tests' scenario cache: a folder of this session, never the user's ``~/.cache``."""
    import os

    folder = tmp_path_factory.mktemp("cl_bench_cache")
    previous = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = previous


@pytest.fixture
def data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty data root, set as ``CL_BENCH_DATA``, with the in-process source cache cleared around the test."""
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv(DATA_ENV, str(root))
    clear_source_cache()
    yield root
    clear_source_cache()
