"""The replay buffer: reservoir sampling is exactly Algorithm R (and uniform), balanced
policies stay within one of balance, herding is iCaRL's greedy rule, state round-trips."""

from __future__ import annotations

import itertools

import pytest
import torch
from scipy.stats import chi2

from cl_bench.buffer import Buffer, herding, rank_within_groups, water_fill, write_sync_free


def stream(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Example i has input [i, -i] and label i (labels identify examples)."""
    ids = torch.arange(n)
    return torch.stack([ids, -ids], 1).float(), ids, torch.zeros(n, dtype=torch.long)


# ------------------------------------------------------------------ reservoir
def sequential_reservoir(capacity: int, batches: list[torch.Tensor], seed: int) -> torch.Tensor:
    """Algorithm R one example at a time, with the same uniform draws as the batched buffer."""
    g = torch.Generator().manual_seed(seed)
    slots = torch.full((capacity,), -1)
    i = 0
    for ids in batches:
        u = torch.rand(ids.numel(), dtype=torch.float64, generator=g)
        for k, item in enumerate(ids.tolist()):
            j = i if i < capacity else int(u[k] * (i + 1))
            if j < capacity:
                slots[j] = item
            i += 1
    return slots


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_batched_reservoir_equals_sequential_algorithm_r(batch):
    capacity, n = 10, 300
    x, y, t = stream(n)
    g = torch.Generator().manual_seed(3)
    buf = Buffer(capacity, (2,))
    for sl in torch.arange(n).split(batch):
        buf.add(x[sl], y[sl], t[sl], generator=g)
    expected = sequential_reservoir(capacity, list(torch.arange(n).split(batch)), seed=3)
    assert torch.equal(buf.y, expected)
    assert torch.equal(buf.x[:, 0], expected.float()) and torch.equal(buf.x[:, 1], -expected.float())
    assert buf.size == capacity and buf.n_seen == n


class SyncFreeBuffer(Buffer):
    """The accelerator's writer (no host read of which rows are kept), here on the CPU."""

    def _write(self, slot, keep, rows):
        write_sync_free((self.x, self.y, self.t, self.logits), slot, keep, rows)


@pytest.mark.parametrize("policy", ["reservoir", "class_balanced"])
@pytest.mark.parametrize("batch", [1, 7, 64])  # 64 > capacity: several rows of a batch map to one slot
def test_the_cpu_and_the_sync_free_writers_store_the_same(policy, batch):
    capacity, n = 10, 300
    x, _, t = stream(n)
    y = torch.arange(n) % 6
    logits = torch.randn(n, 6, generator=torch.Generator().manual_seed(0))
    bufs = [cls(capacity, (2,), n_logits=6, policy=policy, n_groups=6) for cls in (Buffer, SyncFreeBuffer)]
    gens = [torch.Generator().manual_seed(5) for _ in bufs]
    for sl in torch.arange(n).split(batch):
        for buf, g in zip(bufs, gens):
            buf.add(x[sl], y[sl], t[sl], logits=logits[sl], generator=g)
        a, b = bufs
        assert a.size == b.size and all(torch.equal(u, v) for u, v in zip((a.x, a.y, a.t, a.logits),
                                                                          (b.x, b.y, b.t, b.logits)))
    assert bufs[0].size == capacity


class StaleIndexBuffer(Buffer):
    """A typical vectorisation bug: every example of a batch draws from U{0..n_seen} (the batch start)."""

    def _reservoir_slots(self, b, generator):
        i = torch.full((b,), self.n_seen)
        j = torch.minimum((self._rand(b, generator, torch.float64) * (i + 1)).long(), i)
        fill = torch.arange(self.n_seen, self.n_seen + b)
        slot = torch.where(fill < self.capacity, fill, j)
        return torch.where(slot < self.capacity, slot, -1)


class FirstWriterBuffer(Buffer):
    """Another bug: on a collision inside a batch the earlier example wins."""

    @staticmethod
    def _last_writer(slot):
        return Buffer._last_writer(slot.flip(0)).flip(0) & (slot >= 0)


def inclusion_pvalue(cls: type[Buffer], n: int = 40, capacity: int = 8, batch: int = 10, runs: int = 400) -> float:
    """Chi-square test that every stream position ends in the buffer with probability K / n.

    Counts c_i over ``runs`` independent streams; under uniformity
    sum_i (c_i - R p)^2 / (R p (1 - p)) ~ chi2(n - 1) (the counts sum to R K).
    """
    g = torch.Generator().manual_seed(0)
    x, y, t = stream(n)
    counts = torch.zeros(n)
    for _ in range(runs):
        buf = cls(capacity, (2,))
        for sl in torch.arange(n).split(batch):
            buf.add(x[sl], y[sl], t[sl], generator=g)
        counts[buf.y] += 1
    p = capacity / n
    stat = float(((counts - runs * p) ** 2 / (runs * p * (1 - p))).sum())
    return float(chi2.sf(stat, df=n - 1))


def test_reservoir_is_uniform_over_the_stream_and_the_test_rejects_biased_samplers():
    assert inclusion_pvalue(Buffer) > 0.01
    assert inclusion_pvalue(StaleIndexBuffer) < 1e-4
    assert inclusion_pvalue(FirstWriterBuffer) < 1e-4


# ----------------------------------------------------------- balanced policies
@pytest.mark.parametrize(("policy", "key"), [("class_balanced", "y"), ("task_balanced", "t")])
def test_balanced_policy_keeps_groups_within_one(policy, key):
    g = torch.Generator().manual_seed(1)
    capacity = 23
    buf = Buffer(capacity, (1,), policy=policy, n_groups=12)
    seen = torch.zeros(12, dtype=torch.long)
    for task in range(4):  # groups 3*task .. 3*task+2 arrive, with uneven frequencies
        probs = torch.tensor([0.6, 0.3, 0.1])
        for _ in range(6):
            b = int(torch.randint(1, 15, (1,), generator=g))
            grp = 3 * task + torch.multinomial(probs, b, replacement=True, generator=g)
            other = torch.randint(0, 5, (b,), generator=g)
            y, t = (grp, other) if key == "y" else (other, grp)
            buf.add(grp.float()[:, None], y, t, generator=g)
            seen += torch.bincount(grp, minlength=12)
            held = torch.bincount(getattr(buf, key)[: buf.size], minlength=12)
            assert buf.size == min(capacity, int(seen.sum()))
            assert torch.equal(buf.x[: buf.size, 0].long(), getattr(buf, key)[: buf.size])  # rows intact
            # every group holds all it has seen, or is within one of the largest group
            assert bool(((held == seen) | (held >= held.max() - 1)).all()), (held, seen)
            assert bool((held <= seen).all())


def test_water_fill_is_max_min_fair_by_enumeration():
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        avail = torch.randint(0, 6, (3,), generator=g)
        cap = int(torch.randint(1, 12, (1,), generator=g))
        got = water_fill(avail, cap, prefer=torch.zeros(3))
        total = min(cap, int(avail.sum()))
        feasible = [c for c in itertools.product(*(range(a + 1) for a in avail.tolist())) if sum(c) == total]
        best = max(sorted(c) for c in feasible)  # lexicographic max-min fairness
        assert int(got.sum()) == total and bool((got <= avail).all())
        assert sorted(got.tolist()) == best


def test_rank_within_groups_by_brute_force():
    g = torch.Generator().manual_seed(0)
    groups = torch.randint(0, 4, (30,), generator=g)
    keys = torch.rand(30, generator=g)
    rank = rank_within_groups(groups, keys)
    for i in range(30):
        assert int(rank[i]) == int(((groups == groups[i]) & (keys < keys[i])).sum())


# ------------------------------------------------------------------- herding
def brute_force_herding(f: torch.Tensor, m: int) -> list[int]:
    mu = f.mean(0)
    chosen: list[int] = []
    for k in range(1, m + 1):
        best, best_d = -1, float("inf")
        for i in range(f.shape[0]):
            if i in chosen:
                continue
            d = float(((mu - (f[chosen].sum(0) + f[i]) / k) ** 2).sum())
            if d < best_d:
                best, best_d = i, d
        chosen.append(best)
    return chosen


def test_herding_matches_brute_force_greedy():
    g = torch.Generator().manual_seed(0)
    f = torch.nn.functional.normalize(torch.randn(9, 4, generator=g, dtype=torch.float64), dim=1)
    picks = herding(f, 6).tolist()
    assert picks == brute_force_herding(f, 6)
    assert picks[0] == int(((f - f.mean(0)) ** 2).sum(1).argmin())  # the first is the closest to the mean
    assert sorted(herding(f, 20).tolist()) == list(range(9))  # m > N: every example once


# ---------------------------------------------------------------- the module
def test_sample_is_without_replacement_and_within_the_filled_slots():
    x, y, t = stream(30)
    buf = Buffer(50, (2,))
    buf.add(x, y, t)
    s = buf.sample(20, generator=torch.Generator().manual_seed(0))
    assert s.idx.unique().numel() == 20 and int(s.idx.max()) < 30
    assert torch.equal(s.y, buf.y[s.idx]) and torch.equal(s.x, buf.x[s.idx])
    assert buf.sample(100).idx.numel() == 30


def test_state_dict_round_trip_continues_identically():
    x, y, t = stream(200)
    buf = Buffer(16, (2,), n_logits=3)
    g = torch.Generator().manual_seed(0)
    buf.add(x[:100], y[:100], t[:100], logits=torch.randn(100, 3, generator=g), generator=g)
    fresh = Buffer(16, (2,), n_logits=3)
    fresh.load_state_dict(buf.state_dict())
    assert (fresh.size, fresh.n_seen) == (16, 100)
    for name in ("x", "y", "t", "logits"):
        assert torch.equal(getattr(fresh, name), getattr(buf, name))
    logits = torch.randn(100, 3)
    buf.add(x[100:], y[100:], t[100:], logits=logits, generator=torch.Generator().manual_seed(5))
    fresh.add(x[100:], y[100:], t[100:], logits=logits, generator=torch.Generator().manual_seed(5))
    assert torch.equal(fresh.y, buf.y) and torch.equal(fresh.logits, buf.logits)


def test_nbytes_and_bad_input():
    buf = Buffer(10, (1, 4, 4), n_logits=5)
    assert buf.nbytes == 10 * 16 * 4 + 10 * 8 + 10 * 8 + 10 * 5 * 4 + 2 * 8
    with pytest.raises(ValueError, match="policy"):
        Buffer(10, (2,), policy="fifo")
    with pytest.raises(ValueError, match="buffer_size"):
        Buffer(0, (2,))
    with pytest.raises(ValueError, match="expects x"):
        buf.add(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="float32"):
        buf.add(torch.zeros(3, 1, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.long),
                torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="empty"):
        buf.sample(3)
