"""The eager backend: runs every dialect op's reference implementation (the baseline)."""

from __future__ import annotations

from tcomp.backend import Backend, register_backend
from tcomp.registry import Pass
from tcomp.targets import Target


class EagerBackend(Backend):
    name = "eager"

    def steps(self, target: Target | str) -> list[Pass]:
        """No steps: the graph runs as the passes left it."""
        return []


register_backend(EagerBackend())
