"""Forgetting certificates of a run: per (o, t) pair, a prediction made at the end of task o, verified later.

Three kinds (docs/guarantees.md, "Certificates"), tried in this order; each rests
only on what was known at the end of task o (the anchor theta_o*, task o's
probe set at the anchor: g_o, products with H_o, the stored eigenpairs; the
strategy's declared isolation mask; the anchor-time constants M_o, r_o) and the
later update D = theta_t - theta_o*:

- ``exact_isolation``: D is exactly 0 on the parameters task o depends on, so E = 0.
- ``null_space``: ||H_o D|| / (lambda_1 ||D||) and |g_o^T D| below thresholds,
  ||D|| <= r_o; E <= g_o^T D + D^T H_o D / 2 + M_o ||D||^3 / 6.
- ``taylor_bound``: ||D|| <= r_o and an informative remainder term;
  E <= g_o^T D + D^T H_o D / 2 + M_o ||D||^3 / 6 (Taylor's theorem).

The measured E = L_o(theta_t) - L_o(theta_o*) only verifies: a certified pair
with E > bound (+ float tolerance) is a violation, counted in ``n_violated``.
"""

from __future__ import annotations

import math
from statistics import median
from typing import Any

KINDS: tuple[str, ...] = ("exact_isolation", "null_space", "taylor_bound")
#: the certificate kinds, in the order they are tried (name kept for callers that list them)
ASSUMPTIONS = KINDS


def certificate(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """Summary of the per-pair certificates (:meth:`PairChecks.certify` outputs): counts per kind (the
    chosen kind, and every kind whose conditions held), violations, bound / E of the certified pairs
    with E >= loss_eps (``ratio_*``, ``n_ratio*``), the certified pairs decided by the loss_eps floor
    (``n_floor``: |E_hat| < loss_eps), and the mean shares of E from the linear, quadratic and
    remainder terms."""
    certified = [p for p in pairs if p["certified"]]
    by_kind: dict[str, dict[str, int]] = {}
    for kind in KINDS:
        held = [p for p in pairs if p["kinds"].get(kind, {}).get("certified")]
        by_kind[kind] = {"chosen": sum(1 for p in certified if p["kind"] == kind), "certified": len(held),
                         "violated": sum(1 for p in held if p["kinds"][kind]["violated"])}
    ratios = [p["ratio"] for p in certified if isinstance(p.get("ratio"), (int, float)) and math.isfinite(p["ratio"])]
    shares = {k: _mean([p["explain"][k] for p in pairs])
              for k in ("share_linear", "share_quadratic", "share_remainder", "explained")}
    n_violated = sum(1 for p in pairs if p["violated"])
    return {
        "kinds": list(KINDS), "pairs": pairs, "n_pairs": len(pairs), "n_certified": len(certified),
        "n_violated": n_violated, "n_certified_violated": n_violated, "by_kind": by_kind,
        "ratio_median": median(ratios) if ratios else None, "ratio_max": max(ratios) if ratios else None,
        "n_ratio_le_1_5": sum(1 for r in ratios if r <= 1.5), "n_ratio": len(ratios),
        "n_floor": sum(1 for p in certified if p.get("floor")), "explain": shares,
    }


def _mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if isinstance(x, (int, float)) and math.isfinite(x)]
    return sum(xs) / len(xs) if xs else None
