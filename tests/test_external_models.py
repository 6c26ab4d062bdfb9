"""Own networks: a registered nn.Module factory with cl-bench's heads, torchvision models by name with local
weights, frozen or fine-tuned."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cl_bench import registry
from cl_bench.config import build_plan, load_config
from cl_bench.models import Backbone, MultiHead, build_model, model_names
from cl_bench.runner import build_module, load_scenario, run_group, run_one

TINY = ["scenario.n_tasks=2", "trainer.epochs=1", "checks.enabled=false", "trainer.train_loss_probe=50"]


@pytest.fixture
def own_models():
    saved = dict(registry.MODELS)
    yield
    registry.MODELS.clear()
    registry.MODELS.update(saved)


def test_a_registered_factory_gets_the_task_il_heads(own_models) -> None:
    @registry.register_model("test_tiny_net")
    def tiny(input_shape, n_outputs, width=16):
        """Flatten and one hidden layer."""
        return nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(input_shape).prod()), width), nn.ReLU())

    assert "test_tiny_net" in model_names()
    model = build_model({"name": "test_tiny_net", "width": 7, "head": "multi"}, (1, 8, 8), 10, [[0, 1], [2, 3]])
    assert isinstance(model, Backbone) and model.feature_dim == 7 and isinstance(model.head, MultiHead)
    out = model(torch.zeros(3, 1, 8, 8), torch.tensor([0, 1, 1]))
    assert out.shape == (3, 10) and bool((out[0, 2:] < -1e8).all())  # task 0's head writes classes 0, 1 only
    with pytest.raises(ValueError, match=r"test_tiny_net: the factory does not take the model keys \['depth'\]"):
        build_model({"name": "test_tiny_net", "depth": 2}, (1, 8, 8), 10, [[0, 1]])
    plan = build_plan(load_config([*TINY, "strategy=naive", "settings=[task_il]",
                                   "model={name: test_tiny_net, head: multi}"]))
    result = run_one(plan.runs[0], load_scenario(plan.runs[0]))
    assert result.status == "ok" and min(result.acc[-1]) > 0.5  # task-IL on two-class digits tasks


def test_torchvision_by_name_with_local_weights_frozen(tmp_path) -> None:
    from torchvision.models import resnet18

    reference = resnet18()
    with torch.no_grad():
        reference.conv1.weight.normal_(0, 0.1)
        reference.layer1[0].bn1.running_mean.fill_(0.25)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    cfg = {"name": "torchvision", "torchvision": "resnet18", "weights": str(path), "freeze": True, "head": "single"}
    model = build_model(cfg, (1, 8, 8), 10, [[0, 1]])
    torch.testing.assert_close(model.state_dict()["body.1.inner.conv1.weight"], reference.conv1.weight)
    assert model.feature_dim == 512 and isinstance(model.head, nn.Linear)

    plan = build_plan(load_config([*TINY, "strategy=naive", "settings=[class_il]", "model=torchvision",
                                   f"model.weights={path}", "model.freeze=true"]))
    scenario = load_scenario(plan.runs[0])
    before = build_module(plan.runs[0], scenario).backbone.state_dict()
    states: list[dict[str, torch.Tensor]] = []
    (result,) = run_group([plan.runs[0]], [scenario], on_task_end=lambda s, t, m: states.append(
        {k: v.clone() for k, v in m.backbone.state_dict().items()}))
    assert result.status == "ok" and len(states) == 2
    body = [k for k in before if k.startswith("body.")]
    assert len(body) > 100 and all(torch.equal(before[k], s[k]) for s in states for k in body)  # weights, BN stats
    assert not torch.equal(states[0]["head.weight"], states[1]["head.weight"])  # the head trained in task 1


def test_torchvision_errors_name_the_key(tmp_path) -> None:
    with pytest.raises(ValueError, match="model.torchvision='resnet19' is not a torchvision classification model"):
        build_model({"name": "torchvision", "torchvision": "resnet19"}, (3, 8, 8), 10, [[0]])
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="model.weights=.*bad.pth: not a readable torch state_dict"):
        build_model({"name": "torchvision", "torchvision": "resnet18", "weights": str(tmp_path / "bad.pth")},
                    (3, 8, 8), 10, [[0]])
    torch.save(nn.Linear(2, 2).state_dict(), tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not resnet18's state_dict"):
        build_model({"name": "torchvision", "torchvision": "resnet18", "weights": str(tmp_path / "other.pth")},
                    (3, 8, 8), 10, [[0]])
