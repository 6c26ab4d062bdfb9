"""Forgetting certificate of a run from its check records.

A pair (o, t) is certified when the assumptions behind the bound were verified:
(A1) stationarity (C0), PSD anchor (C1) and the run staying inside the validity
radius of the second-order model (C6). The certified bound on the loss
forgetting is E <= g^T D + UB + R, with UB the C4 upper bound and R the C7
remainder estimate (when C7 ran); it is reported next to the measured E.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

ASSUMPTIONS: tuple[str, ...] = ("C0", "C1", "C6")


def certificate(records: list[dict[str, Any]], tol: float = 1e-4) -> dict[str, Any]:
    """Per (o, t): certified?, failed/unverified assumptions, bound, measured E, whether E <= bound + tol
    (``tol``: loss differences below it count as zero, ``checks.loss_eps``)."""
    by_pair: dict[tuple[int, int], dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in records:
        if r["t"] != r["o"]:
            by_pair[(r["o"], r["t"])][r["id"]] = r
    pairs = []
    for (o, t), recs in sorted(by_pair.items()):
        missing = [c for c in ASSUMPTIONS if c not in recs]
        failed = [c for c in ASSUMPTIONS if c in recs and recs[c]["verdict"] != "pass"]
        measured = recs["C2"]["values"]["forgetting"] if "C2" in recs else None
        bound = recs["C4"]["values"].get("bound") if "C4" in recs else None
        holds = None if bound is None or measured is None else measured <= bound + tol
        reasons = [f"{c} not run" for c in missing] + [
            f"{c} {recs[c]['verdict']}: {recs[c]['reason'] or ''}".rstrip(": ") for c in failed]
        pairs.append({"o": o, "t": t, "certified": not missing and not failed and bound is not None,
                      "bound": bound, "measured": measured, "holds": holds, "reasons": reasons})
    certified = [p for p in pairs if p["certified"]]
    return {
        "assumptions": list(ASSUMPTIONS), "pairs": pairs, "n_pairs": len(pairs), "n_certified": len(certified),
        "n_certified_violated": sum(1 for p in certified if p["holds"] is False),
    }
