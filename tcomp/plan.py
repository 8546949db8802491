"""The typed Plan: what will run, built once and checked before any work.

``build_plan(target, passes, backend)`` is shared by ``tcomp.optimize``, the ``torch.compile``
backend and the CLI. It resolves the target and backend names and every pass name (an unknown
name is an error listing the valid ones and suggesting the nearest), validates each pass's options
against its dataclass (``tcomp.options``) and the run's context (e.g. calibration data a pass
needs), puts ``canonicalize`` first, orders the user's list by the passes' declared after/before
constraints (a cycle is an error naming the passes) and appends the backend's named steps
(``Backend.steps(target)``, e.g. ``lower.triton``).

A plan is data: ``Plan.to_json()`` writes target, backend, seed and each step's full options;
``Plan.from_json()`` (and ``passes=`` given the list of ``{"pass": name, "options": {...}}``)
builds the same plan again, so a planner can write plans that users re-run. Calibration batches
are part of the run, not of the JSON.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tcomp.errors import InputError
from tcomp.options import suggest, to_dict
from tcomp.registry import Pass, PassContext, Step, check_steps, default_pipeline, make_step, order_indices
from tcomp.targets import TARGETS, Target, UnknownTargetError, get_target

JSON_VERSION = 1


@dataclass(frozen=True)
class Plan:
    """Target, backend and the ordered steps (pass, validated options); ``lowering`` are the
    backend's steps, run after ``steps``. Equal plans run the same passes with the same options."""

    target: Target
    backend: str
    steps: tuple[Step, ...]
    lowering: tuple[Pass, ...] = field(default=(), compare=False)
    seed: int = 0
    calibration: Any = field(default=None, compare=False, repr=False)

    @property
    def names(self) -> list[str]:
        """Every step's name, the backend's included."""
        return [s.name for s in self.steps] + [p.name for p in self.lowering]

    def context(self) -> PassContext:
        return PassContext(target=self.target, calibration=self.calibration, seed=self.seed)

    def runnable(self) -> tuple[list[Step], PassContext]:
        """What ``run_pipeline`` runs: the passes, then the backend's steps."""
        return [*self.steps, *(Step(p) for p in self.lowering)], self.context()

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": JSON_VERSION,
            "target": self.target.name,
            "backend": self.backend,
            "seed": self.seed,
            "steps": [{"pass": s.name, "options": to_dict(s.options)} for s in self.steps],
            "lowering": [p.name for p in self.lowering],  # derived from backend and target
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, data: str | dict[str, Any], *, calibration: Any = None) -> Plan:
        """The plan ``to_json`` wrote (a JSON string or the parsed dict), built and checked again."""
        d = json.loads(data) if isinstance(data, str) else dict(data)
        if d.get("version", JSON_VERSION) != JSON_VERSION:
            raise InputError(
                f"plan JSON version {d.get('version')!r}; this tcomp reads version {JSON_VERSION}"
            )
        missing = {"target", "backend", "steps"} - set(d)
        if missing:
            raise InputError(f"plan JSON lacks {sorted(missing)}; write it with Plan.to_json()")
        return build_plan(
            d["target"], d["steps"], d["backend"], calibration=calibration, seed=d.get("seed", 0)
        )


def build_plan(
    target: str | Target,
    passes: Sequence[Any] | Plan | None = None,
    backend: str | None = None,
    *,
    calibration: Any = None,
    seed: int = 0,
) -> Plan:
    """Resolve, validate and order what to run (see the module docstring); raises before any work.

    ``passes``: None (the default pipeline), or a list of names, ``(name, options)`` pairs and
    ``{"pass": name, "options": {...}}`` dicts, or a Plan (returned with ``calibration`` added).
    ``backend``: None takes the target's default.
    """
    if isinstance(passes, Plan):
        plan = passes if calibration is None else dataclasses.replace(passes, calibration=calibration)
        check_steps(plan.steps, plan.context())
        return plan
    tgt = resolve_target(target)
    back = resolve_backend(backend or tgt.default_backend)
    if isinstance(passes, (str, bytes)) or (isinstance(passes, dict) and "pass" in passes):
        raise InputError(f"passes= is a list of passes, got {passes!r}; write [{passes!r}]")
    specs = default_pipeline() if passes is None else list(passes)
    steps = [make_step(s) for s in specs]
    if "canonicalize" not in [s.name for s in steps]:
        steps.insert(0, make_step("canonicalize"))
    steps = [steps[i] for i in order_indices([s.p for s in steps])]
    check_steps(steps, PassContext(target=tgt, calibration=calibration, seed=seed))
    # then the backend's named steps for the target (its lowering and fusions; none for eager)
    return Plan(tgt, back.name, tuple(steps), tuple(back.steps(tgt)), seed, calibration)


def resolve_target(target: str | Target) -> Target:
    """The Target called ``target``; an unknown name lists the registered ones with the nearest."""
    try:
        return get_target(target)
    except UnknownTargetError:
        raise UnknownTargetError(
            f"unknown target {target!r}{suggest(str(target).lower(), TARGETS)}; valid targets: "
            f"{', '.join(sorted(TARGETS))}"
        ) from None


def resolve_backend(name: str) -> Any:
    """The registered backend called ``name``; an unknown name lists them with the nearest."""
    from tcomp.backend import registered_backends

    known = registered_backends()
    if name not in known:
        raise InputError(
            f"unknown backend {name!r}{suggest(name, known)}; valid backends: {', '.join(sorted(known))}"
        )
    return known[name]
