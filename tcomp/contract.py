"""What a pass promises and what it returns: :class:`Exactness`, :class:`Contract` and
:class:`PassResult`.

A contract says how close the rewritten graph is to the one before (see DESIGN.md, "Pass
contracts"); the pipeline (``tcomp.pipeline.run_pipeline``) checks it against a float64 reference
and rolls a step back when it does not hold. Approximate contracts must state what is checked (a
bound or a metric, and a tolerance): the Contract refuses them otherwise.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import torch.fx as fx

from tcomp.errors import PassError


class Exactness(enum.Enum):
    """How close a rewritten graph is to the one before (see DESIGN.md, "Pass contracts")."""

    EXACT = "exact"  # same float operations: bitwise equal outputs
    FP_EQUIVALENT = "fp_equivalent"  # equal in real arithmetic, differs by rounding
    BOUNDED = "bounded"  # approximate with an analytic bound under stated preconditions
    EMPIRICAL = "empirical"  # approximate, no theorem: a named metric and a threshold

    @property
    def approximate(self) -> bool:
        return self in (Exactness.BOUNDED, Exactness.EMPIRICAL)


@dataclass(frozen=True)
class Contract:
    """What a pass promises. Approximate passes must state a bound or a metric with a threshold.

    ``tolerance`` is the relative-error bound the pipeline checks against the float64 reference for
    BOUNDED and EMPIRICAL passes (``metric`` names what it measures, ``bound`` states the theorem).
    """

    exactness: Exactness
    bound: str | None = None
    metric: str | None = None
    tolerance: float | None = None
    preconditions: str | None = None

    def __post_init__(self) -> None:
        if self.exactness is Exactness.BOUNDED and not (self.bound and self.tolerance is not None):
            raise PassError(
                "a BOUNDED contract needs `bound` (the statement) and `tolerance` (what is checked)"
            )
        if self.exactness is Exactness.EMPIRICAL and not (self.metric and self.tolerance is not None):
            raise PassError(
                "an EMPIRICAL contract needs `metric` (what is measured) and `tolerance` (its threshold)"
            )

    def describe(self) -> str:
        s = self.exactness.value
        if self.bound:
            s += f" ({self.bound})"
        if self.metric:
            s += f" ({self.metric} <= {self.tolerance:g})"
        return s


EXACT = Contract(Exactness.EXACT)
FP_EQUIVALENT = Contract(Exactness.FP_EQUIVALENT)


@dataclass
class PassResult:
    """What a pass returns: the new graph, how many rewrites it made, and notes for the report
    (e.g. a site it skipped and why)."""

    gm: fx.GraphModule
    rewrites: int = 0
    notes: list[str] = field(default_factory=list)
    sites: list[dict[str, Any]] = field(default_factory=list)
    reason: str = ""  # with no rewrites: why the pass does not apply (the report's reason for "skipped")
    unmatched: list[dict[str, Any]] = field(default_factory=list)  # canonicalize: attention it could not take
