"""Per-task checkpoints: an interrupted run continues from its last finished task.

A checkpoint holds the module's ``state_dict`` (strategies keep their state in
registered buffers), the partial :class:`RunResult`, the random-number states
and any extra state (the geometry snapshots). It is written atomically (a
temporary file, fsynced, renamed, the folder fsynced) and deleted once the
run's result is saved; it is only reused when the run's configuration hash
matches. A checkpoint that cannot be read is moved aside to
``<name>.corrupt`` with a warning naming it, and its run starts afresh.
"""

from __future__ import annotations

import os
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cl_bench.results import write_atomic


def rng_state() -> dict[str, Any]:
    """The states of the torch, numpy, Python and (when present) CUDA random-number generators."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generator states of :func:`rng_state` (CUDA only where saved and available)."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """``torch.save`` through :func:`~cl_bench.results.write_atomic` (temporary file, fsync, rename, folder
    fsync); a failed write (e.g. a full disk) is an :class:`~cl_bench.results.OutputWriteError` naming ``path``."""
    write_atomic(path, lambda fh: torch.save(payload, fh))


class CorruptCheckpointWarning(UserWarning):
    """A checkpoint could not be read; it was moved aside and its run starts afresh."""


def load_checkpoint(path: Path, config_hash: str) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it belongs to the same configuration, else None.

    An unreadable file (truncated, not a checkpoint) is renamed to ``<path>.corrupt``
    with a :class:`CorruptCheckpointWarning` naming both paths, and None is returned.
    """
    if not path.exists():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(payload, dict):
            raise TypeError(f"holds a {type(payload).__name__}, not a checkpoint")
    except Exception as err:  # torch.load raises whatever its unpickler meets: EOFError, RuntimeError, ...
        aside = path.with_name(path.name + ".corrupt")
        os.replace(path, aside)
        warnings.warn(f"checkpoint {path} is unreadable ({type(err).__name__}: {err}); moved to {aside}, "
                      "this run starts again from its first task", CorruptCheckpointWarning, stacklevel=2)
        return None
    return payload if payload.get("config_hash") == config_hash else None
