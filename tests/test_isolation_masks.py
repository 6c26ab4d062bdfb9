"""PackNet and HAT: pruning and masks against hand computation, HAT's gates, annealing, gradient
conditioning and compensation against the formulas, and past-task coordinates bit-identical after
training another task with momentum, weight decay or Adam under a real Lightning Trainer."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_isolation_core import build, fit_task, lightning_trainer, task_batches, toy_scenario
from torch import Tensor

from cl_bench.config import ConfigError, to_dataclass
from cl_bench.data.batching import _norm_stats, to_float
from cl_bench.models import build_model
from cl_bench.module import OptimizerConfig
from cl_bench.strategies.isolation import FREE, HAT, HATParams, PackNet, PackNetParams

MOMENTUM_WD = OptimizerConfig(name="sgd", lr=0.1, momentum=0.9, weight_decay=0.05)
ADAM_WD = OptimizerConfig(name="adam", lr=0.01, weight_decay=0.05)


def inputs(module, task) -> tuple[Tensor, Tensor]:
    sc = module.scenario
    return to_float(task.x_test, _norm_stats(sc.mean, sc.std, "cpu")).double(), torch.full_like(task.y_test, task.id)


# ====================================================================== PackNet
def test_packnet_pruning_keeps_exactly_the_top_magnitude_fraction_of_free_weights() -> None:
    module = build(PackNet, PackNetParams(prune_ratios=[0.75, 0.5, 0.0], retrain_epochs=0))
    t0, t1 = module.scenario.tasks[:2]
    named = dict(module.backbone.named_parameters())
    for t, ratio in ((t0, 0.75), (t1, 0.5)):
        module.before_task(t)
        lightning_trainer(epochs=1).fit(module, train_dataloaders=task_batches(module, t))
        before = {n: p.detach().clone() for n, p in named.items()}
        free_before = {n: module.owner(n) == FREE for n in named}
        module.after_task(t)
        for name, p in named.items():
            owner, free = module.owner(name), free_before[name]
            if p.dim() == 1:  # biases: owned by the first task that trains them, never pruned
                assert bool((owner == 0).all()) and torch.equal(p, before[name])
                continue
            kept = (owner == t.id)
            n_free = int(free.sum())
            assert int(kept.sum()) == n_free - math.floor(ratio * n_free)
            assert bool((kept <= free).all())  # only free weights are kept
            mags = before[name].abs()
            assert mags[kept].min() >= mags[free & ~kept].max()  # the largest |w| among the free ones
            assert torch.equal(p[kept], before[name][kept])  # no retraining here: kept values unchanged
            assert bool((p[free & ~kept] == 0).all()) and bool((owner[free & ~kept] == FREE).all())
            assert torch.equal(p[~free], before[name][~free])  # earlier tasks' weights untouched


@pytest.mark.parametrize("optimizer", [MOMENTUM_WD, ADAM_WD], ids=["sgd_momentum_wd", "adam_wd"])
def test_packnet_past_weights_are_bit_identical_after_training_another_task(optimizer: OptimizerConfig) -> None:
    module = build(PackNet, PackNetParams(prune_ratio=0.5, retrain_epochs=1), optimizer=optimizer)
    t0, t1, t2 = module.scenario.tasks
    fit_task(module, t0)
    x0, ids0 = inputs(module, t0)
    module.eval()
    logits0 = module.eval_logits(x0, ids0)
    frozen = {n: (p.detach().clone(), module.owner(n) == 0) for n, p in module.backbone.named_parameters()}
    pruned = {n: module.owner(n) == FREE for n, _ in module.backbone.named_parameters()}
    assert all(bool((p[free] == 0).all()) for (p, _), free in zip(frozen.values(), pruned.values()))
    fit_task(module, t1)
    fit_task(module, t2)
    moved = 0
    for name, p in module.backbone.named_parameters():
        old, mine = frozen[name]
        assert torch.equal(p[mine], old[mine]), name  # bit-identical under momentum / weight decay / Adam
        moved += int((p[~mine] != old[~mine]).sum())
    assert moved > 0  # later tasks did train their (formerly free) weights
    module.eval()
    assert torch.equal(module.eval_logits(x0, ids0), logits0)  # task 0's function is exactly unchanged


def test_packnet_task_il_inference_reads_only_weights_of_tasks_up_to_j() -> None:
    module = build(PackNet, PackNetParams(prune_ratio=0.5, retrain_epochs=1))
    t0, t1, _ = module.scenario.tasks
    fit_task(module, t0)
    fit_task(module, t1)
    module.eval()
    for task in (t0, t1):
        x, ids = inputs(module, task)
        by_hand = {n: torch.where((module.owner(n) >= 0) & (module.owner(n) <= task.id), p, torch.zeros_like(p))
                   for n, p in module.backbone.named_parameters()}
        expected = torch.func.functional_call(module.backbone, by_hand, (x, ids))
        expected = expected.masked_fill(~module.class_mask[ids], float("-inf"))
        assert torch.equal(module.eval_logits(x, ids), expected)
    # a batch mixing tasks gets each sample's own masks
    (xa, ia), (xb, ib) = inputs(module, t0), inputs(module, t1)
    mixed = module.eval_logits(torch.cat([xa, xb]), torch.cat([ia, ib]))
    assert torch.equal(mixed, torch.cat([module.eval_logits(xa, ia), module.eval_logits(xb, ib)]))


def test_packnet_class_il_uses_every_learned_weight() -> None:
    module = build(PackNet, PackNetParams(retrain_epochs=0), setting="class_il")
    t0 = module.scenario.tasks[0]
    fit_task(module, t0)
    module.eval()
    x, ids = inputs(module, t0)
    assert torch.equal(module.eval_logits(x, ids), module.backbone(x))


def test_packnet_freezes_batchnorm_statistics_after_the_first_task() -> None:
    sc = toy_scenario()
    backbone = build_model({"name": "reduced_resnet18"}, (1, 8, 8), sc.n_outputs, sc.task_classes())
    module = PackNet(backbone, sc)
    x = torch.randn(4, 1, 8, 8)
    bn = backbone.body[1]
    module.train()
    module(x)
    assert bn.training and bn.num_batches_tracked.item() == 1  # task 0: statistics are learned
    module.n_learned.fill_(1)
    module.train()
    before = bn.running_mean.clone()
    module(x)
    assert not bn.training and torch.equal(bn.running_mean, before)


def test_packnet_bad_ratios_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"prune_ratio must lie in \[0, 1\)"):
        to_dataclass(PackNetParams, {"prune_ratio": 1.0}, "strategies.packnet")
    with pytest.raises(ConfigError, match=r"prune_ratios\[1\]"):
        to_dataclass(PackNetParams, {"prune_ratios": [0.5, -0.1, 0.2]}, "strategies.packnet")
    with pytest.raises(ValueError, match="prune_ratios has 2 entries; the scenario has 3 tasks"):
        build(PackNet, PackNetParams(prune_ratios=[0.5, 0.5]))


# ========================================================================== HAT
def test_hat_anneals_s_linearly_over_the_batches_of_an_epoch() -> None:
    module = build(HAT, HATParams(s_max=400.0))
    assert module.anneal(1, 11) == pytest.approx(1 / 400)
    assert module.anneal(11, 11) == pytest.approx(400)
    assert module.anneal(6, 11) == pytest.approx(1 / 400 + (400 - 1 / 400) * 5 / 10)
    assert module.anneal(1, 1) == 400  # a single batch trains at s_max


def test_hat_gates_match_the_hand_computed_forward() -> None:
    module = build(HAT, HATParams(), widths=(3,)).double()
    x, ids = inputs(module, module.scenario.tasks[1])
    lin, head = module.backbone.body[1], module.backbone.head
    e = torch.tensor([0.7, -0.2, 0.05], dtype=torch.float64)
    module.embeddings[1][0].data.copy_(e)
    module.train()
    module.current_task = 1  # training gates are those of the task being trained
    module._s = 2.5
    expected = head(torch.tanh(x.flatten(1) @ lin.weight.T + lin.bias) * torch.sigmoid(2.5 * e))
    torch.testing.assert_close(module(x, ids), expected, atol=1e-12, rtol=0)
    module.eval()  # hard masks 1[e > 0] at inference
    expected = head(torch.tanh(x.flatten(1) @ lin.weight.T + lin.bias) * torch.tensor([1.0, 0.0, 1.0]).double())
    torch.testing.assert_close(module(x, ids), expected, atol=1e-12, rtol=0)


def test_hat_conditioning_compensation_and_regulariser_match_the_formulas() -> None:
    module = build(HAT, HATParams(s_max=50.0, c=0.4), widths=(3, 2)).double()
    task = module.scenario.tasks[1]
    module.before_task(task)
    module.cum_0.copy_(torch.tensor([1.0, 0.0, 1.0]))  # units used by task 0
    module.cum_1.copy_(torch.tensor([0.0, 1.0]))
    module.train()
    module._s = 3.0
    x, ids = inputs(module, task)
    y = task.y_test
    loss = F.cross_entropy(module(x, ids), y) + module.penalty()
    params = dict(module.backbone.named_parameters())
    emb = list(module.embeddings[1])
    raw = torch.autograd.grad(loss, [*params.values(), *emb], retain_graph=True)
    loss.backward()
    module.on_train_start()  # builds the masks of this task
    module.transform_gradients()
    g = dict(zip([*params, "e0", "e1"], raw))
    post0, post1 = module.cum_0, module.cum_1
    past_classes = torch.zeros(6, dtype=torch.float64)
    past_classes[[0, 2]] = 1.0  # task 0 owns classes 0 and 2 of the single head
    # g' = [1 - min(a_i, a_j)] g; the input is always in use
    torch.testing.assert_close(params["body.1.weight"].grad, (1 - post0[:, None]) * g["body.1.weight"])
    torch.testing.assert_close(params["body.1.bias"].grad, (1 - post0) * g["body.1.bias"])
    torch.testing.assert_close(params["body.3.weight"].grad,
                               (1 - torch.minimum(post1[:, None], post0[None, :])) * g["body.3.weight"])
    torch.testing.assert_close(params["head.weight"].grad,
                               (1 - torch.minimum(past_classes[:, None], post1[None, :])) * g["head.weight"])
    torch.testing.assert_close(params["head.bias"].grad, (1 - past_classes) * g["head.bias"])
    for l, e in enumerate(emb):  # q' = s_max (cosh(s e) + 1) / (s (cosh(e) + 1)) q
        factor = 50.0 * (torch.cosh(3.0 * e) + 1) / (3.0 * (torch.cosh(e) + 1))
        torch.testing.assert_close(e.grad, factor * g[f"e{l}"])
    assert module.embeddings[0][0].grad is None  # other tasks' embeddings take no part
    # R = sum a^t (1 - a^{<t}) / sum (1 - a^{<t})
    a0, a1 = torch.sigmoid(3.0 * emb[0]), torch.sigmoid(3.0 * emb[1])
    expected = 0.4 * ((a0 * (1 - post0)).sum() + (a1 * (1 - post1)).sum()) / ((1 - post0).sum() + (1 - post1).sum())
    torch.testing.assert_close(module.penalty(), expected)


@pytest.mark.parametrize("optimizer", [MOMENTUM_WD, ADAM_WD], ids=["sgd_momentum_wd", "adam_wd"])
def test_hat_task_il_past_outputs_are_bit_identical(optimizer: OptimizerConfig) -> None:
    module = build(HAT, HATParams(s_max=100.0, c=0.1), widths=(16, 12), optimizer=optimizer)
    t0, t1, _ = module.scenario.tasks
    assert module.mask_train_logits  # task-IL: each task trains on its own classes' logits (separate heads)
    fit_task(module, t0, epochs=4)
    x0, ids0 = inputs(module, t0)
    module.eval()
    logits0 = module.eval_logits(x0, ids0)
    emb0 = [e.detach().clone() for e in module.embeddings[0]]
    assert module.cum_0.sum() > 0
    before = [p.detach().clone() for p in module.backbone.parameters()]
    fit_task(module, t1, epochs=4)
    module.eval()
    assert torch.equal(module.eval_logits(x0, ids0), logits0)
    assert all(torch.equal(a, b) for a, b in zip(module.embeddings[0], emb0))
    assert any(not torch.equal(a, b) for a, b in zip(module.backbone.parameters(), before))
    assert module.embeddings[0][0].abs().max() <= 6.0 and module.embeddings[1][0].abs().max() <= 6.0  # clamped


def test_hat_refuses_non_mlp_backbones() -> None:
    sc = toy_scenario()
    backbone = build_model({"name": "cnn"}, (1, 8, 8), sc.n_outputs, sc.task_classes())
    with pytest.raises(ValueError, match=r"hat gates the hidden units of an MLP \(model.name=mlp\)"):
        HAT(backbone, sc)


def test_hat_without_task_identity_gates_with_the_union_of_learned_masks() -> None:
    module = build(HAT, HATParams(), setting="class_il", widths=(3,)).double()
    t0, t1, _ = module.scenario.tasks
    module.embeddings[0][0].data.copy_(torch.tensor([0.5, -1.0, -2.0]))
    module.embeddings[1][0].data.copy_(torch.tensor([-0.5, -1.0, 3.0]))
    for task in (t0, t1):
        module.before_task(task)
        module.after_task(task)  # a^{<=t} = max(a^{<t}, 1[e^t > 0])
    assert torch.equal(module.cum_0, torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64))
    module.eval()
    x, ids = inputs(module, t0)
    lin, head = module.backbone.body[1], module.backbone.head
    expected = head(torch.tanh(x.flatten(1) @ lin.weight.T + lin.bias) * module.cum_0)
    torch.testing.assert_close(module.eval_logits(x, ids), expected, atol=1e-12, rtol=0)
    assert not module.mask_train_logits  # only task-IL trains on the task's own logits
