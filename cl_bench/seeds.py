"""Derived random seeds: every random stream of a run is ``SeedSequence([seed, *keys])``."""

from __future__ import annotations

import numpy as np
import torch


def derive_seed(seed: int, *keys: int) -> int:
    """A 64-bit seed for the stream ``keys`` of ``seed`` (independent streams for different keys)."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1, dtype=np.uint64)[0])


def generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU generator seeded with :func:`derive_seed`."""
    return torch.Generator().manual_seed(derive_seed(seed, *keys))
