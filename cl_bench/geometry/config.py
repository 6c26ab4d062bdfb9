"""Configuration of the guarantee checks and certificates (config key ``checks``; docs/guarantees.md).

Every threshold is a design choice, not a theorem: the records always carry
the measured numbers next to the threshold and the verdict.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .operators import CURVATURES

CHECKS: dict[str, str] = {
    "C0": "stationarity",
    "C1": "psd_anchor",
    "C2": "taylor_fidelity",
    "C3": "curvature_energy",
    "C4": "spectral_sandwich",
    "C5": "step_leakage",
    "C6": "validity_radius",
    "C7": "remainder",
    "C8": "function_drift",
    "C9": "curvature_staleness",
    "C10": "update_size",
    "C11": "lmc_barrier",
    "C12": "landscape",
}
DEFAULT_CHECKS: tuple[str, ...] = tuple(c for c in CHECKS if c != "C9")


@dataclass
class LipschitzConfig:
    """C12 Lipschitz bounds of the logits w.r.t. the (normalised) input."""

    enabled: bool = True
    samples: int = 256  # probe samples for the lower bound max_x ||J_f(x)||_2
    power_iters: int = 30  # power iterations per convolution for the upper bound

    def __post_init__(self) -> None:
        if self.samples < 1 or self.power_iters < 1:
            raise ValueError("checks.lipschitz.samples and checks.lipschitz.power_iters must be >= 1")


@dataclass
class ChecksConfig:
    """Curvature snapshots at the end of every task and checks C0-C12 of every past task after every task."""

    enabled: bool = True
    which: list[str] = field(default_factory=lambda: list(DEFAULT_CHECKS))
    k: int = 10  # top eigenpairs per task (k + 1 are computed: lambda_{k+1} enters the C4 upper bound)
    curvature: str = "hessian"  # hessian | ggn | fisher (= ggn for cross-entropy) | empirical_fisher
    probe_size: int = 2000  # training samples per task in S_o (all of them when the task is smaller)
    probe_batch_size: int = 0  # chunk size of curvature products; 0 = the whole probe set at once
    lanczos_iters: int = 60  # Krylov dimension cap
    lanczos_tol: float = 1e-3  # stop when every wanted residual <= tol * |lambda_1|
    hutchinson_probes: int = 8  # Rademacher probes for the (deflated) trace
    eigvec_budget_mb: float = 512.0  # all stored eigenvectors together; above it fewer k are kept (warning)
    seed: int = 0  # probe-set selection and random directions
    # C0: linear share |g^T D| / (|g^T D| + |D^T H D| / 2) of the prediction
    stationarity_tol: float = 0.1
    # C1: lambda_min >= -psd_tol * lambda_1
    psd_tol: float = 0.01
    # C2: kappa = |E - E_hat| / max(|E| + |g^T D| + |D^T H D| / 2, loss_eps)
    kappa_tol: float = 0.2
    loss_eps: float = 1e-4  # loss differences below this (nats) count as zero in relative errors
    # C3: rho <= energy_tol * (tr H / (P lambda_1))
    energy_tol: float = 1.0
    # C5: mean per-step leakage ||V_k^T d|| / ||d|| <= leakage_tol * sqrt(k / P) (a random direction's expectation)
    leakage_tol: float = 1.0
    # C6: relative error of the second-order model along each direction <= radius_tol
    radii: list[float] = field(default_factory=lambda: [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0])
    radius_tol: float = 0.2
    radius_eigvecs: int = 1  # top eigenvectors used as directions
    radius_random: int = 1  # random unit directions
    # perturbation score s(r) = E_eig(r) / E_rand(r): mean loss change along the top score_eigvecs
    # eigenvectors (capped at the stored k) over the mean along score_random random unit directions
    score_eigvecs: int = 10
    score_random: int = 2
    score_radii: list[float] = field(default_factory=lambda: [1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0])
    certificates: bool = True  # exact isolation / null space / Taylor bound per pair (docs/guarantees.md)
    # anchor-time Hessian-Lipschitz constant M_o and its radius r_o (Taylor and null-space certificates):
    # q(u, r) = ||(H(theta_o* + r u) - H_o) u|| / r over directions u started at the top lipschitz_eigvecs
    # eigenvectors, g_o and lipschitz_random random unit vectors, refined by lipschitz_power power steps;
    # radii lipschitz_radii; r_o = the largest radius up to
    # which max q has grown by at most lipschitz_stability x its value at the smallest radius;
    # M_o = lipschitz_safety * max q over radii <= r_o
    lipschitz_eigvecs: int = 1
    lipschitz_random: int = 1
    lipschitz_gradient: bool = True  # also start from g_o / ||g_o||
    lipschitz_power: int = 2  # higher-order power steps u <- T[u, u, .] / ||T[u, u, .]|| per start (at r_1)
    lipschitz_radii: list[float] = field(default_factory=lambda: [0.001, 0.01, 0.03, 0.1, 0.3, 1.0])
    lipschitz_stability: float = 2.0
    lipschitz_safety: float = 2.0
    # Taylor-bound certificate: certified when ||D|| <= r_o and M_o ||D||^3 / 6 <= taylor_slack * |E_hat|
    taylor_slack: float = 0.5
    # null-space certificate: ||H_o D|| / (lambda_1 ||D||) <= null_space_tol and |g^T D| <= null_space_linear
    null_space_tol: float = 0.01
    null_space_linear: float = 1e-3
    # a certified pair is violated when E > bound + violation_tol * max(1, L_o(theta_o*)) (float evaluation noise)
    violation_tol: float = 1e-6
    # C7: exact remainder |E - E_hat| <= M_o ||D||^3 / 6 (the anchor-time bound), inside r_o
    remainder_tol: float = 1.0
    # C8: mean ||f_t(x) - f_o(x)||^2 / mean ||f_o(x)||^2 <= drift_tol
    drift_tol: float = 0.05
    # C9 (optional): ||V_k(theta_o)^T V_k(theta_t)||_F^2 / k >= staleness_tol
    staleness_tol: float = 0.5
    # C11: loss profile L_o(theta_o* + s D) on lmc_alphas; max_s L_o(theta_o* + s D) - L_o(theta_o*) <= barrier_tol
    lmc_alphas: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    lmc_layerwise: bool = True
    lmc_layer_alphas: list[float] = field(default_factory=lambda: [0.5])
    barrier_tol: float = 0.05
    # C12: numerical rank from the dense float64 Hessian only up to this many parameters
    rank_max_params: int = 2000
    lipschitz: LipschitzConfig = field(default_factory=LipschitzConfig)

    def __post_init__(self) -> None:
        unknown = [c for c in self.which if c not in CHECKS]
        if unknown:
            raise ValueError(f"checks.which: unknown check id(s) {unknown}; valid: {', '.join(CHECKS)}")
        if self.curvature not in CURVATURES:
            raise ValueError(f"checks.curvature={self.curvature!r}; valid: {', '.join(CURVATURES)}")
        for key in ("k", "probe_size", "lanczos_iters"):
            if getattr(self, key) < 1:
                raise ValueError(f"checks.{key} must be >= 1, got {getattr(self, key)}")
        if self.hutchinson_probes < 2:
            raise ValueError(f"checks.hutchinson_probes must be >= 2 (for an error bar), got {self.hutchinson_probes}")
        if self.probe_batch_size < 0 or self.radius_eigvecs < 0 or self.radius_random < 0 or self.rank_max_params < 0:
            raise ValueError("checks.probe_batch_size, radius_eigvecs, radius_random, rank_max_params must be >= 0")
        if self.eigvec_budget_mb < 0:
            raise ValueError(f"checks.eigvec_budget_mb must be >= 0, got {self.eigvec_budget_mb}")
        for key in ("radii", "score_radii", "lipschitz_radii"):
            radii = getattr(self, key)
            if not radii or any(not r > 0 for r in radii):
                raise ValueError(f"checks.{key} must be a non-empty list of positive radii, got {radii}")
        for key in ("score_eigvecs", "score_random", "lipschitz_eigvecs", "lipschitz_random", "lipschitz_power"):
            if getattr(self, key) < 0:
                raise ValueError(f"checks.{key} must be >= 0, got {getattr(self, key)}")
        if self.lipschitz_stability < 1 or self.lipschitz_safety < 1:
            raise ValueError("checks.lipschitz_stability and checks.lipschitz_safety must be >= 1")
        for key in ("lmc_alphas", "lmc_layer_alphas"):
            if any(not 0 < a < 1 for a in getattr(self, key)):
                raise ValueError(f"checks.{key} must lie strictly between 0 and 1, got {getattr(self, key)}")
        for key in ("stationarity_tol", "psd_tol", "kappa_tol", "loss_eps", "energy_tol", "leakage_tol", "radius_tol",
                    "remainder_tol", "drift_tol", "staleness_tol", "barrier_tol", "lanczos_tol", "taylor_slack",
                    "null_space_tol", "null_space_linear", "violation_tol"):
            if not getattr(self, key) >= 0:
                raise ValueError(f"checks.{key} must be >= 0, got {getattr(self, key)}")

    def wants(self, check_id: str) -> bool:
        return self.enabled and check_id in self.which
