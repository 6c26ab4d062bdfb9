"""Loss-landscape geometry: curvature operators, Lanczos, trace estimation, guarantee checks and certificates.

Every check and certificate is described in docs/guarantees.md.

``fisher`` and ``kfac`` (EWC-family curvature, another owner) live next to these modules.
"""

from .certificate import KINDS, certificate
from .checks import PairChecks, leakage
from .config import CHECKS, DEFAULT_CHECKS, ChecksConfig, LipschitzConfig
from .hutchinson import TraceEstimate, hutchinson_trace
from .lanczos import LanczosResult, lanczos
from .objective import Objective, ParamLayout, flat_params, module_objective, setting_columns
from .operators import (
                        CURVATURES,
                        CurvatureOperator,
                        EmpiricalFisherOperator,
                        GGNOperator,
                        HessianOperator,
                        make_operator,
)
from .snapshot import Snapshot, take_snapshot
from .tracker import GeometryTracker, LeakageCallback

__all__ = [
    "CHECKS", "CURVATURES", "KINDS", "DEFAULT_CHECKS", "ChecksConfig", "CurvatureOperator", "EmpiricalFisherOperator",
    "GGNOperator", "GeometryTracker", "HessianOperator", "LanczosResult", "LeakageCallback", "LipschitzConfig",
    "Objective", "PairChecks", "ParamLayout", "Snapshot", "TraceEstimate", "certificate", "flat_params",
    "hutchinson_trace", "lanczos", "leakage", "make_operator", "module_objective", "setting_columns", "take_snapshot",
]
