"""Per-task checkpoints: an interrupted run continues from its last finished task.

A checkpoint holds the module's ``state_dict`` (strategies keep their state in
registered buffers), the partial :class:`RunResult`, the random-number states
and any extra state (the geometry snapshots). It is written atomically and
deleted once the run's result is saved; it is only reused when the run's
configuration hash matches.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


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
    """``torch.save`` to a temporary file in the same folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path, config_hash: str) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it belongs to the same configuration, else None."""
    if not path.exists():
        return None
    payload = torch.load(path, map_location="cpu", weights_only=False)
    return payload if payload.get("config_hash") == config_hash else None
