"""Shared fixtures (data)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cl_bench.data.sources import DATA_ENV, clear_source_cache


@pytest.fixture
def data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty data root, set as ``CL_BENCH_DATA``, with the in-process source cache cleared around the test."""
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv(DATA_ENV, str(root))
    clear_source_cache()
    yield root
    clear_source_cache()
