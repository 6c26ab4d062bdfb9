"""Small real objects shared by the geometry tests (scenarios, modules, toy objectives), and tests of the toys."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from cl_bench.data import Scenario, Task
from cl_bench.geometry import Objective, module_objective
from cl_bench.layout import flat_params
from cl_bench.models import build_model
from cl_bench.module import ContinualModule, OptimizerConfig


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny tensors: one intra-op thread is faster, and immune to spin-waiting on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def toy_scenario(setting: str = "class_il", n_per_class: int = 12, shape: tuple[int, ...] = (1, 2, 2),
                 n_tasks: int = 2, seed: int = 0) -> Scenario:
    """``n_tasks`` tasks x 2 classes of uint8 images whose class shifts the mean (learnable, not trivial)."""
    gen = torch.Generator().manual_seed(seed)
    tasks = []
    for t in range(n_tasks):
        classes = [2 * t, 2 * t + 1]
        y = torch.tensor(classes).repeat_interleave(n_per_class)
        base = torch.rand((y.numel(), *shape), generator=gen) * 120
        shift = (torch.arange(y.numel()) % 2 == 1).float().view(-1, *[1] * len(shape)) * 100
        x = (base + shift * ((torch.arange(shape[-1]) + t) % 2)).to(torch.uint8)
        tasks.append(Task(t, classes, x, y, x.clone(), y.clone()))
    return Scenario("toy", setting, tasks, 2 * n_tasks, shape, (0.4,) * shape[0], (0.3,) * shape[0])


def toy_module(scenario: Scenario, widths: list[int] | None = None, head: str = "single", mask: bool = False,
               double: bool = True, activation: str = "tanh", lr: float = 0.1, optimizer: str = "sgd",
               cls: type = ContinualModule) -> ContinualModule:
    torch.manual_seed(0)
    backbone = build_model({"name": "mlp", "widths": widths if widths is not None else [6],
                            "activation": activation, "head": head},
                           scenario.input_shape, scenario.n_outputs, scenario.task_classes())
    module = cls(backbone, scenario, None, OptimizerConfig(name=optimizer, lr=lr), mask)
    return module.double().eval() if double else module.eval()


def quadratic_objective(a: Tensor, center: Tensor) -> Objective:
    """L(theta) = (theta - c)^T A (theta - c) / 2 exactly: outputs = theta, one dummy sample; Hessian = A."""
    p = a.shape[0]
    x, y = torch.zeros(1, 1, dtype=a.dtype), torch.zeros(1, dtype=torch.long)

    def forward(theta: Tensor, xb: Tensor) -> Tensor:
        return theta[None, :] + 0 * xb

    def per_sample(z: Tensor, _: Tensor) -> Tensor:
        r = z - center
        return 0.5 * ((r @ a) * r).sum(1)

    return Objective(forward, x, y, p, per_sample)


def least_squares_objective(x: Tensor, y: Tensor, n_out: int) -> Objective:
    """L(W) = (1/2N) sum_n ||x_n W - y_n||^2 with theta = vec(W) [D * C]: linear outputs, H = I_C (x) X^T X / N."""
    d = x.shape[1]

    def forward(theta: Tensor, xb: Tensor) -> Tensor:
        return xb @ theta.view(d, n_out)

    def per_sample(z: Tensor, yb: Tensor) -> Tensor:
        return 0.5 * ((z - yb) ** 2).sum(1)

    return Objective(forward, x, y, d * n_out, per_sample)


def xor_objective() -> tuple[Objective, Tensor, Tensor]:
    """Two basins of one loss: a 2-unit ReLU net solving XOR and the same net with its hidden units swapped.

    h = relu(W x), logit_1 - logit_0 = v^T h - b. theta_a: W = [[1, -1], [-1, 1]], v = (20, 20), b = 10
    (|x1 - x2| decides); theta_b swaps the rows of W (same function, same loss). The midpoint has W = 0,
    so every sample gets class 0 with margin 10: mean loss ~5, far above the endpoints' ~5e-5.
    """
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1])

    def forward(theta: Tensor, xb: Tensor) -> Tensor:
        w, v, b = theta[:4].view(2, 2), theta[4:6], theta[6]
        diff = torch.relu(xb @ w.T) @ v - b
        return torch.stack([torch.zeros_like(diff), diff], dim=1)

    theta_a = torch.tensor([1.0, -1.0, -1.0, 1.0, 20.0, 20.0, 10.0], dtype=torch.float64)
    theta_b = torch.tensor([-1.0, 1.0, 1.0, -1.0, 20.0, 20.0, 10.0], dtype=torch.float64)
    return Objective(forward, x, y, 7, lambda z, t: F.cross_entropy(z, t, reduction="none")), theta_a, theta_b


# ---------------------------------------------------------------- the toys are what they claim
def test_quadratic_toy_has_hessian_a():
    a = torch.tensor([[2.0, 0.5], [0.5, -1.0]], dtype=torch.float64)
    obj = quadratic_objective(a, torch.tensor([1.0, -2.0], dtype=torch.float64))
    h = torch.func.hessian(lambda th: obj.chunk_loss(th, obj.x, obj.y))(torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(h, a)


def test_xor_toy_endpoints_are_equal_minima_and_midpoint_is_high():
    obj, theta_a, theta_b = xor_objective()
    assert obj.loss(theta_a) == obj.loss(theta_b) < 1e-4
    assert obj.loss((theta_a + theta_b) / 2) == pytest.approx(5.0, abs=1e-3)


def toy_inputs(task: Task) -> Tensor:
    """The task's training images as float64 inputs, roughly standardised."""
    return (task.x_train.double() / 255 - 0.4) / 0.3


def toy_mlp_objective(width: int, logits: str = "train") -> tuple[Scenario, ContinualModule, Objective, Tensor]:
    """A tanh MLP with one hidden layer of ``width`` on a 20-per-class toy scenario: task 0's probe
    objective on its training set, and theta."""
    sc = toy_scenario(n_per_class=20)
    module = toy_module(sc, widths=[width], activation="tanh")
    task = sc.tasks[0]
    return sc, module, module_objective(module, toy_inputs(task), task.y_train, 0, logits=logits), flat_params(module)
