"""tcomp: a verified graph-transformation compiler for PyTorch transformers.

import tcomp
fast = tcomp.optimize(model, (input_ids,), target="cpu")
fast(input_ids)            # same outputs, same structure
print(fast.report)         # what each pass did, under which contract, measured error

A causal LM comes back ready to generate (prefill and decode graphs over a static KV cache):
fast.generate(ids, max_new_tokens=32) for Hugging Face models, tcomp.generate(fast, ids) for any.
"""

from __future__ import annotations

from tcomp import dialect  # noqa: F401 - registers the tcomp dialect (torch.ops.tcomp.*)
from tcomp.api import OptimizedModule, optimize
from tcomp.artifacts import load
from tcomp.backend import Backend, register_backend
from tcomp.errors import CaptureError, InputError, PassError, TcompError
from tcomp.generate_loop import generate
from tcomp.generation import OptimizedDecoder
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
    "OptimizedDecoder",
    "OptimizedModule",
    "PassError",
    "PassResult",
    "Plan",
    "Target",
    "TcompError",
    "__version__",
    "build_plan",
    "generate",
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
