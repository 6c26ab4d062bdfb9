"""Device-resident replay buffer: fixed capacity in examples, tensors on the training device.

The buffer stores what the model trained on: ``TaskBatches`` yields float,
already normalised inputs, and those are stored as given (a ``uint8`` buffer
is possible with ``input_dtype``; inputs are never converted). With
augmentation on, the augmented view is what gets stored. Per example it holds
the input, the label, the task id and, for DER, the logits seen when the
example was stored. Slots ``[0, size)`` are filled; filling never leaves holes.

Insertion policies (one ``add`` call handles a whole batch with tensor ops):

- ``reservoir`` (Vitter 1985, Algorithm R): the i-th example of the stream
  (0-based) goes to slot i while i < K, else to slot j ~ U{0..i} when j < K.
  Every example seen so far is then in the buffer with probability K / n.
  In a batch, two examples may draw the same slot; as in the sequential
  algorithm the later one wins, so one batched call is exactly Algorithm R.
- ``class_balanced`` / ``task_balanced`` (the greedy balanced sampler of
  GDumb, Prabhu et al. 2020, Sec. 3): groups (labels or task ids) share the
  capacity by water-filling, so every group holds all of its examples or is
  within one of the largest group. A full group evicts random old examples;
  of the incoming ones, the earliest of each group are kept.

:func:`herding` is iCaRL's exemplar selection (Rebuffi et al. 2017, Alg. 4).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

POLICIES: tuple[str, ...] = ("reservoir", "class_balanced", "task_balanced")


class BufferSample(NamedTuple):
    """A draw from the buffer; ``idx`` are the slots drawn."""

    x: Tensor
    y: Tensor
    t: Tensor
    logits: Tensor
    idx: Tensor


def rank_within_groups(groups: Tensor, keys: Tensor) -> Tensor:
    """Rank (0-based) of each element among the elements of its group, ordered by ``keys`` (stable)."""
    order = torch.argsort(keys, stable=True)
    order = order[torch.argsort(groups[order], stable=True)]  # by group, then key
    sorted_groups = groups[order]
    n = groups.numel()
    start = torch.ones(n, dtype=torch.bool, device=groups.device)
    start[1:] = sorted_groups[1:] != sorted_groups[:-1]
    first = torch.cummax(torch.where(start, torch.arange(n, device=groups.device), 0), 0).values
    rank = torch.empty_like(order)
    rank[order] = torch.arange(n, device=groups.device) - first
    return rank


def water_fill(available: Tensor, capacity: int, prefer: Tensor) -> Tensor:
    """Balanced counts n_g <= available_g with sum_g n_g = min(capacity, sum_g available_g).

    Level L = the largest integer with sum_g min(available_g, L) <= capacity;
    n_g = min(available_g, L), and the r = capacity - sum_g n_g leftover slots
    go one each to groups with available_g > L, largest ``prefer`` first
    (ties: lower group index). Tensor ops only (no host read).
    """
    g = available.numel()
    ar = torch.arange(g, device=available.device)
    sorted_avail, _ = torch.sort(available)
    before = torch.cumsum(sorted_avail, 0) - sorted_avail  # sum of the groups below position i
    capped_from = sorted_avail * (g - ar) + before > capacity  # first True: the lowest capped position i
    i = torch.argmax(capped_from.to(torch.uint8))
    level = (capacity - before[i]) // (g - i)
    counts = torch.minimum(available, level)
    leftover = capacity - counts.sum()
    capped = available > level
    score = torch.where(capped, prefer.double(), float("-inf"))
    rank = torch.argsort(torch.argsort(-score, stable=True))  # position of each group by score
    counts = counts + (capped & (rank < leftover)).to(counts.dtype)
    return torch.where(capped_from.any(), counts, available)


def herding(features: Tensor, m: int) -> Tensor:
    """Exemplar selection of iCaRL (Rebuffi et al. 2017, Alg. 4), without replacement.

    With mu = mean_i f_i: p_k = argmin_i || mu - (f_i + sum_{j<k} f_{p_j}) / k ||
    over the examples not chosen yet. Returns the ``min(m, N)`` indices in
    selection order (every prefix is the herding set of its size).
    """
    n = features.shape[0]
    m = min(m, n)
    mu = features.mean(0)
    running = torch.zeros_like(mu)
    taken = torch.zeros(n, dtype=torch.bool, device=features.device)
    chosen = []
    for k in range(1, m + 1):  # greedy: m steps, each over all candidates at once
        dist = ((mu - (running + features) / k) ** 2).sum(1).masked_fill(taken, float("inf"))
        i = torch.argmin(dist)
        chosen.append(i)
        running = running + features[i]
        taken[i] = True
    return torch.stack(chosen) if chosen else torch.zeros(0, dtype=torch.long, device=features.device)


class Buffer(nn.Module):
    """Fixed-capacity example store held in registered buffers (saved by ``state_dict``).

    ``x [K, *input_shape]``, ``y [K]``, ``t [K]``, ``logits [K, n_logits]``
    (``n_logits=0``: none kept) and ``counts = [n_seen, size]``; a fresh buffer of
    the same shape loads any saved one.
    """

    x: Tensor
    y: Tensor
    t: Tensor
    logits: Tensor
    counts: Tensor

    def __init__(self, capacity: int, input_shape: Sequence[int], n_logits: int = 0,
                 policy: str = "reservoir", input_dtype: torch.dtype = torch.float32, n_groups: int = 0) -> None:
        super().__init__()
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"buffer_size must be a positive integer, got {capacity!r}")
        if policy not in POLICIES:
            raise ValueError(f"buffer policy={policy!r} is not valid; choose one of {list(POLICIES)}")
        if n_logits < 0:
            raise ValueError(f"n_logits must be >= 0, got {n_logits}")
        if policy != "reservoir" and n_groups < 1:
            raise ValueError(f"policy={policy!r} needs n_groups >= 1 (labels or task ids lie in 0..n_groups-1)")
        self.capacity, self.policy, self.n_groups = capacity, policy, n_groups
        self.input_shape = tuple(int(s) for s in input_shape)
        self.register_buffer("x", torch.zeros(capacity, *self.input_shape, dtype=input_dtype))
        self.register_buffer("y", torch.zeros(capacity, dtype=torch.long))
        self.register_buffer("t", torch.zeros(capacity, dtype=torch.long))
        self.register_buffer("logits", torch.zeros(capacity, n_logits))
        self.register_buffer("counts", torch.zeros(2, dtype=torch.long))  # [n_seen, size]
        self.n_seen = 0  # host copies of ``counts`` (no device sync per step)
        self.size = 0
        self.register_load_state_dict_post_hook(lambda module, _keys: module._sync_counts())

    def _sync_counts(self) -> None:
        self.n_seen, self.size = (int(v) for v in self.counts.tolist())

    def _set_counts(self, n_seen: int, size: int) -> None:
        self.n_seen, self.size = n_seen, size
        self.counts[0].fill_(n_seen)  # device writes: no copy from host memory
        self.counts[1].fill_(size)

    @property
    def nbytes(self) -> int:
        """Bytes held by the buffer's tensors."""
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def is_empty(self) -> bool:
        return self.size == 0

    # ---------------------------------------------------------------- writing
    def add(self, x: Tensor, y: Tensor, t: Tensor, logits: Tensor | None = None,
            generator: torch.Generator | None = None) -> None:
        """Offer a batch to the buffer under its policy (random draws from ``generator``, any device)."""
        self._check(x, y, t, logits)
        b = y.shape[0]
        if self.policy == "reservoir":
            slot = self._reservoir_slots(b, generator)
            keep = self._last_writer(slot)
            new_size = min(self.capacity, self.n_seen + b)
        else:
            group = y if self.policy == "class_balanced" else t
            slot, keep, new_size = self._balanced_slots(group, generator)
        self._write(slot, keep, (x, y, t, logits))
        self._set_counts(self.n_seen + b, new_size)

    def _write(self, slot: Tensor, keep: Tensor, rows: tuple[Tensor | None, ...]) -> None:
        """Rows with ``keep`` go to their (distinct) ``slot``: :func:`write_indexed` on the CPU, where reading
        ``keep`` costs nothing; :func:`write_sync_free` elsewhere. Both store the same."""
        stores = (self.x, self.y, self.t, self.logits)
        writer = write_indexed if host_reads_are_free(slot.device) else write_sync_free
        writer(stores, slot, keep, rows)

    def assign(self, x: Tensor, y: Tensor, t: Tensor, logits: Tensor | None = None) -> None:
        """Replace the whole content by the given examples (iCaRL's exemplar sets)."""
        self._check(x, y, t, logits)
        n = y.shape[0]
        if n > self.capacity:
            raise ValueError(f"assign: {n} examples exceed the buffer capacity {self.capacity}")
        self.x[:n], self.y[:n], self.t[:n] = x, y, t
        if logits is not None:
            self.logits[:n] = logits.to(self.logits.dtype)
        self._set_counts(self.n_seen, n)

    def _check(self, x: Tensor, y: Tensor, t: Tensor, logits: Tensor | None) -> None:
        if tuple(x.shape[1:]) != self.input_shape or y.shape != x.shape[:1] or t.shape != y.shape:
            raise ValueError(f"buffer expects x [B, {', '.join(map(str, self.input_shape))}], y [B], t [B]; "
                             f"got {tuple(x.shape)}, {tuple(y.shape)}, {tuple(t.shape)}")
        if x.dtype != self.x.dtype:
            raise ValueError(f"buffer stores {self.x.dtype} inputs (input_dtype), got {x.dtype}")
        if logits is not None and tuple(logits.shape) != (y.shape[0], self.logits.shape[1]):
            raise ValueError(f"buffer expects logits [B, {self.logits.shape[1]}], got {tuple(logits.shape)}")

    def _reservoir_slots(self, b: int, generator: torch.Generator | None) -> Tensor:
        """Algorithm R for stream positions i = n_seen .. n_seen + b - 1: slot i if i < K,
        else j ~ U{0..i} if j < K; -1 means discarded."""
        dev = self.y.device
        i = torch.arange(self.n_seen, self.n_seen + b, device=dev)
        u = self._rand(b, generator, torch.float64)
        j = torch.minimum((u * (i + 1).double()).long(), i)
        slot = torch.where(i < self.capacity, i, j)
        return torch.where(slot < self.capacity, slot, -1)

    def _rand(self, n: int, generator: torch.Generator | None, dtype: torch.dtype) -> Tensor:
        """U[0, 1) draws from ``generator`` (global RNG when None), on the buffer's device."""
        dev = generator.device if generator is not None else self.y.device
        return torch.rand(n, dtype=dtype, device=dev, generator=generator).to(self.y.device)

    @staticmethod
    def _last_writer(slot: Tensor) -> Tensor:
        """True for the last example of the batch written to each slot (later writes win)."""
        keep = torch.zeros_like(slot, dtype=torch.bool)
        order = torch.argsort(slot, stable=True)  # by slot, batch order within a slot
        s = slot[order]
        last = torch.ones_like(s, dtype=torch.bool)
        last[:-1] = s[1:] != s[:-1]
        keep[order] = last & (s >= 0)
        return keep

    def _balanced_slots(self, group: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor, int]:
        """Water-filling over groups: evict random old examples of over-full groups, keep the earliest
        incoming examples of each group; the r-th kept row takes the r-th evicted slot (ascending), then
        the slots after the filled ones. The new size is min(K, size + B) (water-filling fills the
        capacity), known on the host; the rest stays on the device. Returns (slot, keep, new size)."""
        dev, k, size = group.device, self.capacity, self.size
        old = (self.y if self.policy == "class_balanced" else self.t)[:size]
        groups = torch.arange(self.n_groups, device=dev)
        stored = (old[:, None] == groups).sum(0)
        incoming = (group[:, None] == groups).sum(0)
        target = water_fill(stored + incoming, k, prefer=stored)
        evict_n = (stored - target).clamp(min=0)
        keep_n = (target - stored).clamp(min=0)
        evicted = rank_within_groups(old, self._rand(size, generator, torch.float32)) < evict_n[old]
        keep = rank_within_groups(group, torch.arange(group.numel(), device=dev)) < keep_n[group]
        r = torch.cumsum(keep, 0) - 1  # rank among the kept rows
        n_evicted = evicted.sum()
        slot = size + r - n_evicted
        if size:
            evicted_slots = torch.argsort((~evicted).to(torch.uint8), stable=True)  # evicted first, ascending
            slot = torch.where(r < n_evicted, evicted_slots[r.clamp(0, size - 1)], slot)
        return torch.where(keep, slot, -1), keep, min(k, size + group.numel())

    # ---------------------------------------------------------------- reading
    def sample(self, n: int, generator: torch.Generator | None = None) -> BufferSample:
        """``min(n, size)`` stored examples drawn uniformly without replacement."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty buffer")
        dev = generator.device if generator is not None else self.y.device
        idx = torch.randperm(self.size, generator=generator, device=dev)[:n].to(self.y.device)
        return BufferSample(self.x[idx], self.y[idx], self.t[idx], self.logits[idx], idx)

    def data(self) -> BufferSample:
        """Every stored example, in slot order."""
        idx = torch.arange(self.size, device=self.y.device)
        return BufferSample(self.x[: self.size], self.y[: self.size], self.t[: self.size],
                            self.logits[: self.size], idx)


def host_reads_are_free(device: torch.device) -> bool:
    """Whether reading a tensor's value on the host costs nothing: on the CPU there is no device to wait for."""
    return device.type == "cpu"


def write_indexed(stores: tuple[Tensor, ...], slot: Tensor, keep: Tensor, rows: tuple[Tensor | None, ...]) -> None:
    """The kept rows of ``rows`` to their (distinct) ``slot`` of each store, by index (reads ``keep`` on the host)."""
    kept = keep.nonzero().squeeze(1)
    for store, new in zip(stores, rows):
        if new is not None:
            store[slot[kept]] = new[kept].to(store.dtype)


def write_sync_free(stores: tuple[Tensor, ...], slot: Tensor, keep: Tensor, rows: tuple[Tensor | None, ...]) -> None:
    """What :func:`write_indexed` stores, without reading ``keep`` on the host (no device sync).

    B <= K: the r-th row not kept goes to the r-th slot no kept row writes and rewrites it with its
    own content, so the B targets are distinct. B > K: each slot gathers the row written to it, if
    any (O(K) rows either way)."""
    k, b = stores[0].shape[0], keep.numel()  # the capacity, the batch
    match = (slot[None, :] == torch.arange(k, device=slot.device)[:, None]) & keep[None, :]  # [K, B]
    if b <= k:
        untouched = torch.argsort(match.any(1).to(torch.uint8), stable=True)  # unwritten slots first
        dst = torch.where(keep, slot, untouched[(torch.cumsum(~keep, 0) - 1).clamp(min=0)])
        for store, new in zip(stores, rows):
            if new is not None:
                kept = keep.view(-1, *[1] * (new.dim() - 1))
                store[dst] = torch.where(kept, new.to(store.dtype), store[dst])
        return
    src = torch.where(match, torch.arange(b, device=slot.device), -1).amax(1)  # [K] row written, -1: none
    for store, new in zip(stores, rows):
        if new is not None:
            has = (src >= 0).view(-1, *[1] * (new.dim() - 1))
            store.copy_(torch.where(has, new[src.clamp(min=0)].to(store.dtype), store))
