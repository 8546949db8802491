"""tcomp: a verified graph-transformation compiler for PyTorch transformers.

import tcomp
fast = tcomp.optimize(model, (input_ids,), target="cpu")
fast(input_ids)            # same outputs, same structure
print(fast.report)         # what each pass did, under which contract, measured error
"""

from __future__ import annotations

from tcomp import dialect  # noqa: F401 - registers the tcomp dialect (torch.ops.tcomp.*)
from tcomp.api import OptimizedModule, optimize
from tcomp.artifacts import load
from tcomp.backend import Backend, register_backend
from tcomp.errors import CaptureError, InputError, PassError, TcompError
from tcomp.pipeline import Contract, Exactness, PassResult, register_pass, registered_passes
from tcomp.plan import Plan, build_plan
from tcomp.targets import Target, get_target
from tcomp.version import __version__

__all__ = [
    "Backend",
    "CaptureError",
    "Contract",
    "Exactness",
    "InputError",
    "OptimizedModule",
    "PassError",
    "PassResult",
    "Plan",
    "Target",
    "TcompError",
    "__version__",
    "build_plan",
    "get_target",
    "load",
    "optimize",
    "register_backend",
    "register_pass",
    "registered_passes",
]

# The face wires up the pass packages: importing them registers every pass.
from tcomp import backends as _backends  # noqa: E402, F401
from tcomp import passes as _passes  # noqa: E402, F401
