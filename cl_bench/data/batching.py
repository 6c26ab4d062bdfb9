"""On-device batching: tensors move to the device once; a batch is one index.

:class:`TaskBatches` is a plain iterable (``__iter__`` + ``__len__``), so
Lightning accepts it as ``train_dataloaders``. Every epoch draws a fresh
permutation (and augmentation) from a generator seeded by
``SeedSequence([seed, epoch])``: deterministic, yet different per epoch.

Data-parallel training (``world_size`` > 1) keeps that global order: every
rank draws the same permutation and takes its shard of each global batch
(:func:`rank_positions`), so the ranks together see exactly the batches of one
process and take the same number of steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence, Sized, cast

import torch
import torch.nn.functional as F
from torch import Tensor

from cl_bench.seeds import generator

from .task import Task


@dataclass(frozen=True)
class Augment:
    """Random crop with zero padding + random horizontal flip, batched (He et al. 2016, Sec. 4.2).

    For sample i with offsets (a_i, b_i) in ``[0, 2p]^2``:
    ``out_i = pad(x_i, p)[:, a_i:a_i+H, b_i:b_i+W]``, then flipped along W when ``flip_i``.
    """

    padding: int = 4
    flip: bool = True

    def __post_init__(self) -> None:
        if self.padding < 0:
            raise ValueError(f"Augment.padding must be >= 0, got {self.padding}")

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Offsets ``int64 [n, 2]`` (row, col) and flip flags ``bool [n]``."""
        offsets = torch.randint(0, 2 * self.padding + 1, (n, 2), generator=generator)
        flips = torch.rand(n, generator=generator) < 0.5 if self.flip else torch.zeros(n, dtype=torch.bool)
        return offsets, flips

    def apply(self, x: Tensor, offsets: Tensor, flips: Tensor) -> Tensor:
        """Crop/flip a batch ``[B, C, H, W]`` with the given draws: pad once, two gathers.

        ``out[i, c, r, s] = pad(x)[i, c, a_i + r, b_i + s']`` with ``s' = W-1-s`` when
        ``flip_i`` else ``s`` (a flipped crop reads its columns in reverse).
        """
        b, c, h, w = x.shape
        p = self.padding
        padded = F.pad(x, (p, p, p, p)) if p else x
        rows = offsets[:, 0, None] + torch.arange(h, device=x.device)  # [B, H]
        cols = torch.arange(w, device=x.device).expand(b, w)
        if self.flip:
            cols = torch.where(flips[:, None], cols.flip(1), cols)
        cols = offsets[:, 1, None] + cols  # [B, W]
        x = padded.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * p))
        return x.gather(3, cols[:, None, None, :].expand(b, c, h, w))


def _norm_stats(mean: Sequence[float] | None, std: Sequence[float] | None,
                device: torch.device) -> tuple[Tensor, Tensor] | None:
    if not mean and not std:
        return None
    if mean is None or std is None or len(mean) != len(std):
        raise ValueError(f"mean and std must both be given with one value per channel, got {mean} / {std}")
    to: dict[str, Any] = dict(dtype=torch.float32, device=device)
    return torch.tensor(mean, **to).view(1, -1, 1, 1), torch.tensor(std, **to).view(1, -1, 1, 1)


def to_float(x: Tensor, stats: tuple[Tensor, Tensor] | None) -> Tensor:
    """``uint8`` -> float in ``[0, 1]`` (x / 255), then ``(x - mean) / std``; float input is not rescaled."""
    out = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    if stats is not None:
        out = (out - stats[0]) / stats[1]
    return out


def rank_positions(n: int, rank: int, world_size: int) -> Tensor:
    """The positions in a global batch of ``n`` samples that rank ``rank`` of ``world_size`` trains on:
    ``rank, rank + W, rank + 2W, ...`` (every position exactly once over the ranks); a rank that would get
    none (``n < W``, a short last batch) takes the batch's last sample, so that no rank steps on nothing."""
    pos = torch.arange(rank, n, world_size)
    return pos if pos.numel() else torch.tensor([n - 1])


class TaskBatches:
    """Shuffled mini-batches ``(x_float, y_long, t_long)`` of tensors held on ``device``.

    Images are ``uint8`` (or float, taken as already scaled); augmentation
    acts on the raw images before scaling and normalisation, as a torchvision
    ``RandomCrop -> ToTensor -> Normalize`` pipeline would. With ``world_size`` > 1 each
    batch is rank ``rank``'s shard of the global batch of ``batch_size`` samples.
    """

    def __init__(self, x: Tensor, y: Tensor, task_ids: Tensor | int, batch_size: int, *,
                 device: torch.device | str = "cpu", shuffle: bool = True, seed: int = 0,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 augment: Augment | None = None, drop_last: bool = False, rank: int = 0,
                 world_size: int = 1) -> None:
        if x.dim() != 4 or y.dim() != 1 or x.shape[0] != y.shape[0]:
            raise ValueError(f"TaskBatches needs x [N, C, H, W] and y [N], got {tuple(x.shape)} and {tuple(y.shape)}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.device = torch.device(device)
        self.x = x.to(self.device)
        self.y = y.to(self.device, torch.long)
        if isinstance(task_ids, int):
            self.t = torch.full_like(self.y, task_ids)
        else:
            if task_ids.shape != y.shape:
                raise ValueError(f"task_ids must be an int or a tensor shaped like y {tuple(y.shape)}, "
                                 f"got {tuple(task_ids.shape)}")
            self.t = task_ids.to(self.device, torch.long)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.augment, self.drop_last = augment, drop_last
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.rank, self.world_size = rank, world_size
        self.stats = _norm_stats(mean, std, self.device)
        self.epoch = 0

    def __len__(self) -> int:
        n = self.y.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter()`` draw epoch ``epoch``'s order (e.g. when resuming)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        n = self.y.shape[0]
        g = generator(self.seed, self.epoch)
        self.epoch += 1
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        order = order.to(self.device)
        draws = None
        if self.augment is not None:
            draws = tuple(d.to(self.device) for d in self.augment.sample(n, g))
        for i in range(len(self)):
            start = i * self.batch_size
            pos: slice | Tensor = slice(start, start + self.batch_size)
            if self.world_size > 1:
                shard = rank_positions(min(self.batch_size, n - start), self.rank, self.world_size)
                pos = start + shard.to(self.device)
            idx = order[pos]
            xb = self.x[idx]
            if draws is not None:
                xb = cast(Augment, self.augment).apply(xb, draws[0][pos], draws[1][pos])
            yield to_float(xb, self.stats), self.y[idx], self.t[idx]


class Chunks:
    """Consecutive groups of ``k`` minibatches of ``batches`` (the last group may be shorter), in the
    order ``batches`` yields them: one Lightning ``training_step`` takes the optimiser steps of a group,
    so the samples each step sees do not depend on ``k``."""

    def __init__(self, batches: Iterable[Any], k: int) -> None:
        if k < 1:
            raise ValueError(f"a chunk holds at least one minibatch, got k={k}")
        self.batches, self.k = batches, k

    def __len__(self) -> int:
        return -(-len(cast(Sized, self.batches)) // self.k)

    def __iter__(self) -> Iterator[list[Any]]:
        chunk: list[Any] = []
        for batch in self.batches:
            chunk.append(batch)
            if len(chunk) == self.k:
                yield chunk
                chunk = []
        if chunk:
            yield chunk


def iterate_eval(x: Tensor, y: Tensor, batch_size: int, device: torch.device | str = "cpu",
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None
                 ) -> Iterator[tuple[Tensor, Tensor]]:
    """Batches ``(x_float, y_long)`` in order, no augmentation (for evaluation)."""
    device = torch.device(device)
    stats = _norm_stats(mean, std, device)
    for i in range(0, y.shape[0], batch_size):
        yield to_float(x[i:i + batch_size].to(device), stats), y[i:i + batch_size].to(device, torch.long)


def concat_tasks(tasks: Sequence[Task], split: str = "train") -> tuple[Tensor, Tensor, Tensor]:
    """Concatenate the ``split`` ('train' | 'val' | 'test') data of tasks: ``(x, y, task_ids)`` (joint training)."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    parts = [(getattr(t, f"x_{split}"), getattr(t, f"y_{split}"), t.id) for t in tasks]
    if any(x is None for x, _, _ in parts):
        raise ValueError(f"a task has no {split} data (set scenario.val_fraction > 0 for 'val')")
    return (torch.cat([x for x, _, _ in parts]), torch.cat([y for _, y, _ in parts]),
            torch.cat([torch.full((y.shape[0],), i, dtype=torch.long) for _, y, i in parts]))
