"""On-device batching: coverage, determinism, normalisation, augmentation vs per-sample reference."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from cl_bench.data import Augment, TaskBatches, build_scenario, concat_tasks, iterate_eval
from cl_bench.data.batching import rank_positions

MEAN, STD = (0.2, 0.4, 0.5), (0.3, 0.25, 0.2)


def images(n: int, c: int = 3, h: int = 5, w: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def normalised(x: torch.Tensor) -> torch.Tensor:
    return (x.double() / 255 - torch.tensor(MEAN, dtype=torch.float64).view(1, -1, 1, 1)) \
        / torch.tensor(STD, dtype=torch.float64).view(1, -1, 1, 1)


def epoch(batches: TaskBatches) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    return list(batches)


def reference_crop_flip(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, p: int) -> torch.Tensor:
    """Per-sample loop: zero-pad by p, cut the H x W window at the offset, mirror along W if flipped."""
    n, c, h, w = x.shape
    out = torch.empty_like(x)
    for i in range(n):
        padded = torch.zeros(c, h + 2 * p, w + 2 * p, dtype=x.dtype)
        padded[:, p:p + h, p:p + w] = x[i]
        a, b = int(offsets[i, 0]), int(offsets[i, 1])
        crop = padded[:, a:a + h, b:b + w]
        out[i] = crop[:, :, torch.arange(w - 1, -1, -1)] if flips[i] else crop
    return out


def test_every_sample_once_per_epoch_with_its_label_and_normalisation() -> None:
    x, y = images(23), torch.arange(23)
    tb = TaskBatches(x, y, 4, batch_size=5, seed=1, mean=MEAN, std=STD)
    assert len(tb) == 5
    got = epoch(tb)
    assert [b[0].shape[0] for b in got] == [5, 5, 5, 5, 3]
    ys = torch.cat([b[1] for b in got])
    assert torch.equal(ys.sort().values, torch.arange(23)) and not torch.equal(ys, torch.arange(23))
    xs = torch.cat([b[0] for b in got])
    assert xs.dtype == torch.float32 and torch.allclose(xs.double(), normalised(x[ys]), atol=1e-6)
    assert all(b[1].dtype == torch.long and b[2].dtype == torch.long for b in got)
    assert torch.equal(torch.cat([b[2] for b in got]), torch.full((23,), 4))


def test_drop_last_and_no_shuffle() -> None:
    x, y = images(23), torch.arange(23)
    tb = TaskBatches(x, y, torch.arange(23) % 3, batch_size=5, shuffle=False, drop_last=True)
    got = epoch(tb)
    assert len(tb) == 4 and len(got) == 4
    assert torch.equal(torch.cat([b[1] for b in got]), torch.arange(20))
    assert torch.equal(torch.cat([b[2] for b in got]), torch.arange(20) % 3)
    assert torch.allclose(torch.cat([b[0] for b in got]), x[:20].float() / 255)  # no mean/std: only x / 255


def test_deterministic_given_seed_and_reshuffled_each_epoch() -> None:
    x, y = images(40), torch.arange(40)
    a, b, c = (TaskBatches(x, y, 0, batch_size=8, seed=s) for s in (3, 3, 4))
    a0, a1 = torch.cat([t[1] for t in a]), torch.cat([t[1] for t in a])
    b0, b1 = torch.cat([t[1] for t in b]), torch.cat([t[1] for t in b])
    c0 = torch.cat([t[1] for t in c])
    assert torch.equal(a0, b0) and torch.equal(a1, b1)
    assert not torch.equal(a0, a1) and not torch.equal(a0, c0)
    b.set_epoch(1)
    assert torch.equal(torch.cat([t[1] for t in b]), a1)


def test_augment_matches_per_sample_reference() -> None:
    x = images(6, c=2, h=4, w=5)
    aug = Augment(padding=2, flip=True)
    offsets = torch.tensor([[0, 0], [4, 4], [2, 2], [1, 3], [4, 0], [0, 4]])
    flips = torch.tensor([False, True, False, True, True, False])
    assert torch.equal(aug.apply(x, offsets, flips), reference_crop_flip(x, offsets, flips, 2))
    assert torch.equal(aug.apply(x, torch.full((6, 2), 2), torch.zeros(6, dtype=torch.bool)), x)  # centred, no flip
    drawn_offsets, drawn_flips = aug.sample(500, torch.Generator().manual_seed(0))
    assert drawn_offsets.min() == 0 and drawn_offsets.max() == 4 and 150 < int(drawn_flips.sum()) < 350
    no_flip = Augment(padding=1, flip=False)
    o, f = no_flip.sample(6, torch.Generator().manual_seed(0))
    assert not f.any() and torch.equal(no_flip.apply(x, o, f), reference_crop_flip(x, o, f, 1))


def test_augmented_batches_are_crops_of_their_own_sample() -> None:
    x, y = images(12, c=1, h=4, w=4), torch.arange(12)
    p = 1
    tb = TaskBatches(x, y, 0, batch_size=5, seed=2, augment=Augment(padding=p))
    # every candidate (offset, flip) of every sample, enumerated
    cands = []
    for a in range(2 * p + 1):
        for b in range(2 * p + 1):
            for fl in (False, True):
                o, f = torch.tensor([[a, b]] * 12), torch.full((12,), fl)
                cands.append(reference_crop_flip(x, o, f, p).float() / 255)
    cands = torch.stack(cands, 1)  # [N, K, C, H, W]
    seen = set()
    for xb, yb, _ in tb:
        match = (cands[yb] == xb[:, None]).flatten(2).all(-1)  # [B, K]
        assert match.any(1).all()
        seen.update(match.float().argmax(1).tolist())
    assert len(seen) > 3  # different samples got different crops/flips


def test_iterate_eval_and_concat_tasks() -> None:
    x, y = images(11), torch.arange(11) % 4
    got = list(iterate_eval(x, y, 4, "cpu", MEAN, STD))
    assert [b[0].shape[0] for b in got] == [4, 4, 3]
    assert torch.allclose(torch.cat([b[0] for b in got]).double(), normalised(x), atol=1e-6)
    assert torch.equal(torch.cat([b[1] for b in got]), y)
    sc = build_scenario({"kind": "split", "source": "digits", "setting": "class_il", "n_tasks": 3,
                         "classes_per_task": 2, "train_subsample": 10, "test_subsample": 4})
    xc, yc, tc = concat_tasks(sc.tasks)
    assert xc.shape[0] == 30 and torch.equal(tc, torch.arange(3).repeat_interleave(10))
    assert torch.equal(yc, torch.cat([t.y_train for t in sc.tasks]))
    assert concat_tasks(sc.tasks, "test")[0].shape[0] == 12
    with pytest.raises(ValueError, match="val_fraction"):
        concat_tasks(sc.tasks, "val")


def test_bad_arguments() -> None:
    x, y = images(4), torch.arange(4)
    with pytest.raises(ValueError, match="batch_size"):
        TaskBatches(x, y, 0, batch_size=0)
    with pytest.raises(ValueError, match="y"):
        TaskBatches(x, y[:3], 0, batch_size=2)
    with pytest.raises(ValueError, match="task_ids"):
        TaskBatches(x, y, torch.zeros(3, dtype=torch.long), batch_size=2)
    with pytest.raises(ValueError, match="mean and std"):
        TaskBatches(x, y, 0, batch_size=2, mean=(0.5,), std=None)


class Recorder(L.LightningModule):
    """A linear model that records the labels of every batch Lightning hands it."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3 * 5 * 6, 20)
        self.seen: list[list[int]] = []

    def on_train_epoch_start(self) -> None:
        self.seen.append([])

    def training_step(self, batch, batch_idx):
        x, y, t = batch
        assert x.dtype == torch.float32 and t.eq(1).all()
        self.seen[-1] += y.tolist()
        return torch.nn.functional.cross_entropy(self.lin(x.flatten(1)), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_lightning_trainer_accepts_task_batches() -> None:
    x, y = images(20), torch.arange(20)
    model = Recorder()
    trainer = L.Trainer(max_epochs=3, barebones=True, accelerator="cpu", devices=1, num_sanity_val_steps=0)
    trainer.fit(model, train_dataloaders=TaskBatches(x, y, 1, batch_size=6, seed=0, mean=MEAN, std=STD))
    assert len(model.seen) == 3
    assert all(sorted(s) == list(range(20)) for s in model.seen)
    assert model.seen[0] != model.seen[1] != model.seen[2]
    reference = TaskBatches(x, y, 1, batch_size=6, seed=0)
    assert [torch.cat([b[1] for b in reference]).tolist() for _ in range(3)] == model.seen


def test_rank_shards_partition_every_global_batch_in_the_global_order() -> None:
    """Two ranks' batches, interleaved, are the one-process batches (with their augmentation), each rank
    takes the same number of steps and half the samples; a 1-sample last batch goes to both ranks."""
    x, y = images(21), torch.arange(21)
    aug = Augment(padding=1, flip=True)
    full = list(TaskBatches(x, y, 0, batch_size=4, seed=3, augment=aug))
    ranks = [list(TaskBatches(x, y, 0, batch_size=4, seed=3, augment=aug, rank=r, world_size=2)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == len(full) == 6
    for b, (whole, r0, r1) in enumerate(zip(full, *ranks)):
        if b < 5:
            assert torch.equal(r0[1], whole[1][0::2]) and torch.equal(r1[1], whole[1][1::2])
            assert torch.equal(r0[0], whole[0][0::2]) and torch.equal(r1[0], whole[0][1::2])
        else:  # the last global batch has one sample: both ranks step on it
            assert torch.equal(r0[1], whole[1]) and torch.equal(r1[1], whole[1])
    assert sum(len(b[1]) for b in ranks[0][:5]) == sum(len(b[1]) for b in ranks[1][:5]) == 10
    assert rank_positions(3, 2, 2).tolist() == [2]
    with pytest.raises(ValueError, match="rank"):
        TaskBatches(x, y, 0, batch_size=4, rank=2, world_size=2)
