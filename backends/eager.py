"""The eager backend: runs every dialect op's reference implementation (the baseline)."""

from __future__ import annotations

from tcomp.backend import Backend, register_backend


class EagerBackend(Backend):
    name = "eager"


register_backend(EagerBackend())
